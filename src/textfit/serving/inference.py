"""The inference contract in three steps: decode_request -> predict_proba -> encode_response (README: Serve).

SageMaker's algorithm takes one `application/x-text` string per request and answers `application/json`
(probabilities) or `application/json;verbose` (probabilities, labels, predicted_label). textfit also takes
batches for batch transform: a JSON list, JSON Lines, or CSV with one text a line. The server and
`textfit predict` (prediction.py) share these functions.

Response shapes, decided once:
- one text in (x-text, or a JSON string): one object, `{"probabilities": [...]}`, plus `labels` and
  `predicted_label` when verbose;
- a batch in: `application/json` gives a JSON list of those objects in input order; `application/jsonlines`
  one object a line; `text/csv` one line per text, the probabilities (verbose: the predicted label first).

In a batch transform (SAGEMAKER_BATCH), records come back one to one: each line of a JSON Lines or CSV body is a
record, a blank one included (answered `{"error": ...}`, or an empty CSV line, so that line n of the output is
line n of the input); under SINGLE_RECORD a body of one line is answered as one object; and a JSON Lines or CSV
answer ends without a newline, since the service's AssembleWith=Line adds one after each answer.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from textfit.errors import RequestError
from textfit.reports.records import record

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
    blank: tuple[int, ...] = ()
    """In a batch transform, the positions of blank lines among the records: answered as such, never classified."""


@dataclass(frozen=True)
class Accept:
    media_type: str
    verbose: bool
    explain: bool = False
    """`;explain`: each answer is verbose and has its `explanation` (word attributions, explain.py)."""

    @property
    def header(self) -> str:
        return self.media_type + (";verbose" if self.verbose else "") + (";explain" if self.explain else "")


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    kind, *params = (part.strip() for part in header.split(";"))
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip()
    return kind.lower(), parsed


# The charsets a body may name: text encodings that decode in linear time (codecs also holds transforms such
# as rot13 or zlib, and punycode, whose decoding is quadratic in the body's length).
CHARSETS = re.compile(r"utf-(8|16|32)(-[lb]e)?|ascii|iso8859-\d+|cp\d+|mac-\w+|koi8-\w+|euc_\w+|gb\w+|big5\w*|"
                      r"shift_jis\w*|iso2022_\w+|hz|johab|tis-620")


def _decode_text(body: bytes, charset: str | None = None) -> str:
    """The body as text: UTF-8 (a byte order mark dropped), or the charset its Content-Type names."""
    encoding = "utf-8-sig"
    if charset:
        try:
            name = codecs.lookup(charset.strip('"')).name
        except LookupError:
            name = ""
        if not CHARSETS.fullmatch(name):
            raise RequestError(415, f"unsupported charset {charset!r} in the Content-Type; send UTF-8 text (or "
                                    "UTF-16, Latin-1 and other common charsets, named there)")
        encoding = "utf-8-sig" if name == "utf-8" else name
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as exc:
        what = "UTF-8" if encoding == "utf-8-sig" else charset
        raise RequestError(400, f"the body is not valid {what} (byte {exc.start}); send UTF-8 text, or name the "
                                "body's charset in the Content-Type") from None


MAX_DIGITS = 100
"""Longest integer literal a JSON body may hold: no text needs one, and Python refuses 4,300 digits with an error."""

SURROGATE = re.compile(r"[\ud800-\udfff]")
"""A lone surrogate ("\\ud800"): only a JSON escape puts one in a text (decoding the body refuses them)."""


def _check(texts: list[str]) -> list[str]:
    """Each text on its own, before it can join anyone else's batch: not empty, and valid Unicode. The one check of
    a request's texts (predict_proba only sees that they are strings), and it copies none of them."""
    for i, text in enumerate(texts):
        if not text or text.isspace():
            raise RequestError(400, f"text {i + 1} of the request is empty; every text needs some content")
        bad = SURROGATE.search(text)
        if bad:
            raise RequestError(400, f"text {i + 1} of the request holds an invalid Unicode character "
                                    f"(U+{ord(bad.group()):04X} at position {bad.start()}, a lone surrogate); "
                                    "send valid UTF-8 text")
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


def _lines(text: str) -> list[str]:
    """The lines of a body as a line splitter cuts records (SageMaker's SplitType=Line, Python's universal
    newlines): at \n, \r\n or \r only, not at the other breaks str.splitlines knows (U+2028, U+0085, form
    feed), which may sit inside a text; a final newline ends the last line rather than starting one."""
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _from_lines(text: str, parse: Callable[[str, int], str], records: bool) -> Request:
    """A body of one text a line. `records` (a batch transform): every line is a record, a blank one too."""
    texts, blank = [], []
    for n, line in enumerate(_lines(text), start=1):
        if not line.strip():
            if records:
                blank.append(n - 1)
            continue
        texts.append(parse(line, n))
    return Request(texts, single=False, blank=tuple(blank))


