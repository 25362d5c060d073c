"""Data channels in SageMaker's format: a folder with a headerless `label,text` data.csv (README: Train).

Reading checks every rule a user can break and names the file, the line and the fix. Labels may be any
integers (mapped, sorted, to class indices) or, beyond SageMaker, names.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textfit.errors import DataError

DATA_FILE = "data.csv"
LABELS_FILE = "labels_info.json"
MAX_ERRORS_SHOWN = 5


@dataclass(frozen=True)
class Channel:
    """The rows of one channel, in file order."""

    path: Path
    """The CSV file read."""
    texts: list[str]
    labels: list[Any]
    """Raw labels: all ints, or all strings; for multi-label data, a tuple of label strings per row."""
    lines: list[int]
    """Line number (1-based) where each row starts, for messages."""
    names: dict[str, str]
    """Class names from labels_info.json, keyed by label value as a string (may be empty)."""
    fingerprint: str
    """sha256 of the file's bytes."""


@dataclass(frozen=True)
class ClassSet:
    """The classes of a task: `values[i]` is the label as in data.csv, `names[i]` what predictions show."""

    values: list[int | str]
    names: list[str]

    def index(self) -> dict[int | str, int]:
        return {v: i for i, v in enumerate(self.values)}


def _data_file(path: Path) -> Path:
    if path.is_dir():
        candidate = path / DATA_FILE
        if candidate.is_file():
            return candidate
        csvs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv")
        if len(csvs) == 1:  # a channel holding one CSV under another name is unambiguous
            return csvs[0]
        raise DataError(f"{path}: no {DATA_FILE} in this folder; put the training data in {candidate}")
    if path.is_file():
        return path
    raise DataError(f"{path}: no such file or folder; pass a folder holding {DATA_FILE} or a CSV file")


def text_encoding(head: bytes) -> str:
    """The encoding of a file starting with `head`: UTF-16 where its byte order mark says so (as some spreadsheet
    exports write it), else UTF-8, with or without a BOM."""
    return "utf-16" if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"


