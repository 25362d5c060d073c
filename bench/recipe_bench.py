"""The small-data recipe's settings, compared on development rows: never on the test rows fewshot_bench scores.

    python bench/recipe_bench.py [--sets bbc,debian] [--sizes 8,64] [--seeds 3] [--dev 60]
        --variants "base=;steps160=steps=160;lr5e-5=learning_rate=5e-5;len256=max_seq_length=256"

For each set, size and seed, the training rows are fewshot_bench's sample (the same rows its textfit runs train
on), and the development rows are --dev rows a class drawn from the rest of the pool with another seed, so
the settings recipes.py fixes are chosen without looking at the rows the benchmark reports. A variant is
`name=settings`: hyperparameters as textfit takes them (`learning_rate=5e-5`), and `steps=N` for the recipe's
budget of optimizer steps (recipes.FEWSHOT_STEPS); several are joined by commas, none is the defaults. Each
variant's accuracy on the development rows and its training seconds are printed a run at a time, and a table
of means at the end (with each variant's mean difference from the first one, seed by seed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from fewshot_bench import SETS, fingerprint, run_textfit, sample  # noqa: E402


def parse_variants(text: str) -> dict[str, dict[str, str]]:
    variants: dict[str, dict[str, str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, settings = part.partition("=")
        pairs = [kv.split("=", 1) for kv in settings.split(",") if kv]
        variants[name] = {k.strip(): v.strip() for k, v in pairs}
    return variants


def dev_rows(pool: list[tuple[int, str]], train: list[tuple[int, str]], per_class: int, seed: int
             ) -> list[tuple[int, str]]:
    """per_class rows a class of the pool that training did not draw (another seed than the sample's)."""
    taken = set(train)
    rest = [r for r in pool if r not in taken]
    rng = random.Random(10_000 + seed)
    picked = []
    for label in sorted({y for y, _ in rest}):
        members = [r for r in rest if r[0] == label]
        picked += rng.sample(members, min(per_class, len(members)))
    return picked


def run(train: list[tuple[int, str]], dev: list[tuple[int, str]], names: list[str], settings: dict[str, str]
        ) -> dict[str, object]:
    """fewshot_bench's textfit run, scored on the development rows."""
    hyperparameters = {k: v for k, v in settings.items() if k != "steps"}
    steps = int(settings["steps"]) if "steps" in settings else None
    return run_textfit(train, dev, names, 0, hyperparameters, steps)


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="bbc,debian")
    parser.add_argument("--sizes", default="8,64")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dev", type=int, default=60, help="development rows a class")
    parser.add_argument("--variants", default="base=")
    parser.add_argument("--results", type=Path, help="append each run here as a JSON line")
    args = parser.parse_args()
    variants = parse_variants(args.variants)
    runs: dict[tuple[str, int, str], list[dict[str, object]]] = defaultdict(list)
    for name in args.sets.split(","):
        pool, test, names = SETS[name]()
        data = fingerprint(pool, test)
        for per_class in (int(s) for s in args.sizes.split(",")):
            for seed in range(args.seeds):
                train = sample(pool, per_class, seed)
                dev = dev_rows(pool, train, args.dev, seed)
                for variant, settings in variants.items():
                    row = {"set": name, "data": data, "per_class": per_class, "seed": seed, "variant": variant,
                           "settings": settings, **run(train, dev, names, settings)}
                    runs[(name, per_class, variant)].append(row)
                    print(json.dumps(row), flush=True)
                    if args.results:
                        with args.results.open("a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")
    first = next(iter(variants))
    print("| set | rows a class | variant | seeds | dev accuracy (mean ± sd) | against the first (mean) | s (mean) |")
    print("|---|---|---|---|---|---|---|")
    for (name, per_class, variant), rows in runs.items():
        acc = np.array([r["accuracy"] for r in rows], dtype=float)
        base = np.array([r["accuracy"] for r in runs[(name, per_class, first)]], dtype=float)
        delta = acc - base[:len(acc)]
        print(f"| {name} | {per_class} | {variant} | {len(rows)} | {acc.mean():.4f} ± {acc.std():.4f} | "
              f"{delta.mean():+.4f} | {np.mean([r['seconds'] for r in rows]):.1f} |")


if __name__ == "__main__":
    main()
