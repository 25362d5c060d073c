"""Long texts: how textfit reads them, against the Trainer's 128-token recipe and TF-IDF, on all of a set's rows.

    python bench/long_texts_bench.py [--set bbc|manpages] [--only default,head_tail,trainer,tfidf] [--epochs N]
                                     [--rows N]

Each way is trained on the set's training rows and scored on its held-out test rows, in one run:
- `default`: `TextClassifier(hyperparameters={"long_texts": "truncate"})`, trained on each text's first 128
  tokens (what `long_texts=auto` picks for sets of long texts this size); its test rows read four ways from the
  same model: the first 128 tokens (`truncate`), overlapping windows (`window`, up to batching.MAX_WINDOWS a
  text), and windows capped at 2 and at 4 a text;
- `head_tail`: `TextClassifier(hyperparameters={"long_texts": "head_tail"})`, trained and read on each text's
  first and last tokens;
- `trainer`: the Hugging Face Trainer's documented recipe (bench/job_memory_bench.py) at the settings textfit
  resolved (epochs, learning rate, batch, warm-up, 128 tokens, the same 20% validation split, its best epoch),
  its test rows truncated at 128 tokens;
- `tfidf`: TF-IDF (1-2 grams, sublinear) + cross-validated logistic regression on whole texts.
Prints accuracy, training seconds and prediction seconds for the test rows. Sets: `bbc` (1,781 training and
444 test articles, bench/bbc.py) and `manpages` (bench/manpages.py: the manual pages installed on this
machine, classified by section, header and footer lines removed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

Rows = list[tuple[int, str]]


def load_set(name: str) -> tuple[Rows, Rows, list[str]]:
    if name == "manpages":
        import manpages

        return manpages.split()
    from fewshot_bench import SETS

    return SETS[name]()


@contextlib.contextmanager
def windows_capped(cap: int) -> Iterator[None]:
    """Predictions read at most `cap` windows a text."""
    from textfit.data import batching

    before = batching.MAX_WINDOWS
    batching.MAX_WINDOWS = cap
    try:
        yield
    finally:
        batching.MAX_WINDOWS = before


def score_textfit(clf: object, test: Rows, names: list[str], long_texts: str) -> tuple[float, float]:
    texts = [t for _, t in test]
    truth = np.array([clf.classes_.index(names[y]) for y, _ in test])  # type: ignore[attr-defined]
    start = time.perf_counter()
    proba = clf.predict_proba(texts, long_texts=long_texts)  # type: ignore[attr-defined]
    return float(np.mean(proba.argmax(axis=1) == truth)), time.perf_counter() - start


def fit_textfit(train: Rows, names: list[str], hyperparameters: dict[str, str]) -> tuple[object, float]:
    from textfit import TextClassifier

    start = time.perf_counter()
    clf = TextClassifier(hyperparameters=hyperparameters).fit([t for _, t in train], [names[y] for y, _ in train])
    return clf, time.perf_counter() - start


def run_trainer(train: Rows, test: Rows, names: list[str], hp: dict[str, object]) -> tuple[float, float, float]:
    """The Trainer's recipe (job_memory_bench.trainer_job, in this process) and its test accuracy at 128 tokens."""
    import torch
    from job_memory_bench import trainer_job
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textfit.training.loop import cpu_has_bf16

    with tempfile.TemporaryDirectory() as tmp:
        import bbc

        folder = bbc.write_channel(Path(tmp) / "train", [(y, t) for y, t in train])
        start = time.perf_counter()
        trainer_job(folder, Path(tmp) / "out", hp, cpu_has_bf16())
        seconds = time.perf_counter() - start
        model = AutoModelForSequenceClassification.from_pretrained(Path(tmp) / "out" / "model").eval()
        tok = AutoTokenizer.from_pretrained(Path(tmp) / "out" / "model")
    # trainer_job numbers the classes in the sorted order of the channel's labels (integers here)
    classes = sorted({y for y, _ in train})
    start = time.perf_counter()
    predicted = []
    with torch.inference_mode():
        for i in range(0, len(test), 64):
            enc = tok([t for _, t in test[i:i + 64]], truncation=True, max_length=int(str(hp["max_seq_length"])),
                      padding=True, return_tensors="pt")
            predicted += [classes[j] for j in model(**enc).logits.argmax(-1).tolist()]
    predict_seconds = time.perf_counter() - start
    return float(np.mean(np.array(predicted) == np.array([y for y, _ in test]))), seconds, predict_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=["bbc", "manpages"], default="bbc")
    parser.add_argument("--only", default="default,head_tail,trainer,tfidf")
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's (5 for the MiniLM)")
    parser.add_argument("--rows", type=int, default=None, help="only this many training rows (a quick check)")
    args = parser.parse_args()
    only = args.only.split(",")

    from fewshot_bench import run_tfidf

    from textfit.data import batching
    from textfit.model.pretrained import load_tokenizer
    from textfit.model.zoo import resolve_model

    train, test, names = load_set(args.set)
    if args.rows:
        train, test = train[: args.rows], test[: max(1, args.rows // 4)]
    tokenizer = load_tokenizer(resolve_model(None).path)
    lengths = [len(ids) for ids in tokenizer([t for _, t in train], verbose=False)["input_ids"]]
    windows = batching.encode(tokenizer, [t for _, t in test], 128, window_overlap=32)
    print(f"{args.set}: {len(train)} training rows ({100 * np.mean(np.array(lengths) > 128):.0f}% longer than 128 "
          f"tokens, median {int(np.median(lengths))}), {len(test)} test rows ({len(windows)} windows of 128 tokens, "
          f"{len(windows) / len(test):.1f} a row)", flush=True)
    extra = {"epochs": str(args.epochs)} if args.epochs else {}
    rows: list[tuple[str, float, float, float]] = []
    hp: dict[str, object] | None = None
    if "default" in only or "trainer" in only:
        clf, fit_seconds = fit_textfit(train, names, {**extra, "long_texts": "truncate"})
        hp = dict(clf.hyperparameters_.to_json())  # type: ignore[attr-defined]
        if "default" in only:
            for way, cap in (("truncate", None), ("window", None), ("window", 2), ("window", 4)):
                with windows_capped(cap) if cap else contextlib.nullcontext():
                    accuracy, seconds = score_textfit(clf, test, names, way)
                label = f"textfit on first tokens, read {way}" + (f" (at most {cap} windows)" if cap else "")
                rows.append((label, accuracy, fit_seconds, seconds))
                print(rows[-1], flush=True)
        del clf
    if "head_tail" in only:
        clf, fit_seconds = fit_textfit(train, names, {**extra, "long_texts": "head_tail"})
        accuracy, seconds = score_textfit(clf, test, names, "head_tail")
        rows.append(("textfit long_texts=head_tail", accuracy, fit_seconds, seconds))
        print(rows[-1], flush=True)
        del clf
    if "trainer" in only:
        assert hp is not None
        accuracy, fit_seconds, seconds = run_trainer(train, test, names, hp)
        rows.append((f"HF Trainer recipe, first {hp['max_seq_length']} tokens", accuracy, fit_seconds, seconds))
        print(rows[-1], flush=True)
    if "tfidf" in only:
        result = run_tfidf(train, test, names, 0)
        rows.append(("TF-IDF + logistic regression (whole texts)", float(str(result["accuracy"])),
                     float(str(result["seconds"])), float("nan")))
        print(rows[-1], flush=True)
    print(f"\n{args.set}: {json.dumps({k: hp[k] for k in ('epochs', 'learning_rate', 'batch_size')}) if hp else ''}")
    print(f"{'way':<58} {'accuracy':>8} {'train s':>8} {'predict s':>9}")
    for label, accuracy, fit_seconds, seconds in rows:
        print(f"{label:<58} {accuracy:>8.4f} {fit_seconds:>8.0f} {seconds:>9.1f}")


if __name__ == "__main__":
    main()
