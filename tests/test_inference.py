from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from textfit.errors import DataError, RequestError
from textfit.inference import (
    Accept,
    decode_request,
    encode_response,
    negotiate,
    predict_file,
    read_records,
    verbose_record,
)

CLASSES = ["negative", "positive"]
PROBS = np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32)


@pytest.mark.parametrize(
    ("body", "content_type", "texts", "single"),
    [
        (b"a good film", "application/x-text", ["a good film"], True),
        (b"a good film", "application/x-text; charset=utf-8", ["a good film"], True),
        (b"a good film", None, ["a good film"], True),
        (b'"a good film"', "application/json", ["a good film"], True),
        (b'["one", "two"]', "application/json", ["one", "two"], False),
        (b'{"instances": ["one", {"text": "two"}]}', "application/json", ["one", "two"], False),
        (b'{"text": "one"}\n"two"\n\n', "application/jsonlines", ["one", "two"], False),
        (b'one, with a comma\n"two"\n', "text/csv", ["one, with a comma", "two"], False),
    ],
)
def test_decode_request(body: bytes, content_type: str | None, texts: list[str], single: bool) -> None:
    request = decode_request(body, content_type)
    assert request.texts == texts and request.single is single


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"x", "image/png", 415, "unsupported Content-Type"),
        (b"", "application/x-text", 400, "the body is empty"),
        (b"caf\xe9", "application/x-text", 400, "not valid UTF-8"),
        (b"[1, 2]", "application/json", 400, "item 1 is not a text"),
        (b"{oops", "application/json", 400, "not valid JSON"),
        (b"[]", "application/json", 400, "non-empty list"),
        (b'["ok", "  "]', "application/json", 400, "text 2 of the request is empty"),
        (b"{bad\n", "application/jsonlines", 400, "line 1 is not valid JSON"),
    ],
)
def test_bad_requests(body: bytes, content_type: str, status: int, message: str) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(body, content_type)
    assert info.value.status == status and message in str(info.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, Accept("application/json", False)),
        ("*/*", Accept("application/json", False)),
        ("application/json;verbose", Accept("application/json", True)),
        ("application/jsonlines", Accept("application/jsonlines", False)),
        ("text/html;q=0.9, text/csv;verbose;q=0.5", Accept("text/csv", True)),
        ("application/xml, application/json;q=0.1", Accept("application/json", False)),
    ],
)
def test_negotiate(header: str | None, expected: Accept) -> None:
    assert negotiate(header) == expected


def test_unsupported_accept_is_406() -> None:
    with pytest.raises(RequestError) as info:
        negotiate("application/xml")
    assert info.value.status == 406


def test_single_text_responses() -> None:
    body, kind = encode_response(PROBS[:1], CLASSES, Accept("application/json", True), single=True)
    assert kind == "application/json;verbose"
    assert json.loads(body) == {"probabilities": pytest.approx([0.2, 0.8]), "labels": CLASSES,
                                "predicted_label": "positive"}
    body, _ = encode_response(PROBS[:1], CLASSES, Accept("application/json", False), single=True)
    assert json.loads(body) == {"probabilities": pytest.approx([0.2, 0.8])}


def test_batch_responses_keep_input_order() -> None:
    body, _ = encode_response(PROBS, CLASSES, Accept("application/json", True), single=False)
    assert [r["predicted_label"] for r in json.loads(body)] == ["positive", "negative"]
    body, _ = encode_response(PROBS, CLASSES, Accept("application/jsonlines", False), single=False)
    assert [json.loads(line)["probabilities"][0] for line in body.decode().splitlines()] == pytest.approx([0.2, 0.9])
    body, kind = encode_response(PROBS, CLASSES, Accept("text/csv", True), single=False)
    assert kind == "text/csv;verbose" and body.decode().splitlines() == ["positive,0.2,0.80000001", "negative,0.89999998,0.1"]


def test_verbose_record_is_sagemakers_shape() -> None:
    assert set(verbose_record(PROBS[0], CLASSES)) == {"probabilities", "labels", "predicted_label"}


def test_read_records_in_every_format(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('1,"good, very good"\n0,bad\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "good", "label": 1}\n"bad"\n', encoding="utf-8")
    (tmp_path / "c.txt").write_text("good\n\nbad\n", encoding="utf-8")
    assert [(r.text, r.label) for r in read_records(tmp_path / "a.csv")] == [("good, very good", "1"), ("bad", "0")]
    assert [(r.text, r.label) for r in read_records(tmp_path / "b.jsonl")] == [("good", "1"), ("bad", None)]
    assert [(r.text, r.line) for r in read_records(tmp_path / "c.txt")] == [("good", 1), ("bad", 3)]


def test_read_records_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("good\n1,bad,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.csv, line 2: expected a text, or label,text"):
        list(read_records(tmp_path / "a.csv"))
    (tmp_path / "b.jsonl").write_text('"ok"\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b.jsonl, line 2: expected a string"):
        list(read_records(tmp_path / "b.jsonl"))


def test_predict_file_streams_in_order_and_scores_labels(tiny_artifact: Path, tmp_path: Path) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    texts = [" ".join(["good great lovely", "bad awful poor"][i % 2].split()[: 1 + i % 3]) for i in range(2500)]
    rows = [f"{1 - i % 2},{t}" for i, t in enumerate(texts)]  # labels: 1 for the good texts
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = io.StringIO()
    summary = predict_file(clf, read_records(tmp_path / "in.csv"), out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == summary.records == summary.labelled == 2500  # more than one chunk of 1024
    expected = clf.predict_proba(texts)
    np.testing.assert_allclose([r["probabilities"] for r in records], expected, atol=1e-5)
    assert [r["label"] for r in records[:2]] == ["1", "0"]
    assert summary.correct == sum(r["label"] == r["predicted_label"] for r in records)


def test_predict_file_streams(tiny_artifact: Path) -> None:
    """Records are pulled a chunk at a time: the first output is written before the input is exhausted."""
    from textfit import TextClassifier
    from textfit.inference import CHUNK, InputRecord

    clf = TextClassifier.load(tiny_artifact)
    pulled = 0

    def endless() -> Iterator[InputRecord]:
        nonlocal pulled
        while True:
            pulled += 1
            yield InputRecord("good film", None, pulled)

    class StopAfterFirstChunk(io.StringIO):
        def write(self, s: str) -> int:
            raise StopIteration(pulled)

    with pytest.raises(StopIteration) as info:
        predict_file(clf, endless(), StopAfterFirstChunk())
    assert info.value.value == CHUNK  # not a record more than one chunk was read


def test_classify_is_the_verbose_answer(tiny_artifact: Path) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    [answer] = clf.classify(["good great film"])
    assert answer["labels"] == clf.classes_ and answer["predicted_label"] == clf.predict(["good great film"])[0]
    np.testing.assert_allclose(answer["probabilities"], clf.predict_proba(["good great film"])[0], atol=1e-7)


def test_predict_with_workers_writes_one_output_in_order(tiny_artifact: Path, tmp_path: Path) -> None:
    from textfit.cli import main

    texts = [" ".join(["good great", "bad awful", "lovely", "poor sad"][i % 4].split()) + f" film {i % 7}"
             for i in range(301)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["-q", "predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "two.jsonl"), "--workers", "2"]) == 0
    assert main(["-q", "predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "one.jsonl")]) == 0
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(two) == 301
    np.testing.assert_allclose([r["probabilities"] for r in two], [r["probabilities"] for r in one], atol=1e-5)