def _decode(path: Path, raw: bytes) -> str:
    if text_encoding(raw) == "utf-16":
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise DataError(f"{path}: the file starts as UTF-16 but does not decode as UTF-16; save it as UTF-8 "
                            "(for example: iconv -f utf-16 -t utf-8)") from None
    try:
        return raw.decode("utf-8-sig")  # SageMaker data often comes from Excel, which writes a BOM
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: the file is not valid UTF-8 (byte {raw[exc.start]:#04x}); "
            "save it as UTF-8 (for example: iconv -f latin1 -t utf-8)"
        ) from None


def is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def allow_any_field_size() -> None:
    """csv refuses fields over 128 KiB by default; a valid CSV field of any size is data (an e-mail with its
    attachments, a whole report), bounded only by memory, and truncated to max_seq_length tokens later."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _rows(path: Path, text: str) -> tuple[list[str], list[str], list[int]]:
    allow_any_field_size()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    labels: list[str] = []
    texts: list[str] = []
    lines: list[int] = []
    problems: list[str] = []
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines carry nothing
            if len(row) != 2:
                problems.append(f"line {line}: expected 2 columns (label,text) but found {len(row)}; "
                                + (_other_separator(row) or 'quote a text that contains commas: 1,"like, this"'))
                continue
            if not row[1].strip():
                problems.append(f"line {line}: the text is empty; remove the row or give it a text")
                continue
            labels.append(row[0].strip())
            texts.append(row[1])
            lines.append(line)
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}); check the quotes on that line") from None
    if problems:
        raise DataError(_problems(path, problems))
    return labels, texts, lines


def _other_separator(row: list[str]) -> str | None:
    """The fix for a one-column row that is a label and a text joined by another separator (a semicolon, as
    spreadsheets write CSV in many locales, a tab, a bar), or None."""
    if len(row) != 1:
        return None
    for separator, name in ((";", "a semicolon"), ("\t", "a tab"), ("|", "a bar")):
        label, found, text = row[0].partition(separator)
        if found and text.strip() and 0 < len(label.strip()) <= 64 and " " not in label.strip():
            return (f"the columns seem separated by {name}: data.csv separates the label from the text by a comma, "
                    'as in 1,"a text"')
    return None


def _problems(path: Path, problems: list[str]) -> str:
    shown = problems[:MAX_ERRORS_SHOWN]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    if len(problems) == 1:
        return f"{path}, {problems[0]}"
    return f"{path}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in shown) + more


def _typed_labels(path: Path, labels: list[str], lines: list[int]) -> list[int | str]:
    ints = [is_int(label) for label in labels]
    if all(ints):
        return [int(label) for label in labels]
    if not ints[0] and len(labels) > 1 and all(ints[1:]):
        raise DataError(
            f"{path}, line {lines[0]}: this looks like a header row ({labels[0]!r} is not a label); "
            "data.csv must have no header: delete the first line"
        )
    if not any(ints):
        return list(labels)  # names as labels: textfit's extension
    bad = [i for i, ok in enumerate(ints) if not ok]
    return _raise_mixed(path, labels, lines, bad)


def _raise_mixed(path: Path, labels: list[str], lines: list[int], bad: list[int]) -> list[int | str]:
    problems = [
        f"line {lines[i]}: label {labels[i]!r} is not an integer; labels must be all integers "
        "(class indices) or all class names"
        for i in bad
    ]
    raise DataError(_problems(path, problems))


def _names(path: Path) -> dict[str, str]:
    names_file = (path if path.is_dir() else path.parent) / LABELS_FILE
    if not names_file.is_file():
        return {}
    try:
        data = json.loads(names_file.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{names_file}: not valid JSON ({exc}); write an object such as {{\"0\": \"negative\"}}") from None
    except RecursionError:  # nesting deeper than Python's recursion limit
        raise DataError(f"{names_file}: the JSON nests too deeply; write an object such as "
                        "{\"0\": \"negative\"}") from None
    if isinstance(data, dict) and isinstance(data.get("labels"), list):
        data = data["labels"]  # the list form: class names in index order
    if isinstance(data, list):
        data = {str(i): name for i, name in enumerate(data)}
    if not isinstance(data, dict) or not all(isinstance(v, (str, int)) for v in data.values()):
        raise DataError(f"{names_file}: expected an object mapping label to name, such as {{\"0\": \"negative\"}}")
    return {str(k).strip(): str(v) for k, v in data.items()}


HEADER_WORDS = {"label", "labels", "class", "classes", "category", "categories", "tag", "tags", "target", "y"}


def _label_sets(path: Path, labels: list[str], lines: list[int], delimiter: str) -> list[tuple[str, ...]]:
    """Multi-label rows: each label field split at the delimiter, stripped, a repeated label counted once; an
    empty field is a row with none of the labels."""
    if labels and labels[0].lower() in HEADER_WORDS:
        raise DataError(f"{path}, line {lines[0]}: this looks like a header row ({labels[0]!r} is a column name); "
                        "data.csv must have no header: delete the first line")
    out, problems = [], []
    for field, line in zip(labels, lines):
        parts = [part.strip() for part in field.split(delimiter)] if field.strip() else []
        if any(not part for part in parts):
            problems.append(f"line {line}: the label field {field!r} has an empty label name between "
                            f"{delimiter!r} delimiters; remove the extra {delimiter!r}")
        out.append(tuple(dict.fromkeys(parts)))
    if problems:
        raise DataError(_problems(path, problems))
    return out


def _no_delimiters(path: Path, labels: list[str], lines: list[int], delimiter: str) -> None:
    """A single-label channel whose labels hold the multi-label delimiter was almost surely meant as multi-label."""
    for field, line in zip(labels, lines):
        if delimiter in field:
            raise DataError(f"{path}, line {line}: label {field!r} holds {delimiter!r}; for several labels per "
                            "text set multi_label=True (label_delimiter chooses the separator)")


def read_channel(path: str | Path, *, multi_label: bool = False, delimiter: str = "|") -> Channel:
    """Read a channel (a folder holding data.csv, or a CSV file) and check every row.

    With `multi_label`, each label field holds zero or more labels separated by `delimiter` ("billing|bug").

    >>> channel = read_channel("examples/sentiment")  # doctest: +SKIP
    """
    file = _data_file(Path(path))
    raw = file.read_bytes()
    if not raw.strip():
        raise DataError(f"{file}: the file is empty; it needs rows of label,text with no header")
    labels, texts, lines = _rows(file, _decode(file, raw))
    if not labels:
        raise DataError(f"{file}: no rows found; it needs rows of label,text with no header")
    if not multi_label:
        _no_delimiters(file, labels, lines, delimiter)
    return Channel(
        path=file,
        texts=texts,
        labels=_label_sets(file, labels, lines, delimiter) if multi_label else _typed_labels(file, labels, lines),
        lines=lines,
        names=_names(Path(path)),
        fingerprint=hashlib.sha256(raw).hexdigest(),
    )


def from_memory(texts: Sequence[object], labels: Sequence[object], *, what: str = "the data",
                multi_label: bool = False, delimiter: str = "|") -> Channel:
    """A channel of texts and labels held in memory (scikit-learn's fit(X, y)), checked as a file's rows are:
    row numbers stand in for line numbers in messages. Multi-label rows are lists of labels (or delimited
    strings, as in data.csv)."""
    if multi_label:
        labels = [label if isinstance(label, str) else delimiter.join(str(x) for x in label)  # type: ignore[union-attr]
                  for label in labels]
    if isinstance(texts, str):
        raise DataError(f"{what}: expected a list of texts, not a single string")
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise DataError(f"{what}: {len(texts)} texts but {len(labels)} labels; give one label per text")
    if not texts:
        raise DataError(f"{what}: no texts; give at least two classes of labelled texts")
    where = Path(f"<{what}>")
    problems = [f"row {i + 1}: the text is {'empty' if isinstance(t, str) else 'not a string'}"
                for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    problems += [f"row {i + 1}: label {label!r} is neither an integer nor a string"
                 for i, label in enumerate(labels) if isinstance(label, bool) or not isinstance(label, (int, str))]
    if problems:
        raise DataError(_problems(where, problems))
    rows = [str(label).strip() if not isinstance(label, int) else str(label) for label in labels]
    lines = list(range(1, len(texts) + 1))
    digest = hashlib.sha256(json.dumps([rows, texts], ensure_ascii=False).encode("utf-8")).hexdigest()
    typed = _label_sets(where, rows, lines, delimiter) if multi_label else _typed_labels(where, rows, lines)
    return Channel(path=where, texts=[str(t) for t in texts], labels=typed, lines=lines, names={}, fingerprint=digest)


def is_multi_label(channel: Channel) -> bool:
    return bool(channel.labels) and isinstance(channel.labels[0], tuple)


def _label_key(value: object) -> tuple[bool, int, str]:
    """Integers in numeric order, then names in text order (multi-label labels are strings: "10" after "9")."""
    text = str(value)
    digits = text.lstrip("-").isdigit()
    return (not digits, int(text) if digits else 0, text)


def class_set(train: Channel) -> ClassSet:
    """Classes in sorted label order; labels 1..n (JumpStart's UI) map to indices 0..n-1."""
    if is_multi_label(train):
        found = sorted({label for row in train.labels for label in row}, key=_label_key)
        if not found:
            raise DataError(f"{train.path}: no row has a label; multi-label data needs at least one label in use")
        return ClassSet(values=list(found), names=_class_names(train, list(found)))
    values = sorted(set(train.labels), key=lambda v: (isinstance(v, str), v))
    if len(values) < 2:
        raise DataError(
            f"{train.path}: every row has label {values[0]!r}; a classifier needs at least 2 classes"
        )
    return ClassSet(values=values, names=_class_names(train, values))


def _class_names(train: Channel, values: list[int | str]) -> list[str]:
    """Names from labels_info.json, keyed by label value or, when the keys are 0..K-1 and the labels are
    not (JumpStart's 1..n), by class index; classes without a name keep their label."""
    keys = set(train.names)
    if keys and not keys & {str(v) for v in values} or (
        keys >= {str(i) for i in range(len(values))} and not keys >= {str(v) for v in values}
    ):
        return [train.names.get(str(i), str(v)) for i, v in enumerate(values)]
    return [train.names.get(str(v), str(v)) for v in values]


def encode_labels(channel: Channel, classes: ClassSet, *, origin: str) -> list[Any]:
    """Class indices of a channel's rows (for multi-label data, a list of indices per row); a label outside
    `classes` is an error naming its line."""
    index = classes.index()
    if is_multi_label(channel):
        unknown_rows = [(line, label) for line, row in zip(channel.lines, channel.labels) for label in row
                        if label not in index]
        if unknown_rows:
            line, label = unknown_rows[0]
            raise DataError(f"{channel.path}, line {line}: label {label!r} is not among the labels of {origin} "
                            f"({', '.join(map(str, classes.values))}); remove it or add rows with it to the "
                            "training data")
        return [sorted(index[label] for label in row) for row in channel.labels]
    unknown = [(line, label) for line, label in zip(channel.lines, channel.labels) if label not in index]
    if unknown:
        seen = ", ".join(repr(v) for v in sorted({str(lbl) for _, lbl in unknown}))
        raise DataError(
            f"{channel.path}, line {unknown[0][0]}: label {unknown[0][1]!r} is not among the classes of {origin} "
            f"({', '.join(map(str, classes.values))}); unknown labels: {seen}. Remove those rows or add them "
            "to the training data"
        )
    return [index[label] for label in channel.labels]


def stratified_split(labels: list[int], ratio: float, seed: int, *, path: Path) -> tuple[list[int], list[int]]:
    """Row indices (train, validation): each class keeps its share in both, reproducibly for a seed."""
    counts = Counter(labels)
    n_val = round(ratio * len(labels))
    if n_val < 1:
        raise DataError(
            f"{path}: {len(labels)} rows are too few to hold out validation_split_ratio={ratio} "
            f"for validation (not one row); add rows, raise validation_split_ratio, or pass a validation channel"
        )
    if len(labels) - n_val < len(counts):
        raise DataError(
            f"{path}: validation_split_ratio={ratio} of {len(labels)} rows leaves {len(labels) - n_val} to train "
            f"on, fewer than the {len(counts)} classes; lower validation_split_ratio, add rows, or pass a "
            "validation channel"
        )
    quota = _quotas(counts, n_val)
    rng = random.Random(seed)
    train: list[int] = []
    val: list[int] = []
    for cls in sorted(counts):
        rows = [i for i, label in enumerate(labels) if label == cls]
        rng.shuffle(rows)
        val.extend(rows[: quota[cls]])
        train.extend(rows[quota[cls] :])
    return sorted(train), sorted(val)


def _quotas(counts: Counter[int], n_val: int) -> dict[int, int]:
    """Largest-remainder apportionment of n_val over classes, leaving each class at least one training row."""
    total = sum(counts.values())
    exact = {c: n_val * n / total for c, n in counts.items()}
    quota = {c: min(int(q), counts[c] - 1) for c, q in exact.items()}
    by_remainder = sorted(counts, key=lambda c: (exact[c] - int(exact[c]), counts[c]), reverse=True)
    for c in by_remainder:
        if sum(quota.values()) >= n_val:
            break
        if quota[c] < counts[c] - 1:
            quota[c] += 1
    return quota


def multi_label_split(rows: list[list[int]], n_labels: int, ratio: float, seed: int, *, path: Path
                      ) -> tuple[list[int], list[int]]:
    """(train, validation) row indices of multi-label rows, stratified by each row's rarest label (rows with no
    label form a stratum of their own), so that rare labels reach both sides as far as the data allows.

    Raises:
        DataError: a label would have no training row left; the message names it.
    """
    counts = Counter(label for row in rows for label in row)
    keys = [min(row, key=lambda label: (counts[label], label)) if row else -1 for row in rows]
    train, val = stratified_split(keys, ratio, seed, path=path)
    in_train = {label for i in train for label in rows[i]}
    missing = [label for label in range(n_labels) if label not in in_train]
    if missing:
        raise DataError(f"{path}: label index {missing[0]} has no training row once validation_split_ratio={ratio} "
                        "is held out; add rows with it, lower validation_split_ratio or pass a validation channel")
    return train, val
