"""Batch prediction of files (`textfit predict --input`): streamed, in input order, optionally over processes.

Records are read and predicted CHUNK at a time, so memory stays flat however long the file is; each output line
is the verbose response record of inference.py, plus the true label where the input has one and the input line
the record starts on (blank lines and a header row give no record).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from textfit.classifier import TextClassifier
from textfit.core.environment import thread_budget
from textfit.data.channels import allow_any_field_size, header_reason, text_encoding
from textfit.errors import DataError
from textfit.reports.records import verbose_record

log = logging.getLogger("textfit")

FILE_FORMATS = ("auto", "csv", "jsonl", "lines")
CHUNK = 1024
"""Records predicted at a time: memory stays flat however long the file is."""


@dataclass(frozen=True)
class InputRecord:
    text: str
    label: str | None
    line: int
    csv_row: bool = False
    """A row of a CSV file: the first may be a header."""


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".jsonlines": "jsonl", ".ndjson": "jsonl"}.get(suffix, "lines")


def _csv_records(lines: Iterator[str], path: Path) -> Iterator[InputRecord]:
    allow_any_field_size()
    reader = csv.reader(lines)
    start = 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) == 1:
            yield InputRecord(row[0], None, line, csv_row=True)
        elif len(row) == 2:
            yield InputRecord(row[1], row[0].strip(), line, csv_row=True)
        else:
            raise DataError(f"{path}, line {line}: expected a text, or label,text, but found {len(row)} columns; "
                            'quote a text that contains commas: "like, this"')


def _jsonl_records(lines: Iterator[str], path: Path) -> Iterator[InputRecord]:
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg}); write one JSON value a line") from None
        except RecursionError:  # nesting deeper than Python's recursion limit
            raise DataError(f'{path}, line {n}: the JSON nests too deeply; write a string or {{"text": "..."}}'
                            ) from None
        if isinstance(item, str):
            yield InputRecord(item, None, n)
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            label = item.get("label")
            yield InputRecord(item["text"], None if label is None else str(label), n)
        else:
            raise DataError(f'{path}, line {n}: expected a string or {{"text": "..."}}; got {line.strip()[:60]!r}')


def read_records(path: Path, fmt: str = "auto") -> Iterator[InputRecord]:
    """Stream the records of a prediction input file (CSV, JSON Lines or plain lines)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the file of texts to classify")
    kind = _format_of(path, fmt)
    with path.open("rb") as f:
        encoding = text_encoding(f.read(2))
    with path.open(encoding=encoding, newline="" if kind == "csv" else None, errors="strict") as f:
        try:
            if kind == "csv":
                yield from _csv_records(f, path)
            elif kind == "jsonl":
                yield from _jsonl_records(f, path)
            else:
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        yield InputRecord(line.rstrip("\r\n"), None, n)
        except UnicodeDecodeError:
            what = "UTF-16" if encoding == "utf-16" else "UTF-8"
            raise DataError(f"{path}: the file is not valid {what}; save it as UTF-8") from None


def _chunks(records: Iterator[InputRecord], size: int) -> Iterator[list[InputRecord]]:
    chunk: list[InputRecord] = []
    for rec in records:
        if not rec.text.strip():
            raise DataError(f"line {rec.line}: the text is empty; remove the line or give it a text")
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class PredictionSummary:
    records: int = 0
    labelled: int = 0
    correct: int = 0
    truncated: int = 0
    """Texts longer than max_seq_length tokens, of which only the first max_seq_length counted."""

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def _header(classifier: TextClassifier, chunk: list[InputRecord]) -> str | None:
    """Why the first row of a CSV is a header, by the rule `train` applies to data.csv (channels.header_reason,
    on the rows after it), or None. A label that is a class of the model is data, and so is a multi-label
    model's label field."""
    first = chunk[0]
    if first.line != 1 or not first.csv_row:
        return None
    if first.label is not None and (classifier.multi_label_ or classifier.class_index(first.label) is not None):
        return None
    return header_reason(first.label, first.text, [r.label for r in chunk[1:6]])


