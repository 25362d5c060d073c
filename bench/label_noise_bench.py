"""Finding label errors: `textfit inspect` against cleanlab on the anchors a user would build, on flipped labels.

    python bench/label_noise_bench.py [--set bbc|debian ...] [--rows 2000] [--rates 0.05,0.1]
                                      [--modes uniform,confusable] [--train-on 0.1:uniform]

For each set, noise rate and mode, the labels of that share of the training rows are flipped: `uniform` to any
other class, `confusable` to the class whose TF-IDF centroid is nearest the row's own class's (BBC's business and
politics, say). Then, on the same noisy rows:

- textfit: `textfit inspect --train DIR` with its defaults (the frozen encoder's features, a logistic regression
  per fold, cleanlab), in its own process, timed whole (start, model load, embedding, folds, cleanlab, report);
- anchor "tfidf": cleanlab.filter.find_label_issues on 5-fold out-of-sample probabilities of TF-IDF (1-2 grams,
  sublinear tf) + logistic regression, scikit-learn's cross_val_predict;
- anchor "encoder": the same on the embedded encoder's mean token vectors computed with transformers directly,
  what a user would write with the same model;

and each is scored against the flips: precision, recall and F1 of the flagged rows. With --train-on RATE:MODE,
a default `textfit train` on the noisy rows and one on the noisy rows less textfit's flagged rows are scored on the
test split, with a train on the clean rows: how much of the accuracy the noise cost the cleaning recovers.
Peak RSS of the inspect process is printed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bbc import write_channel  # noqa: E402  (a bench module beside this one)


def load_set(name: str, rows: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[str]]:
    from fewshot_bench import SETS

    train, test, names = SETS[name]()
    rng = random.Random(0)
    train = list(train)
    rng.shuffle(train)
    return train[:rows], test, names


def confusable_targets(rows: list[tuple[int, str]], n_classes: int) -> list[int]:
    """For each class, the other class whose TF-IDF centroid is nearest its own."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform([t for _, t in rows])
    y = np.array([c for c, _ in rows])
    centroids = np.vstack([np.asarray(x[y == c].mean(axis=0)) for c in range(n_classes)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sim = centroids @ centroids.T
    np.fill_diagonal(sim, -1)
    return [int(sim[c].argmax()) for c in range(n_classes)]


def flip(rows: list[tuple[int, str]], n_classes: int, rate: float, mode: str, seed: int = 0
         ) -> tuple[list[tuple[int, str]], set[int]]:
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(rows)), round(rate * len(rows))))
    targets = confusable_targets(rows, n_classes) if mode == "confusable" else None
    noisy = []
    for i, (label, text) in enumerate(rows):
        if i in chosen:
            label = targets[label] if targets else rng.choice([c for c in range(n_classes) if c != label])
        noisy.append((label, text))
    return noisy, chosen


def scores(flagged: set[int], truth: set[int]) -> dict[str, float]:
    hit = len(flagged & truth)
    precision = hit / len(flagged) if flagged else 0.0
    recall = hit / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flagged": len(flagged), "precision": precision, "recall": recall, "f1": f1}


def run_textfit(folder: Path, out: Path) -> tuple[set[int], float, float]:
    """Rows flagged (0-based: every record is one line here), seconds and peak RSS (MB) of `textfit inspect`."""
    code = ("import re, sys; from pathlib import Path; from textfit.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK', re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1]); sys.exit(rc)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "inspect", "--train", str(folder), "--output", str(out)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    issues = json.loads((out / "inspect.json").read_text())["label_issues"]
    peak = int(re.search(r"PEAK (\d+)", done.stdout)[1]) / 1024  # type: ignore[index]
    return {i["line"] - 1 for i in issues}, seconds, peak


def cleanlab_flags(proba: np.ndarray, y: np.ndarray) -> set[int]:
    from cleanlab.filter import find_label_issues

    return {int(i) for i in find_label_issues(y, proba, return_indices_ranked_by="self_confidence", n_jobs=1)}


def anchor_tfidf(rows: list[tuple[int, str]]) -> tuple[set[int], float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline

    start = time.perf_counter()
    y = np.array([c for c, _ in rows])
    model = make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2),
                          LogisticRegression(C=10.0, max_iter=2000))
    proba = cross_val_predict(model, [t for _, t in rows], y, cv=5, method="predict_proba")
    return cleanlab_flags(proba, y), time.perf_counter() - start


