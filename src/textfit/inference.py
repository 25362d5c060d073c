"""The inference contract in three steps: decode_request -> predict_proba -> encode_response (spec §8-§10).

SageMaker's algorithm takes one `application/x-text` string per request and answers `application/json`
(probabilities) or `application/json;verbose` (probabilities, labels, predicted_label). textfit also takes
batches for batch transform: a JSON list, JSON Lines, or CSV with one text a line. The server and
`textfit predict` share these functions.

Response shapes, decided once:
- one text in (x-text, or a JSON string): one object, `{"probabilities": [...]}`, plus `labels` and
  `predicted_label` when verbose;
- a batch in: `application/json` gives a JSON list of those objects in input order; `application/jsonlines`
  one object a line; `text/csv` one line per text, the probabilities (verbose: the predicted label first).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from textfit.errors import DataError, RequestError

if TYPE_CHECKING:
    from textfit.classifier import TextClassifier

X_TEXT = "application/x-text"
JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
CONTENT_TYPES = {X_TEXT: X_TEXT, "text/plain": X_TEXT, JSON: JSON, JSONLINES: JSONLINES,
                 "application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES, CSV: CSV}
ACCEPTS = (JSON, JSONLINES, CSV)


@dataclass(frozen=True)
class Request:
    texts: list[str]
    single: bool
    """True when the body held one text (x-text or a JSON string): the response is one object, not a list."""


@dataclass(frozen=True)
class Accept:
    media_type: str
    verbose: bool

    @property
    def header(self) -> str:
        return self.media_type + (";verbose" if self.verbose else "")


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    kind, *params = (part.strip() for part in header.split(";"))
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip()
    return kind.lower(), parsed


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 text") from None


MAX_DIGITS = 100
"""Longest integer literal a JSON body may hold: no text needs one, and Python refuses 4,300 digits with an error."""


def _check(texts: list[str]) -> list[str]:
    """Each text on its own, before it can join anyone else's batch: not empty, and valid Unicode."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise RequestError(400, f"text {i + 1} of the request is empty; every text needs some content")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate ("\\ud800") from a JSON escape
            raise RequestError(400, f"text {i + 1} of the request holds an invalid Unicode character "
                                    f"(U+{ord(text[exc.start]):04X} at position {exc.start}, a lone surrogate); "
                                    "send valid UTF-8 text") from None
    return texts


def _bounded_int(literal: str) -> int:
    if len(literal) > MAX_DIGITS:
        raise ValueError(f"a number of {len(literal)} digits (at most {MAX_DIGITS})")
    return int(literal)


def _loads(text: str, where: str) -> Any:
    """json.loads with every failure a 400: syntax, nesting beyond Python's recursion limit, huge numbers."""
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"{where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise RequestError(400, f"{where} nests JSON too deeply; send a flat list of texts") from None
    except ValueError as exc:
        raise RequestError(400, f"{where} is not usable JSON ({exc}); send texts as strings") from None


