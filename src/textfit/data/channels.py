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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

from textfit.errors import DataError

DATA_FILE = "data.csv"
LABELS_FILE = "labels_info.json"
MAX_LINES_SHOWN = 3
"""Line numbers a message about many bad rows names before `...`."""


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
    problems = Problems(path)
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines carry nothing
            if len(row) != 2:
                _add_columns_problem(problems, line, row)
                continue
            if not row[1].strip():
                problems.add("empty text", line, "the text is empty; remove the row or give it a text",
                             rows="have an empty text", fix="remove them or give them a text")
                continue
            labels.append(row[0].strip())
            texts.append(row[1])
            lines.append(line)
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}); check the quotes on that line") from None
    problems.raise_any()
    return labels, texts, lines


def _add_columns_problem(problems: Problems, line: int, row: list[str]) -> None:
    """A row without exactly two columns: a label and a text joined by another separator, one column, or more."""
    separator = _other_separator(row)
    if separator is not None:
        fix = (f"the columns seem separated by {separator}: data.csv separates the label from the text by a comma, "
               'as in 1,"a text"')
        problems.add(("separator", separator), line, f"expected 2 columns (label,text) but found 1; {fix}",
                     rows="have one column", fix=fix)
        return
    quote = 'quote a text that contains commas: 1,"like, this"'
    problems.add(("columns", len(row)), line, f"expected 2 columns (label,text) but found {len(row)}; {quote}",
                 rows="have one column" if len(row) == 1 else f"have {len(row)} columns",
                 fix="each row needs label,text" if len(row) == 1 else quote)


def _other_separator(row: list[str]) -> str | None:
    """The separator that seems to join a one-column row's label and text (a semicolon, as spreadsheets write
    CSV in many locales, a tab, a bar), or None."""
    if len(row) != 1:
        return None
    for separator, name in ((";", "a semicolon"), ("\t", "a tab"), ("|", "a bar")):
        label, found, text = row[0].partition(separator)
        if found and text.strip() and 0 < len(label.strip()) <= 64 and " " not in label.strip():
            return name
    return None


@dataclass
class _Kind:
    detail: str
    """The whole message for a file with this one problem."""
    rows: str
    """What the rows of this kind have, after "40 rows": "have one column"."""
    fix: str
    lines: list[int]
    """The first line numbers, in file order (MAX_LINES_SHOWN of them and one more at most)."""
    count: int = 1


class Problems:
    """The rules a file's rows break, told in one line however many rows break them: a single problem in full
    (file, line, what, fix); many as the count of the most common kind with its first line numbers and fix, then
    how many other problems there are and the line of the first. Each kind keeps its count and first lines, not
    every row, so memory stays bounded on a file whose every row is wrong."""

    def __init__(self, path: Path, unit: str = "line") -> None:
        self.path, self.unit = path, unit
        self._kinds: dict[object, _Kind] = {}

    def add(self, kind: object, line: int, detail: str, *, rows: str, fix: str) -> None:
        """One bad row: `detail` says what and how to fix it; `rows` and `fix` say it for many rows of this kind."""
        found = self._kinds.get(kind)
        if found is None:
            self._kinds[kind] = _Kind(detail, rows, fix, [line])
            return
        found.count += 1
        if len(found.lines) <= MAX_LINES_SHOWN:
            found.lines.append(line)

    def __bool__(self) -> bool:
        return bool(self._kinds)

    def message(self) -> str:
        kinds = list(self._kinds.values())
        main = max(kinds, key=lambda kind: kind.count)  # of kinds as common, the first met
        if main.count == 1:
            lead = f"{self.path}, {self.unit} {main.lines[0]}: {main.detail}"
        else:
            shown = ", ".join(map(str, main.lines[:MAX_LINES_SHOWN])) + (", ..." if main.count > MAX_LINES_SHOWN else "")
            lead = f"{self.path}: {main.count} rows {main.rows} ({self.unit}s {shown}): {main.fix}"
        others = sum(kind.count for kind in kinds) - main.count
        if not others:
            return lead
        first = min(kind.lines[0] for kind in kinds if kind is not main)
        if others == 1:
            return f"{lead}; and 1 other problem ({self.unit} {first})"
        return f"{lead}; and {others} other problems (first at {self.unit} {first})"

    def raise_any(self) -> None:
        if self:
            raise DataError(self.message())


