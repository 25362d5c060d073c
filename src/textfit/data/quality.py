"""What is wrong with a data set before any model reads it: duplicates, leaks between splits, conflicting labels,
class balance, empty texts and texts that are mostly markup or encoding debris.

Everything here hashes and counts (no encoder, no torch): `textfit train` runs the cheap checks on every job, and
`textfit inspect` (jobs/inspection.py) adds what needs a model (token lengths, likely label errors). Texts are
compared twice: exactly, and normalised (Unicode NFKC, case folded, runs of whitespace made one space), which
catches the copies that differ by a capital or a line break. A key is a 16-byte digest, so 100,000 rows hold a few
megabytes of keys whatever the texts' length.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "validation", "test")

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_TAG = re.compile(r"<[^<>]{1,200}>|&(?:[a-zA-Z]{2,8}|#\d{1,6}|#x[0-9a-fA-F]{1,6});|https?://\S+")
# UTF-8 read as Latin-1 or cp1252 (mojibake: "Ã©" for "é", "â€™" for "’"), the replacement character and C0
# control characters other than tab and line breaks: what a broken export leaves in a text
_DEBRIS = re.compile("[ÂÃ][\u0080-\u00bf]|â€|\ufffd|[\x00-\x08\x0b\x0c\x0e-\x1f]")

MARKUP_SHARE = 0.5
"""A text is mostly markup when tags, entities and URLs make at least this share of its characters."""
NEAR_EMPTY_CHARS = 3
"""A text with fewer letters and digits than this (and one word at most) says next to nothing: "ok", "?!", "-"."""


def normalise(text: str) -> str:
    """The form two texts are compared in: NFKC, case folded, whitespace runs as one space, trimmed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(frozen=True)
class Row:
    """Where a text is: its split and the line of data.csv its record starts on (1-based)."""

    split: str
    line: int


@dataclass
class Group:
    """Rows holding one text: copies within a split, or (a leak) across splits."""

    text: str
    rows: list[Row]
    exact: bool
    """Identical character for character; otherwise equal once normalised."""
    labels: list[str] = field(default_factory=list)
    """The label each row gives, in the order of `rows`."""

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "exact": self.exact, "rows": [asdict(r) for r in self.rows],
                "labels": self.labels}


@dataclass
class TextFlag:
    """A text that is empty, near-empty, mostly markup or holds encoding debris."""

    row: Row
    kind: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.row), "kind": self.kind, "text": self.text}


@dataclass
class Findings:
    """The hashing checks' findings over the splits given."""

    rows: dict[str, int]
    duplicates: list[Group]
    """Texts appearing more than once within one split."""
    leaks: list[Group]
    """Texts of the validation or test split that appear in an earlier split (training, or training and
    validation): each group names every row holding the text."""
    conflicts: list[Group]
    """Texts given different labels (within a split or across splits)."""
    class_counts: dict[str, dict[str, int]]
    flags: list[TextFlag]

    def leaked_rows(self, split: str) -> int:
        """How many rows of `split` hold a text of an earlier split."""
        return sum(1 for g in self.leaks for r in g.rows if r.split == split)

    def duplicate_rows(self, split: str) -> int:
        """Rows of `split` that repeat an earlier row of it (a group of three is two)."""
        return sum(len([r for r in g.rows if r.split == split]) - 1 for g in self.duplicates
                   if g.rows[0].split == split)


def _label_text(label: object) -> str:
    return "|".join(str(x) for x in label) if isinstance(label, (tuple, list)) else str(label)


def text_flag(text: str) -> str | None:
    """empty, near-empty, markup or debris; None for an ordinary text."""
    words = _WORD.findall(text)
    if not words:
        return "empty"
    if len(words) <= 1 and sum(ch.isalnum() for ch in text) < NEAR_EMPTY_CHARS:
        return "near-empty"
    if _DEBRIS.search(text):
        return "debris"
    markup = sum(len(m) for m in _TAG.findall(text))
    if markup and markup >= MARKUP_SHARE * len(text.strip()):
        return "markup"
    return None