def anchor_encoder(rows: list[tuple[int, str]]) -> tuple[set[int], float]:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from transformers import AutoModel, AutoTokenizer

    from textfit.model.zoo import embedded_path

    start = time.perf_counter()
    path = str(embedded_path())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = [t for _, t in rows]
    feats = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            feats.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    x = torch.cat(feats).numpy()
    y = np.array([c for c, _ in rows])
    proba = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=5, method="predict_proba")
    return cleanlab_flags(proba, y), time.perf_counter() - start


def test_accuracy(train_folder: Path, test: list[tuple[int, str]], tmp: Path, tag: str) -> float:
    import textfit

    clf = textfit.train(train_folder, output=tmp / f"model-{tag}", onnx="none")
    predicted = clf.predict([t for _, t in test])
    return sum(int(p) == y for p, (y, _) in zip(predicted, test)) / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", choices=("bbc", "debian"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rates", default="0.05,0.1")
    parser.add_argument("--modes", default="uniform,confusable")
    parser.add_argument("--train-on", help="RATE:MODE whose training effect is measured, e.g. 0.1:uniform")
    args = parser.parse_args()
    results = []
    for name in args.set or ["bbc", "debian"]:
        clean, test, names = load_set(name, args.rows)
        for rate in [float(r) for r in args.rates.split(",")]:
            for mode in args.modes.split(","):
                noisy, flips = flip(clean, len(names), rate, mode)
                with tempfile.TemporaryDirectory(prefix="label-noise-") as tmp_name:
                    tmp = Path(tmp_name)
                    folder = write_channel(tmp / "noisy", noisy)
                    ours, seconds, peak = run_textfit(folder, tmp / "report")
                    tfidf, tfidf_s = anchor_tfidf(noisy)
                    encoder, encoder_s = anchor_encoder(noisy)
                    row = {"set": name, "rows": len(noisy), "rate": rate, "mode": mode, "flips": len(flips),
                           "textfit": {**scores(ours, flips), "seconds": seconds, "peak_rss_mb": peak},
                           "tfidf": {**scores(tfidf, flips), "seconds": tfidf_s},
                           "encoder": {**scores(encoder, flips), "seconds": encoder_s}}
                    if args.train_on == f"{rate:g}:{mode}":
                        cleaned = write_channel(tmp / "cleaned", [r for i, r in enumerate(noisy) if i not in ours])
                        row["accuracy"] = {"clean": test_accuracy(write_channel(tmp / "clean", clean), test, tmp, "clean"),
                                           "noisy": test_accuracy(folder, test, tmp, "noisy"),
                                           "cleaned": test_accuracy(cleaned, test, tmp, "cleaned")}
                    results.append(row)
                    print("RESULT", json.dumps(row), flush=True)
    print(f"\n{'set':<7} {'rate':>5} {'mode':<11} {'method':<8} {'flagged':>7} {'precision':>9} {'recall':>6} "
          f"{'F1':>6} {'seconds':>7}")
    for r in results:
        for method in ("textfit", "tfidf", "encoder"):
            m = r[method]
            print(f"{r['set']:<7} {r['rate']:>5} {r['mode']:<11} {method:<8} {m['flagged']:>7} {m['precision']:>9.3f} "
                  f"{m['recall']:>6.3f} {m['f1']:>6.3f} {m['seconds']:>7.1f}")
        best = max(r["tfidf"]["f1"], r["encoder"]["f1"])
        print(f"  textfit F1 / better anchor's: {r['textfit']['f1'] / best if best else float('nan'):.2f}; "
              f"textfit's peak RSS {r['textfit']['peak_rss_mb']:.0f} MB")
        if "accuracy" in r:
            a = r["accuracy"]
            cost = a["clean"] - a["noisy"]
            print(f"  test accuracy: clean {a['clean']:.4f}, noisy {a['noisy']:.4f}, cleaned {a['cleaned']:.4f}: "
                  f"recovered {(a['cleaned'] - a['noisy']) / cost if cost > 0 else float('nan'):.2f} of what the "
                  "noise cost")


if __name__ == "__main__":
    main()