def _json_item(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise RequestError(400, f'{where} is not a text; send a string or {{"text": "..."}}')


def _from_json(text: str) -> Request:
    data = _loads(text, "the body")
    if isinstance(data, dict) and isinstance(data.get("instances", data.get("inputs")), (list, str)):
        data = data.get("instances", data.get("inputs"))  # the TensorFlow Serving / SageMaker SDK shapes
    if isinstance(data, str) or (isinstance(data, dict) and "text" in data):
        return Request([_json_item(data, "the body")], single=True)
    if not isinstance(data, list) or not data:
        raise RequestError(400, 'expected a JSON string, a non-empty list of strings, or {"instances": [...]}')
    return Request([_json_item(item, f"item {i + 1}") for i, item in enumerate(data)], single=False)


def _from_jsonlines(text: str) -> Request:
    texts = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = _loads(line, f"line {n}")
        texts.append(_json_item(item, f"line {n}"))
    return Request(texts, single=False)


def _from_csv(text: str) -> Request:
    """One text a line; a line that is one quoted CSV field is unquoted, any other line is the text as it is."""
    texts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = next(csv.reader([line]), [line])
        texts.append(row[0] if len(row) == 1 else line)
    return Request(texts, single=False)


def decode_request(body: bytes, content_type: str | None) -> Request:
    """The texts of a request body.

    Raises:
        RequestError: 415 for an unsupported content type, 400 for an empty, non-UTF-8 or malformed body.
    """
    kind = CONTENT_TYPES.get(_media_type(content_type or X_TEXT)[0])
    if kind is None:
        raise RequestError(415, f"unsupported Content-Type {content_type!r}; use one of {', '.join(CONTENT_TYPES)}")
    if not body.strip():
        raise RequestError(400, "the body is empty; send the text to classify")
    text = _decode_text(body)
    if kind == X_TEXT:
        request = Request([text], single=True)
    elif kind == JSON:
        request = _from_json(text)
    elif kind == JSONLINES:
        request = _from_jsonlines(text)
    else:
        request = _from_csv(text)
    if not request.texts:
        raise RequestError(400, "the body holds no text; send at least one")
    return Request(_check(request.texts), request.single)


def negotiate(accept: str | None, default: str = JSON) -> Accept:
    """The response type for an Accept header: the first supported by quality; 406 when none is."""
    if not accept or not accept.strip():
        accept = default
    candidates = []
    for i, part in enumerate(accept.split(",")):
        kind, params = _media_type(part)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 0.0
        verbose = "verbose" in params and params["verbose"].lower() not in ("false", "0", "no")
        candidates.append((-quality, i, kind, verbose))
    for _, _, kind, verbose in sorted(candidates):
        if kind in ("*/*", "application/*"):
            return negotiate(default)
        if kind in ("application/x-jsonlines", "application/jsonl"):
            kind = JSONLINES
        if kind in ACCEPTS:
            return Accept(kind, verbose)
    raise RequestError(406, f"unsupported Accept {accept!r}; use application/json, application/json;verbose, "
                            "application/jsonlines or text/csv (each may add ;verbose)")


def verbose_record(probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """SageMaker's `application/json;verbose` response for one text."""
    probs = [float(p) for p in probabilities]
    return {"probabilities": probs, "labels": list(classes), "predicted_label": classes[int(np.argmax(probs))]}


def record(probabilities: np.ndarray, classes: list[str], verbose: bool) -> dict[str, Any]:
    return verbose_record(probabilities, classes) if verbose else {"probabilities": [float(p) for p in probabilities]}


def encode_response(probabilities: np.ndarray, classes: list[str], accept: Accept, single: bool) -> tuple[bytes, str]:
    """(body, content type) for the predictions of a request, rows in input order."""
    records = [record(row, classes, accept.verbose) for row in probabilities]
    if accept.media_type == CSV:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for row, rec in zip(probabilities, records):
            writer.writerow(([rec["predicted_label"]] if accept.verbose else []) + [f"{float(p):.8g}" for p in row])
        return out.getvalue().encode(), accept.header
    if accept.media_type == JSONLINES:
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return body.encode(), accept.header
    payload: Any = records[0] if single else records
    return json.dumps(payload, ensure_ascii=False).encode(), accept.header


# ---------------------------------------------------------------------------------------------- batch files

FILE_FORMATS = ("auto", "csv", "jsonl", "lines")
CHUNK = 1024
"""Records predicted at a time: memory stays flat however long the file is."""


@dataclass(frozen=True)
class InputRecord:
    text: str
    label: str | None
    line: int


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".jsonlines": "jsonl", ".ndjson": "jsonl"}.get(suffix, "lines")


def _csv_records(lines: Iterator[str], path: Path) -> Iterator[InputRecord]:
    reader = csv.reader(lines)
    start = 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) == 1:
            yield InputRecord(row[0], None, line)
        elif len(row) == 2:
            yield InputRecord(row[1], row[0].strip(), line)
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
    with path.open(encoding="utf-8-sig", newline="" if kind == "csv" else None, errors="strict") as f:
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
            raise DataError(f"{path}: the file is not valid UTF-8; save it as UTF-8") from None


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

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def predict_file(classifier: TextClassifier, records: Iterator[InputRecord], out: IO[str], *,
                 long_texts: str = "truncate", progress: Any = None) -> PredictionSummary:
    """Write one JSON line per record, in input order; with labels in the input, count the correct ones."""
    summary = PredictionSummary()
    for chunk in _chunks(records, CHUNK):
        probs = classifier.predict_proba([r.text for r in chunk], long_texts=long_texts)
        for rec, row in zip(chunk, probs):
            result = verbose_record(row, classifier.classes_)
            if rec.label is not None:
                index = classifier.class_index(rec.label)
                truth = None if index is None else classifier.classes_[index]
                result["label"] = truth if truth is not None else rec.label
                summary.labelled += 1
                summary.correct += int(truth == result["predicted_label"])
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
                   quantized: bool, long_texts: str, threads: int) -> tuple[int, int, int]:
    """One worker process: its contiguous range of records, to its own part file."""
    import torch

    from textfit.classifier import load

    torch.set_num_threads(threads)
    clf = load(model, backend=backend, quantized=quantized, threads=threads)
    with open(part, "w", encoding="utf-8") as out:
        summary = predict_file(clf, _shard(read_records(Path(path), fmt), start, stop), out, long_texts=long_texts)
    return summary.records, summary.labelled, summary.correct


def predict_file_parallel(model: str, path: Path, fmt: str, out: IO[str], workers: int, *, backend: str = "torch",
                          quantized: bool = False, long_texts: str = "truncate") -> PredictionSummary:
    """Shard a large input over worker processes (contiguous ranges of records) and write one output in order."""
    import concurrent.futures
    import multiprocessing
    import os
    import tempfile

    total = sum(1 for _ in read_records(path, fmt))  # a cheap pass that also checks every record first
    bounds = [round(i * total / workers) for i in range(workers + 1)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    summary = PredictionSummary()
    with tempfile.TemporaryDirectory(prefix="textfit-predict-") as tmp:
        parts = [str(Path(tmp) / f"part-{i}.jsonl") for i in range(workers)]
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_predict_shard, model, str(path), fmt, bounds[i], bounds[i + 1], parts[i], backend,
                                   quantized, long_texts, threads) for i in range(workers)]
            for future in futures:
                records, labelled, correct = future.result()
                summary.records += records
                summary.labelled += labelled
                summary.correct += correct
        for part in parts:  # the parts in input order make the output
            with open(part, encoding="utf-8") as f:
                for line in f:
                    out.write(line)
    return summary
