"""Manual pages by section: long technical documents, from the pages installed on this machine.

Each page under /usr/share/man/man{1,2,3,5,7,8} is rendered by `man -l` (groff) and labelled by its section
(user commands, system calls, library functions, file formats, overviews, administration commands); at most
PER_SECTION pages a section and PER_FAMILY of one command family, chosen by a seeded shuffle of the sorted
file names. The header and footer lines
are removed (they name the section: "fork(2)"), and so are the SEE ALSO and COLOPHON sections (lists of pages
by section) and the section of every reference to another page ("fork(2)" becomes "fork"), and every run of
whitespace. The split is bbc.split's
(stratified 80/20, seed 42). Rendering the pages takes a few minutes once; the rows are cached under
~/.cache/textfit-bench/ with a fingerprint of the file names. The set depends on what is installed: the bench
prints its size and that fingerprint. Nothing of the pages is written into the repository.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import os
import random
import re
import subprocess
from pathlib import Path

SECTIONS = ("1", "2", "3", "5", "7", "8")
NAMES = ("user commands", "system calls", "library functions", "file formats", "overviews", "administration")
PER_SECTION = 400
MIN_WORDS = 40
# A reference to another page names its section ("fork(2)"): the page name stays, the section goes.
REFERENCE = re.compile(r"\b([\w.:+-]+)\(\d\w*\)")
VERSION = 2  # of the rendering: part of the cache's name
CACHE = Path.home() / ".cache" / "textfit-bench"


PER_FAMILY = 3


def family(path: Path) -> str:
    """A page's command family: its name up to the first '_', '-', '.' or ':' (git-*, a cloud SDK's thousands
    of generated subcommand pages, Perl's modules): at most PER_FAMILY pages of one, so that a section is not one
    program's manual."""
    return re.split(r"[_\-.:]", path.name, maxsplit=1)[0].lower()


def pages() -> list[tuple[int, Path]]:
    rng = random.Random(42)
    out = []
    for label, section in enumerate(SECTIONS):
        files = sorted((Path("/usr/share/man") / f"man{section}").glob("*.gz"))
        rng.shuffle(files)
        taken: dict[str, int] = {}
        for f in files:
            if taken.setdefault(family(f), 0) < PER_FAMILY:
                taken[family(f)] += 1
                out.append((label, f))
                if sum(taken.values()) >= PER_SECTION * 2:  # twice: some render empty or too short
                    break
    return out


def render(path: Path) -> str:
    env = {**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(["man", "-l", str(path)], capture_output=True, env=env, timeout=60, check=False)
    lines = subprocess.run(["col", "-bx"], input=done.stdout, capture_output=True, check=False
                           ).stdout.decode("utf-8", "replace").splitlines()
    body = [line for line in lines if line.strip()][1:-1]  # header and footer name the section
    kept, skipping = [], False
    for line in body:
        if line[:1].isalpha() and line.isupper():  # a section heading, at the left margin
            skipping = line.strip() in ("SEE ALSO", "COLOPHON")  # lists of pages by section; the project's note
        if not skipping:
            kept.append(line)
    return " ".join(REFERENCE.sub(r"\1", " ".join(kept)).split())


def rows() -> list[tuple[int, str]]:
    chosen = pages()
    digest = hashlib.sha256("\n".join(str(p) for _, p in chosen).encode()).hexdigest()[:12]
    cache = CACHE / f"manpages-v{VERSION}-{digest}.csv"
    if not cache.is_file():
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            texts = list(pool.map(render, [p for _, p in chosen]))
        kept: dict[int, list[tuple[int, str]]] = {label: [] for label in range(len(SECTIONS))}
        seen: set[str] = set()
        for (label, _), text in zip(chosen, texts):
            if len(text.split()) >= MIN_WORDS and text not in seen and len(kept[label]) < PER_SECTION:
                seen.add(text)
                kept[label].append((label, text))
        CACHE.mkdir(parents=True, exist_ok=True)
        with cache.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(r for label in kept for r in kept[label])
    csv.field_size_limit(1 << 30)
    with cache.open(encoding="utf-8", newline="") as f:
        out = [(int(label), text) for label, text in csv.reader(f)]
    print(f"manpages: {len(out)} pages ({digest}), by section "
          f"{', '.join(f'{s}: {sum(y == i for y, _ in out)}' for i, s in enumerate(SECTIONS))}", flush=True)
    return out


def split() -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[str]]:
    import bbc

    train, test = bbc.split(rows())
    return train, test, list(NAMES)
