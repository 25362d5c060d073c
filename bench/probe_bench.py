"""What starting the small-data recipe's head costs as classes grow: the linear probe (scikit-learn's logistic
regression, recipes._probe_weights) against the class-mean head (recipes._centroid_weights), on the frozen
features of real texts.

    python bench/probe_bench.py [--sizes 100x20,500x8,1000x4,2000x2] [--budget 600]

Features: the embedded all-MiniLM-L6-v2's mean-pooled, normalised embeddings of Debian package descriptions
(bench/fewshot_bench.py's pool, 4,233 texts; larger sizes add noisy copies of them, see `widened`). Classes are
many, small and close together, as intents or product categories are: each is one random description and its
nearest unused neighbours, per_class rows in all. Prints, for each size: the cells (rows x classes), the
seconds and the memory each start adds at its peak (each in its own process), and its training accuracy; a
probe still running after --budget seconds is stopped and shown so.
recipes.PROBE_MAX_CELLS is set from these numbers (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def features(limit: int) -> np.ndarray:
    """Embeddings of the first `limit` texts of the Debian pool (the same mean-pooled, normalised features
    the recipe's probe reads)."""
    from fewshot_bench import _embed, debian_set

    pool, _, _ = debian_set()
    return _embed([t for _, t in pool[:limit]]).astype(np.float32)


def widened(feats: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """The pool, and past its size noisy copies of it (noise of 0.01 a dimension, about 0.2 in norm, then normalised
    again), so that sizes past 4,233 rows can be timed."""
    rng = np.random.default_rng(seed)
    parts = [feats]
    while sum(len(p) for p in parts) < rows:
        noisy = feats + 0.01 * rng.normal(size=feats.shape).astype(np.float32)
        parts.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    return np.vstack(parts)


def groups(feats: np.ndarray, n_classes: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """n_classes classes of per_class rows: a random seed row and its nearest unused neighbours each."""
    feats = widened(feats, n_classes * per_class * 2)
    rng = np.random.default_rng(seed)
    free = np.ones(len(feats), dtype=bool)
    rows, labels = [], []
    for c in rng.permutation(len(feats))[: n_classes * 4]:
        if len(set(labels)) == n_classes:
            break
        if not free[c]:
            continue
        sims = feats @ feats[c]
        sims[~free] = -np.inf
        members = np.argsort(-sims)[:per_class]
        if not np.isfinite(sims[members]).all():
            continue
        free[members] = False
        rows += members.tolist()
        labels += [len(set(labels))] * per_class
    if len(set(labels)) < n_classes:
        raise SystemExit(f"the pool has too few rows for {n_classes} classes of {per_class}")
    return feats[rows], labels


def _time(kind: str, feats: np.ndarray, labels: list[int], n_classes: int, out: mp.Queue) -> None:
    import resource

    from textfit.training import recipes

    before = _rss_mb()
    start = time.perf_counter()
    if kind == "probe":
        weight, bias = recipes._probe_weights(feats, labels, n_classes, False, 1e-4, None, 0)
    else:
        weight, bias = recipes._centroid_weights(feats, labels, n_classes, False)
    seconds = time.perf_counter() - start
    added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    right = sum(int(((feats[i:i + 1024] @ weight.T + bias).argmax(1) == np.array(labels[i:i + 1024])).sum())
                for i in range(0, len(feats), 1024))
    out.put((seconds, added, right / len(feats)))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def measure(kind: str, feats: np.ndarray, labels: list[int], n_classes: int, budget: float
            ) -> tuple[float, float, float] | None:
    """(seconds, MB the peak RSS rose by, training accuracy), or None past the budget."""
    out: mp.Queue = mp.get_context("fork").Queue()
    proc = mp.get_context("fork").Process(target=_time, args=(kind, feats, labels, n_classes, out))
    proc.start()
    proc.join(budget)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100x20,500x8,1000x4,2000x2", help="classes x rows a class, ...")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds a probe may take")
    args = parser.parse_args()
    sizes = [(int(c), int(n)) for c, n in (size.split("x") for size in args.sizes.split(","))]
    feats = features(10**9)
    print(f"{'classes':>7} {'a class':>7} {'cells':>10} {'probe s':>8} {'probe MB':>8} {'probe acc':>9} "
          f"{'means s':>8} {'means MB':>8} {'means acc':>9}", flush=True)
    for n_classes, per_class in sizes:
        x, y = groups(feats, n_classes, per_class)
        probe = measure("probe", x, y, n_classes, args.budget)
        means = measure("means", x, y, n_classes, args.budget)
        assert means is not None
        shown = (f"{probe[0]:>8.1f} {probe[1]:>8.0f} {probe[2]:>9.3f}" if probe else
                 f"{'> ' + str(int(args.budget)):>8} {'-':>8} {'-':>9}")
        print(f"{n_classes:>7} {per_class:>7} {len(y) * n_classes:>10,} {shown} {means[0]:>8.2f} {means[1]:>8.0f} "
              f"{means[2]:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
