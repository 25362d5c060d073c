"""Tuning against the defaults: does a short search on BBC News reach the default hyperparameters' val_accuracy?

    python bench/tune_bench.py [--max-jobs 4] [--search lr-batch|lr-batch-epochs] [--prune-from-epoch 2]

Trains the embedded all-MiniLM-L6-v2 on BBC News (bench/bbc.py, 1,781 rows; 20% held out for val_accuracy,
the same split for every run) once with the default hyperparameters, then runs `textfit tune` for max-jobs
trials (bayesian, early stopping on) over one of SEARCHES, and prints both val_accuracies, the best trial's
test accuracy and the wall time of each.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SEARCHES = {
    # learning rate and batch size, 3 epochs fixed
    "lr-batch": ({
        "ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "1e-5", "MaxValue": "3e-4",
                                       "ScalingType": "Logarithmic"}],
        "CategoricalParameterRanges": [{"Name": "batch_size", "Values": ["16", "32"]}],
    }, {"epochs": "3"}),
    # the number of epochs too
    "lr-batch-epochs": ({
        "ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "3e-5", "MaxValue": "3e-4",
                                       "ScalingType": "Logarithmic"}],
        "CategoricalParameterRanges": [{"Name": "batch_size", "Values": ["16", "32"]},
                                       {"Name": "epochs", "Values": ["3", "5"]}],
    }, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-jobs", type=int, default=4)
    parser.add_argument("--search", choices=sorted(SEARCHES), default="lr-batch")
    parser.add_argument("--prune-from-epoch", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("textfit").setLevel(logging.WARNING)

    from bbc import channels

    from textfit import TextClassifier
    from textfit.data.channels import read_channel
    from textfit.jobs.tuning import tune

    with tempfile.TemporaryDirectory() as tmp:
        train, test = channels(Path(tmp))
        test_ch = read_channel(test)

        def test_accuracy(clf: TextClassifier) -> float:
            predicted = clf.predict(test_ch.texts)
            return sum(int(p) == y for p, y in zip(predicted, test_ch.labels)) / len(predicted)

        start = time.perf_counter()
        default = TextClassifier().fit(train)
        default_seconds = time.perf_counter() - start
        default_val = default.history_[default.best_epoch_ - 1]["val_accuracy"]
        print(f"defaults ({default.hyperparameters_.optimizer} {default.hyperparameters_.learning_rate}, "
              f"{default.hyperparameters_.epochs} epochs): val_accuracy {default_val:.4f}, test accuracy "
              f"{test_accuracy(default):.4f}, {default_seconds:.0f} s", flush=True)

        start = time.perf_counter()
        ranges, fixed = SEARCHES[args.search]
        result = tune(train, output=Path(tmp) / "tuning", max_jobs=args.max_jobs, ranges=ranges,
                      hyperparameters=fixed, seed=0, prune_from_epoch=args.prune_from_epoch)
        tune_seconds = time.perf_counter() - start
        best = TextClassifier.load(Path(tmp) / "tuning" / "best")
        for row in result.trials:
            print(f"  trial {row['trial']}: {row['state']:<8} val_accuracy {row['val_accuracy'] or 0:.4f} "
                  f"learning_rate {float(row['learning_rate']):.2e} batch_size {row['batch_size']} "
                  f"epochs {row.get('epochs', '5')}, run {row['epochs_run']} ({row['duration_s']} s)")
        print(f"tuning, {args.max_jobs} trials: best val_accuracy {result.best_val_accuracy:.4f} (defaults "
              f"{default_val:.4f}), its test accuracy {test_accuracy(best):.4f}, {tune_seconds:.0f} s in all")


if __name__ == "__main__":
    main()
