"""Word attributions: how faithful, and at what cost. textfit's occlusion (the default) and Integrated Gradients
against random attributions and SHAP's text explainer on the same model.

    pip install shap captum      # the anchor and the alternative; shap is not a textfit dependency
    python bench/explain_bench.py [--sets bbc,debian] [--per-class 32] [--texts 40] [--timing-runs 15]

For each set (fewshot_bench.SETS: BBC News topics, Debian package sections), a TextClassifier is fitted with
textfit's defaults on `--per-class` rows a class (the embedded all-MiniLM-L6-v2, 128 tokens), and `--texts` test
texts, cut to their first `--words` words (BBC's articles run to thousands: SHAP's 500 evaluations of each, read as
windows, would take hours), are explained for the predicted label by each method:
- occlusion: Predicting.explain(method="occlusion"), the drop in the label's log-probability with a word left out;
- integrated_gradients: Predicting.explain(method="integrated_gradients") (Captum, 32 steps, token embeddings);
- random: a random score per word (numpy, seeded);
- shap: shap.Explainer(f, shap.maskers.Text(tokenizer)) with its defaults (Partition explainer, max_evals 500),
  f the model's log-probabilities (the same quantity the others attribute), its token values summed per word.

Faithfulness, ERASER (DeYoung et al., 2020), over the words the model reads: for k in 1, 5, 10, 20, 50% of
them, comprehensiveness = p(label | text) - p(label | text less its top-k words) and sufficiency = p(label | text)
- p(label | only its top-k words), averaged over k (AOPC) and texts. Higher comprehensiveness and lower
sufficiency are better.

Cost: milliseconds per text at the median of `--timing-runs`, one text at a time, for a 30-word and a 300-word
text of the set, for a prediction and for each method's explanation (occlusion on the saved artifact's ONNX
graph, as served; Integrated Gradients on PyTorch, which it needs; the prediction on both), 2 threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fewshot_bench import SETS, fit_textfit, sample  # noqa: E402  (bench modules beside this one)

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)


def drop(text: str, words: list[dict], keep: set[int]) -> str:
    """The text with only the words whose index is in `keep` (separated as in the text, by single spaces)."""
    return " ".join(w["word"] for i, w in enumerate(words) if i in keep)


def eraser(clf, texts: list[str], explanations: list[list[dict]], labels: list[int]) -> dict[str, float]:
    """ERASER's comprehensiveness and sufficiency (AOPC over BINS), from each text's word scores."""
    full = clf.predict_proba(texts)
    comp, suff = [], []
    without, only, owners = [], [], []
    for t, (text, words) in enumerate(zip(texts, explanations)):
        order = np.argsort([-w["score"] for w in words], kind="stable")
        for share in BINS:
            k = max(1, int(round(share * len(words))))
            top = set(order[:k].tolist())
            without.append(drop(text, words, set(range(len(words))) - top) or ".")
            only.append(drop(text, words, top) or ".")
            owners.append(t)
    p_without, p_only = clf.predict_proba(without), clf.predict_proba(only)
    for row, t in enumerate(owners):
        comp.append(full[t, labels[t]] - p_without[row, labels[t]])
        suff.append(full[t, labels[t]] - p_only[row, labels[t]])
    return {"comprehensiveness": float(np.mean(comp)), "sufficiency": float(np.mean(suff))}


def shap_explanations(clf, texts: list[str], labels: list[int]) -> tuple[list[list[dict]], float]:
    """SHAP's token values for each text's label, summed onto textfit's words; and the seconds it took."""
    import shap

    def f(batch: np.ndarray) -> np.ndarray:
        return clf.log_scores([str(t) for t in batch])

    explainer = shap.Explainer(f, shap.maskers.Text(clf.tokenizer_), output_names=clf.classes_)
    start = time.perf_counter()
    values = explainer(texts)
    seconds = time.perf_counter() - start
    out = []
    for i, (text, label) in enumerate(zip(texts, labels)):
        words = [dict(w) for w in clf.explain([text], max_words=10_000)[0]["explanation"]]  # the words, offsets
        for w in words:
            w["score"] = 0.0
        at = 0
        for piece, value in zip(values.data[i], values.values[i][:, label]):
            start_char, end_char = at, at + len(piece)
            at = end_char
            for w in words:
                if w["start"] < end_char and start_char < w["end"]:
                    w["score"] += float(value)
                    break
        out.append(words)
    return out, seconds


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def costs(clf, onnx, text: str, runs: int) -> dict[str, float]:
    """Median milliseconds of a prediction and of each explanation of `text`, alone."""
    return {
        "predict_onnx_ms": median_ms(lambda: onnx.predict_proba([text]), runs),
        "occlusion_onnx_ms": median_ms(lambda: onnx.explain([text]), runs),
        "predict_torch_ms": median_ms(lambda: clf.predict_proba([text]), runs),
        "integrated_gradients_torch_ms": median_ms(lambda: clf.explain([text], method="integrated_gradients"),
                                                   max(3, runs // 3)),
        "integrated_gradients@1_torch_ms": median_ms(
            lambda: clf.explain([text], method="integrated_gradients", steps=1), runs),
    }


def text_of(pool: list[str], words: int) -> str:
    """A text of exactly `words` words of the set: its texts one after another, cut there."""
    return " ".join(" ".join(pool).split()[:words])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="bbc,debian")
    parser.add_argument("--per-class", type=int, default=32)
    parser.add_argument("--texts", type=int, default=40)
    parser.add_argument("--words", type=int, default=100, help="test texts cut to their first this many words")
    parser.add_argument("--timing-runs", type=int, default=15)
    parser.add_argument("--methods", default="occlusion,integrated_gradients,integrated_gradients@1,random,shap",
                        help="integrated_gradients@N: with N steps (32 without)")
    parser.add_argument("--seed", type=int, default=0, help="which rows train and which are explained")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    from textfit.jobs.train import save_artifact
    from textfit.predictor import Predictor

    print(f"# {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    for name in args.sets.split(","):
        train, test, names = SETS[name]()
        clf, seconds = fit_textfit(sample(train, args.per_class, args.seed), names)
        chosen = random.Random(args.seed).sample(test, min(args.texts, len(test)))  # every class's (Debian's test is in class order)
        texts = [" ".join(t.split()[: args.words]) for _, t in chosen]
        labels = [int(i) for i in clf.predict_proba(texts).argmax(axis=1)]
        result: dict[str, object] = {"set": name, "train_rows": args.per_class * len(names), "texts": len(texts),
                                     "fit_s": round(seconds, 1)}
        for method in args.methods.split(","):
            start = time.perf_counter()
            if method.split("@")[0] in ("occlusion", "integrated_gradients"):
                base, _, steps = method.partition("@")
                explained = [r["explanation"] for r in clf.explain(texts, method=base, steps=int(steps or 32))]
            elif method == "random":
                rng = np.random.default_rng(0)
                explained = [[{**w, "score": float(rng.random())} for w in r["explanation"]]
                             for r in clf.explain(texts)]
            else:
                explained, _ = shap_explanations(clf, texts, labels)
            seconds = time.perf_counter() - start
            result[method] = {**eraser(clf, texts, explained, labels), "s_per_text": round(seconds / len(texts), 3)}
            print(json.dumps({"set": name, "method": method, **result[method]}), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_artifact(clf, Path(tmp) / "model")
            onnx = Predictor.load(Path(tmp) / "model", threads=2)
            pool = [t for _, t in test]
            for words in (30, 300):
                timing = costs(clf, onnx, text_of(pool, words), args.timing_runs)
                timing = {k: round(v, 1) for k, v in timing.items()}
                timing["occlusion_x_predict"] = round(timing["occlusion_onnx_ms"] / timing["predict_onnx_ms"], 1)
                print(json.dumps({"set": name, "words": words, **timing}), flush=True)


if __name__ == "__main__":
    main()