def _typed_labels(path: Path, labels: list[str], lines: list[int], first_text: str, *,
                  unit: str = "line") -> list[int | str]:
    ints = [is_int(label) for label in labels]
    if all(ints):
        return [int(label) for label in labels]
    _no_header(path, labels, lines, first_text, integers=True)
    if not any(ints):
        return list(labels)  # names as labels: textfit's extension
    return _raise_mixed(path, labels, lines, ints, unit)


def _raise_mixed(path: Path, labels: list[str], lines: list[int], ints: list[bool], unit: str) -> NoReturn:
    """Integers and names mixed: the rows of the fewer kind are the ones named (the names, if as many)."""
    names_wrong = sum(ints) * 2 >= len(ints)
    problems = Problems(path, unit)
    fix = "labels must be all integers (class indices) or all class names"
    for label, line, is_integer in zip(labels, lines, ints):
        if is_integer == names_wrong:
            continue
        if names_wrong:
            problems.add("name", line, f"label {label!r} is not an integer; {fix}",
                         rows="have a label that is not an integer", fix=fix)
        else:
            problems.add("integer", line, f"label {label!r} is an integer among class names; {fix}",
                         rows="have an integer label among class names", fix=fix)
    raise DataError(problems.message())  # ints holds both kinds, so the fewer kind has a row


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


LABEL_HEADERS = frozenset({"label", "labels", "class", "classes", "category", "categories", "tag", "tags", "target",
                           "y", "topic", "topics", "sentiment"})
"""Names a label column goes by in a header row."""
TEXT_HEADERS = frozenset({"text", "texts", "sentence", "sentences", "document", "review", "content", "message",
                          "comment", "tweet", "body"})
"""Names a text column goes by in a header row."""


def header_reason(label: str | None, text: str, later: Sequence[str | None], *, integers: bool = True) -> str | None:
    """Why the first row of a CSV is a header rather than data, or None: the one rule of `train` (data.csv must
    have no header) and `predict` (which skips one). `later` holds the labels of the rows after it (None for a
    row with no label column); a header needs rows after it, and is a row

    - with no label column whose text is a column name (`text`),
    - whose label is a word where the labels after it are integers (with `integers`: single-label data), or
    - whose label is a column name (`label`) that no later row uses.
    """
    if not later:
        return None
    if label is None:
        return f"{text.strip()!r} is a column name" if text.strip().lower() in TEXT_HEADERS else None
    label = label.strip()
    if integers and not is_int(label) and all(other is not None and is_int(other) for other in later):
        return f"{label!r} is not a label"
    if label.lower() in LABEL_HEADERS and all(other is None or other.strip() != label for other in later):
        return f"{label!r} is a column name"
    return None


def _no_header(path: Path, labels: list[str], lines: list[int], first_text: str, *, integers: bool) -> None:
    reason = header_reason(labels[0], first_text, labels[1:], integers=integers) if labels else None
    if reason is not None:
        raise DataError(f"{path}, line {lines[0]}: this looks like a header row ({reason}); "
                        "data.csv must have no header: delete the first line")


def _label_sets(path: Path, labels: list[str], lines: list[int], delimiter: str, first_text: str, *,
                unit: str = "line") -> list[tuple[str, ...]]:
    """Multi-label rows: each label field split at the delimiter, stripped, a repeated label counted once; an
    empty field is a row with none of the labels."""
    _no_header(path, labels, lines, first_text, integers=False)
    out, problems = [], Problems(path, unit)
    for field, line in zip(labels, lines):
        parts = [part.strip() for part in field.split(delimiter)] if field.strip() else []
        if any(not part for part in parts):
            problems.add("empty name", line, f"the label field {field!r} has an empty label name between "
                         f"{delimiter!r} delimiters; remove the extra {delimiter!r}",
                         rows=f"have an empty label name between {delimiter!r} delimiters",
                         fix=f"remove the extra {delimiter!r}")
        out.append(tuple(dict.fromkeys(parts)))
    problems.raise_any()
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
        labels=(_label_sets(file, labels, lines, delimiter, texts[0]) if multi_label
                else _typed_labels(file, labels, lines, texts[0])),
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
        labels = [label if isinstance(label, str) else delimiter.join(str(x) for x in cast(Iterable[object], label))
                  for label in labels]  # a row that is not a string is a list of labels
    if isinstance(texts, str):
        raise DataError(f"{what}: expected a list of texts, not a single string")
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise DataError(f"{what}: {len(texts)} texts but {len(labels)} labels; give one label per text")
    if not texts:
        raise DataError(f"{what}: no texts; give at least two classes of labelled texts")
    where = Path(f"<{what}>")
    problems = Problems(where, "row")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            what_text = "empty" if isinstance(t, str) else "not a string"
            problems.add(what_text, i + 1, f"the text is {what_text}", rows=f"have a text that is {what_text}",
                         fix="give each row a text")
    for i, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            problems.add("label type", i + 1, f"label {label!r} is neither an integer nor a string",
                         rows="have a label that is neither an integer nor a string",
                         fix="labels must be integers or strings")
    problems.raise_any()
    first = str(texts[0])  # every text is a string by now
    rows = [str(label).strip() if not isinstance(label, int) else str(label) for label in labels]
    lines = list(range(1, len(texts) + 1))
    digest = hashlib.sha256(json.dumps([rows, texts], ensure_ascii=False).encode("utf-8")).hexdigest()
    typed = (_label_sets(where, rows, lines, delimiter, first, unit="row") if multi_label
             else _typed_labels(where, rows, lines, first, unit="row"))
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