def inspect_splits(splits: Mapping[str, tuple[Sequence[str], Sequence[Any], Sequence[int]]], *,
                   flag_texts: bool = True) -> Findings:
    """Duplicates, leaks, conflicts, class counts and (with `flag_texts`) flagged texts of the splits given, each
    as (texts, labels, lines), in the order train, validation, test (a split may be absent)."""
    order = [s for s in SPLITS if s in splits]
    # normalised key -> the rows holding it, with their exact keys and labels; the first text seen stands for all
    seen: dict[bytes, list[tuple[Row, bytes, str]]] = defaultdict(list)
    first_text: dict[bytes, str] = {}
    counts: dict[str, dict[str, int]] = {}
    flags: list[TextFlag] = []
    for split in order:
        texts, labels, lines = splits[split]
        tally: Counter[str] = Counter()
        for text, label, line in zip(texts, labels, lines):
            given = _label_text(label)
            tally.update(label if isinstance(label, (tuple, list)) else [given])
            near = key(normalise(text))
            seen[near].append((Row(split, line), key(text), given))
            first_text.setdefault(near, text)
            if flag_texts and (kind := text_flag(text)) is not None:
                flags.append(TextFlag(Row(split, line), kind, text))
        counts[split] = dict(sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))
    duplicates, leaks, conflicts = [], [], []
    for near, held in seen.items():
        if len(held) < 2:
            continue
        text = first_text[near]
        exact = len({h[1] for h in held}) == 1
        by_split: dict[str, list[tuple[Row, bytes, str]]] = defaultdict(list)
        for h in held:
            by_split[h[0].split].append(h)
        for inside in by_split.values():
            if len(inside) > 1:
                duplicates.append(Group(text, [h[0] for h in inside], len({h[1] for h in inside}) == 1,
                                        [h[2] for h in inside]))
        if len(by_split) > 1:
            leaks.append(Group(text, [h[0] for h in held], exact, [h[2] for h in held]))
        if len({h[2] for h in held}) > 1:
            conflicts.append(Group(text, [h[0] for h in held], exact, [h[2] for h in held]))
    return Findings({s: len(splits[s][0]) for s in order}, duplicates, leaks, conflicts, counts, flags)


def summary_lines(findings: Findings) -> list[str]:
    """One line per kind of finding, with its count: what `inspect` prints and `train` logs."""
    lines = []
    for split in findings.rows:
        n = findings.duplicate_rows(split)
        groups = sum(1 for g in findings.duplicates if g.rows[0].split == split)
        lines.append(f"Duplicates: {n} {split} rows repeat another {split} row ({groups} texts)")
    for split in ("validation", "test"):
        if split in findings.rows:
            earlier = " or ".join(s for s in SPLITS[: SPLITS.index(split)] if s in findings.rows)
            lines.append(f"Leaks: {findings.leaked_rows(split)} of {findings.rows[split]} {split} texts appear in "
                         f"{earlier} (word for word, or but for case and spacing)")
    lines.append(f"Conflicts: {len(findings.conflicts)} texts appear with different labels "
                 f"({sum(len(g.rows) for g in findings.conflicts)} rows)")
    kinds = Counter(f.kind for f in findings.flags)
    lines.append("Texts: " + ", ".join(f"{kinds.get(k, 0)} {k}" for k in ("empty", "near-empty", "markup", "debris")))
    return lines


def groups_as_dicts(groups: Iterable[Group]) -> list[dict[str, Any]]:
    return [g.as_dict() for g in groups]


def training_lines(findings: Findings) -> list[str]:
    """What `textfit train` logs of its data: copies between its training and validation rows, and conflicts."""
    if "validation" in findings.rows:
        leaked = findings.leaked_rows("validation")
        copies = (f"Duplicates: {leaked} of {findings.rows['validation']} validation texts appear in the training "
                  "data" + (" (val_accuracy counts them: `textfit inspect` lists them)" if leaked else ""))
    else:
        repeated = findings.duplicate_rows("train")
        copies = (f"Duplicates: {repeated} training rows repeat another"
                  + (" (the validation split may hold copies of training rows, which inflates val_accuracy: "
                     "`textfit inspect` lists them)" if repeated else ""))
    rows = sum(len(g.rows) for g in findings.conflicts)
    conflicts = (f"Conflicts: {len(findings.conflicts)} texts appear with different labels"
                 + (f" ({rows} rows; `textfit inspect` lists them)" if rows else ""))
    return [copies, conflicts]
