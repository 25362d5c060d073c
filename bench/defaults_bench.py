"""Which full fine-tuning defaults suit the embedded model: SageMaker's algorithm-level ones against recipes.

    python bench/defaults_bench.py [--max-seq-length 128]

Fine-tunes the embedded all-MiniLM-L6-v2 on BBC News (bench/bbc.py, 1,781 rows, 20% of them held out for
val_accuracy as `textfit train` does by default) with each candidate and scores the 444 test rows.
The winner is the default in src/textfit/zoo.py (MINILM_DEFAULTS).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

CANDIDATES = {
    # SageMaker's algorithm-level defaults, cut to 3 epochs: they never leave the majority class
    "sagemaker adam 1e-3 (3 ep)": {"optimizer": "adam", "learning_rate": "1e-3", "epochs": "3"},
    "adamw 5e-5, 3 ep (BERT recipe)": {"optimizer": "adamw", "learning_rate": "5e-5", "epochs": "3"},
    "adamw 1e-4, 5 ep (textfit)": {"optimizer": "adamw", "learning_rate": "1e-4", "epochs": "5"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()

    from bbc import channels

    from textfit import TextClassifier
    from textfit.data.channels import read_channel

    with tempfile.TemporaryDirectory() as tmp:
        train, test = channels(Path(tmp))
        test_ch = read_channel(test)
        rows = []
        for name, hp in CANDIDATES.items():
            start = time.perf_counter()
            clf = TextClassifier(hyperparameters={**hp, "max_seq_length": str(args.max_seq_length)}).fit(read_channel(train))
            seconds = time.perf_counter() - start
            predicted = clf.predict(test_ch.texts)
            acc = sum(int(p) == y for p, y in zip(predicted, test_ch.labels)) / len(predicted)
            best = clf.history_[clf.best_epoch_ - 1]["val_accuracy"]
            rows.append((name, best, acc, seconds))
    print(f"\n{'candidate':<34} {'val_accuracy':>12} {'test acc':>9} {'seconds':>8}")
    for name, val, acc, seconds in rows:
        print(f"{name:<34} {val:>12.4f} {acc:>9.4f} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