def predict_file(classifier: TextClassifier, records: Iterator[InputRecord], out: IO[str], *,
                 long_texts: str | None = None, progress: Any = None, explain: str | None = None,
                 explain_words: int = 64) -> PredictionSummary:
    """Write one JSON line per record, in input order; with labels in the input, count the correct ones.
    `explain`: each record also has its `explanation` (word attributions) by that method ("auto":
    Predicting.explain's default), occlusion leaving out up to `explain_words` words or groups of words a text."""
    summary, counts = PredictionSummary(), {"truncated": 0}
    for n, chunk in enumerate(_chunks(records, CHUNK)):
        reason = _header(classifier, chunk) if n == 0 else None
        if reason is not None:
            log.info("line %d looks like a header row (%s); it is skipped", chunk[0].line, reason)
            chunk = chunk[1:]
        texts = [r.text for r in chunk]
        if explain is not None:
            results = classifier.explain(texts, method=None if explain == "auto" else explain,
                                         max_words=explain_words, long_texts=long_texts)
        else:
            probs = classifier.predict_proba(texts, long_texts=long_texts, counts=counts)
            results = [verbose_record(row, classifier.classes_, classifier.thresholds_) for row in probs]
        summary.truncated = counts["truncated"]
        for rec, result in zip(chunk, results):
            if rec.label is not None:
                summary.labelled += 1
                if classifier.multi_label_:  # right when the predicted set is the true set
                    names = [part.strip() for part in rec.label.split(classifier.label_delimiter_) if part.strip()]
                    indices = [classifier.class_index(name) for name in names]
                    truth = sorted(classifier.classes_[i] if i is not None else name
                                   for i, name in zip(indices, names))
                    result["labels_true"] = truth
                    summary.correct += int(truth == sorted(result["predicted_labels"]))
                else:
                    index = classifier.class_index(rec.label)
                    single = None if index is None else classifier.classes_[index]
                    result["label"] = single if single is not None else rec.label
                    summary.correct += int(single == result["predicted_label"])
            result["line"] = rec.line  # blank lines and a header row have no record: this says which line it is
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        summary.records += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    return summary


def _shard(records: Iterator[InputRecord], start: int, stop: int) -> Iterator[InputRecord]:
    for i, rec in enumerate(records):
        if i >= stop:
            return
        if i >= start:
            yield rec


def _predict_shard(model: str, path: str, fmt: str, start: int, stop: int, part: str, backend: str,
                   quantized: bool, long_texts: str | None, threads: int) -> tuple[int, int, int, int]:
    """One worker process: its contiguous range of records, to its own part file."""
    import torch

    from textfit.jobs.train import load

    torch.set_num_threads(threads)
    clf = load(model, backend=backend, quantized=quantized, threads=threads)
    with open(part, "w", encoding="utf-8") as out:
        summary = predict_file(clf, _shard(read_records(Path(path), fmt), start, stop), out, long_texts=long_texts)
    return summary.records, summary.labelled, summary.correct, summary.truncated


def predict_file_parallel(model: str, path: Path, fmt: str, out: IO[str], workers: int, *, backend: str = "torch",
                          quantized: bool = False, long_texts: str | None = None) -> PredictionSummary:
    """Shard a large input over worker processes (contiguous ranges of records) and write one output in order."""
    import concurrent.futures
    import multiprocessing
    import tempfile

    total = sum(1 for _ in read_records(path, fmt))  # a cheap pass that also checks every record first
    bounds = [round(i * total / workers) for i in range(workers + 1)]
    threads = max(1, thread_budget() // workers)  # OMP_NUM_THREADS, where set, is the budget
    summary = PredictionSummary()
    with tempfile.TemporaryDirectory(prefix="textfit-predict-") as tmp:
        parts = [str(Path(tmp) / f"part-{i}.jsonl") for i in range(workers)]
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_predict_shard, model, str(path), fmt, bounds[i], bounds[i + 1], parts[i], backend,
                                   quantized, long_texts, threads) for i in range(workers)]
            for future in futures:
                records, labelled, correct, truncated = future.result()
                summary.records += records
                summary.labelled += labelled
                summary.correct += correct
                summary.truncated += truncated
        for part in parts:  # the parts in input order make the output
            with open(part, encoding="utf-8") as f:
                for line in f:
                    out.write(line)
    return summary
