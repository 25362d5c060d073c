"""Long texts on full data: one model trained with textfit's defaults, its test rows read truncated and as windows.

    python bench/long_texts_bench.py [--set bbc|debian] [--epochs N]

Fine-tunes the embedded all-MiniLM-L6-v2 with the defaults (`textfit train` with no hyperparameters, or only
`--epochs`) on all of a set's training rows (BBC News: 1,781 articles, bench/bbc.py; Debian: the package
descriptions of fewshot_bench.py) and scores the held-out test rows with the same model both ways: truncated at
max_seq_length tokens, and as overlapping windows (`long_texts`). Prints how many windows the test rows make and
the longest row's tokens, what `long_texts=auto` chose, the share of long training rows, each accuracy and the
seconds each prediction took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=["bbc", "debian"], default="bbc")
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's (5 for the MiniLM)")
    args = parser.parse_args()

    from fewshot_bench import SETS

    from textfit import TextClassifier
    from textfit.data import batching
    from textfit.model.pretrained import load_tokenizer
    from textfit.model.zoo import resolve_model

    train, test, names = SETS[args.set]()
    tokenizer = load_tokenizer(resolve_model(None).path)
    windows = batching.encode(tokenizer, [t for _, t in test], 128, window_overlap=32)
    longest = max(len(ids) for ids in tokenizer([t for _, t in test], verbose=False)["input_ids"])
    print(f"{args.set}: the {len(test)} test rows are {len(windows)} windows of 128 tokens "
          f"({len(windows) / len(test):.1f} a row); the longest row has {longest} tokens")
    hyperparameters = {"epochs": str(args.epochs)} if args.epochs else {}
    start = time.perf_counter()
    clf = TextClassifier(hyperparameters=hyperparameters).fit([t for _, t in train], [names[y] for y, _ in train])
    fit_seconds = time.perf_counter() - start
    texts = [t for _, t in test]
    truth = np.array([clf.classes_.index(names[y]) for y, _ in test])
    share = clf.manifest_["data"]["train"]["truncated_texts"] / clf.manifest_["data"]["train"]["rows"]
    print(f"{args.set}: {len(train)} training rows ({100 * share:.0f}% longer than "
          f"{clf.hyperparameters_.max_seq_length} tokens), {len(test)} test rows; long_texts=auto chose "
          f"{clf.long_texts_}; training {fit_seconds:.0f} s")
    for way in ("truncate", "window"):
        start = time.perf_counter()
        proba = clf.predict_proba(texts, long_texts=way)
        seconds = time.perf_counter() - start
        accuracy = float(np.mean(proba.argmax(axis=1) == truth))
        print(f"  {way:<8} test accuracy {accuracy:.4f}, predicted in {seconds:.1f} s")


if __name__ == "__main__":
    main()
