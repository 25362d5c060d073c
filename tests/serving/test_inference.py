from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from textfit.errors import RequestError
from textfit.reports.records import verbose_record
from textfit.serving.inference import Accept, decode_request, encode_response, negotiate

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
        ("caf\u00e9 cr\u00e8me".encode("latin-1"), "application/x-text; charset=ISO-8859-1", ["caf\u00e9 cr\u00e8me"],
         True),
        ('["caf\u00e9", "\u65e5\u672c"]'.encode("utf-16"), 'application/json; charset="utf-16"',
         ["caf\u00e9", "\u65e5\u672c"], False),
        ("\u65e5\u672c\u8a9e".encode("shift_jis"), "application/x-text;charset=Shift_JIS", ["\u65e5\u672c\u8a9e"], True),
        ("\ufeffa good film".encode(), "application/x-text; charset=utf-8", ["a good film"], True),
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
        (b"caf\xff", "application/x-text; charset=utf-8", 400, "not valid UTF-8"),
        (b"\xff\xfe\x00\xd8", "application/x-text; charset=utf-16", 400, "not valid utf-16"),
        (b"x", "application/x-text; charset=klingon", 415, "unsupported charset 'klingon'"),
        (b"x", "application/x-text; charset=rot13", 415, "unsupported charset"),
        (b"eJwLycgsVgCiRIXikqLMvHQAMNIFtA==", "application/x-text; charset=base64", 415, "unsupported charset"),
        (b"x" * 1000, "application/x-text; charset=punycode", 415, "unsupported charset"),
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


def test_classify_is_the_verbose_answer(tiny_artifact: Path) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    [answer] = clf.classify(["good great film"])
    assert answer["labels"] == clf.classes_ and answer["predicted_label"] == clf.predict(["good great film"])[0]
    np.testing.assert_allclose(answer["probabilities"], clf.predict_proba(["good great film"])[0], atol=1e-7)