def _jsonline(line: str, n: int) -> str:
    return _json_item(_loads(line, f"line {n}"), f"line {n}")


def _csvline(line: str, n: int) -> str:
    """A line that is one quoted CSV field is unquoted, any other line is the text as it is."""
    row = next(csv.reader([line]), [line])
    return row[0] if len(row) == 1 else line


def decode_request(body: bytes, content_type: str | None, batch_strategy: str | None = None) -> Request:
    """The texts of a request body. `batch_strategy` (MULTI_RECORD or SINGLE_RECORD) in a batch transform, whose
    records come back one to one (see the module's docstring); None for a real-time request.

    Raises:
        RequestError: 415 for an unsupported content type, 400 for an empty, non-UTF-8 or malformed body.
    """
    media_type, params = _media_type(content_type or X_TEXT)
    kind = CONTENT_TYPES.get(media_type)
    if kind is None:
        raise RequestError(415, f"unsupported Content-Type {content_type!r}; use one of {', '.join(CONTENT_TYPES)}")
    records = batch_strategy is not None and kind in (JSONLINES, CSV)
    if not body.strip() and not (records and body):
        raise RequestError(400, "the body is empty; send the text to classify")
    text = _decode_text(body, params.get("charset"))
    if kind == X_TEXT:
        request = Request([text], single=True)
    elif kind == JSON:
        request = _from_json(text)
    else:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a text of any size, within the body limit
        request = _from_lines(text, _jsonline if kind == JSONLINES else _csvline, records)
    if not request.texts and not request.blank:
        raise RequestError(400, "the body holds no text; send at least one")
    single = request.single or (batch_strategy == "SINGLE_RECORD" and len(request.texts) + len(request.blank) == 1)
    return Request(_check(request.texts), single, request.blank)


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
        verbose, explain = (key in params and params[key].lower() not in ("false", "0", "no")
                            for key in ("verbose", "explain"))
        candidates.append((-quality, i, kind, verbose, explain))
    for _, _, kind, verbose, explain in sorted(candidates):
        if kind in ("*/*", "application/*"):
            return negotiate(default)
        if kind in ("application/x-jsonlines", "application/jsonl"):
            kind = JSONLINES
        if explain and kind == CSV:
            continue  # an explanation is a list of words: JSON's, not a CSV line's
        if kind in ACCEPTS:
            return Accept(kind, verbose or explain, explain)
    raise RequestError(406, f"unsupported Accept {accept!r}; use application/json, application/json;verbose, "
                            "application/jsonlines or text/csv (each may add ;verbose; the JSON types ;explain)")


BLANK = "the line is blank; no text to classify"
"""The answer to a blank line of a batch transform's input."""


def encode_response(probabilities: np.ndarray, classes: list[str], accept: Accept, single: bool,
                    thresholds: list[float] | None = None, delimiter: str = "|", blank: tuple[int, ...] = (),
                    batch: bool = False, explained: list[dict[str, Any]] | None = None) -> tuple[bytes, str]:
    """(body, content type) for the predictions of a request, rows in input order, the records at the `blank`
    positions answered as blank lines. For a multi-label model the verbose CSV line starts with its predicted
    labels joined by `delimiter`. `batch`: a JSON Lines or CSV answer ends without a newline (AssembleWith=Line
    adds one after each answer). `explained`: the texts' records with their explanations, answered as they are."""
    rows: list[np.ndarray | None] = list(probabilities)
    for at in blank:
        rows.insert(at, None)
    given = iter(explained or [])
    records = [{"error": BLANK} if row is None else next(given) if explained is not None
               else record(row, classes, accept.verbose, thresholds) for row in rows]
    if accept.media_type in (CSV, JSONLINES):
        if accept.media_type == CSV:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for row, rec in zip(rows, records):
                if row is None:
                    out.write("\n")
                    continue
                first = []
                if accept.verbose:
                    first = [delimiter.join(rec["predicted_labels"]) if thresholds is not None
                             else rec["predicted_label"]]
                writer.writerow(first + [f"{float(p):.8g}" for p in row])
            body = out.getvalue()
        else:
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return (body[:-1] if batch else body).encode(), accept.header
    payload: Any = records[0] if single else records
    return json.dumps(payload, ensure_ascii=False).encode(), accept.header