# Kept by hand, not sklearn's StratifiedShuffleSplit or train_test_split(stratify=...), which on the data textfit
# must split (scikit-learn 1.9) refuse a class with one row ("The least populated classes in y have only 1
# member"; 5/4/1 rows), refuse a validation part smaller than the classes ("The test_size = 2 should be greater or
# equal to the number of classes = 3"; 12 rows of 3 classes at 0.2), and can leave a class no training row (2/2/5
# rows at 0.7: 99 of the 3-class sets of 2-7 rows a class it accepts, over 4 ratios and 3 seeds). Where both
# split, each class's share in validation is the same (60/30/10 rows at 0.2: 12/6/2; tests/data/test_channels.py).
def _validation_size(n_rows: int, ratio: float, path: Path, n_classes: int = 0) -> int:
    """Rows to hold out: at least one, leaving at least as many training rows as `n_classes`."""
    n_val = round(ratio * n_rows)
    if n_val < 1:
        raise DataError(
            f"{path}: {n_rows} rows are too few to hold out validation_split_ratio={ratio} "
            f"for validation (not one row); add rows, raise validation_split_ratio, or pass a validation channel"
        )
    if n_rows - n_val < n_classes:
        raise DataError(
            f"{path}: validation_split_ratio={ratio} of {n_rows} rows leaves {n_rows - n_val} to train "
            f"on, fewer than the {n_classes} classes; lower validation_split_ratio, add rows, or pass a "
            "validation channel"
        )
    return n_val


def stratified_split(labels: list[int], ratio: float, seed: int, *, path: Path) -> tuple[list[int], list[int]]:
    """Row indices (train, validation): each class keeps its share in both, reproducibly for a seed."""
    counts = Counter(labels)
    quota = _quotas(counts, _validation_size(len(labels), ratio, path, len(counts)))
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
    """(train, validation) row indices of multi-label rows by iterative stratification (iterstrat; Sechidis et
    al., 2011): rows of the rarest labels are placed first, each where its labels are most wanted, so that every
    label keeps about its share on both sides. The validation part holds about `ratio` of the rows.

    Raises:
        DataError: too few rows to hold one out, no row left for validation, or a label with no training row;
            the message names it.
    """
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n_val = _validation_size(len(rows), ratio, path)
    matrix = np.zeros((len(rows), max(n_labels, 2)), dtype=np.int8)  # one label: a second, unused column keeps
    for i, row in enumerate(rows):                                   # it a multi-label target for scikit-learn
        matrix[i, row] = 1
    train, val = [], list(range(len(rows)))  # every row held out: iterstrat refuses; the label check says why
    if n_val < len(rows):
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        train, val = (part.tolist() for part in next(splitter.split(np.zeros(len(rows)), matrix)))
    if not val:
        raise DataError(f"{path}: stratified by label, validation_split_ratio={ratio} of {len(rows)} rows leaves "
                        "no row for validation; add rows, raise validation_split_ratio, or pass a validation channel")
    missing = np.flatnonzero(matrix[train, :n_labels].sum(axis=0) == 0)
    if len(missing):
        raise DataError(f"{path}: label index {missing[0]} has no training row once validation_split_ratio={ratio} "
                        "is held out; add rows with it, lower validation_split_ratio or pass a validation channel")
    return train, val
