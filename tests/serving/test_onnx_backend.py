"""The ONNX Runtime back end: the server's default, which runs without torch and answers what PyTorch answers."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import TOKENIZER_CORPUS, build_bpe_tokenizer, build_unigram_tokenizer
from textfit import TextClassifier
from textfit.serving.server import ServeSettings, create_app

GOOD, BAD = "the film was good and great", "the plot was bad and awful"
TEXTS = [GOOD, BAD, "good", "the very long plot was really quite awful and the acting was bad " * 3]


@pytest.fixture
def onnx(tiny_artifact: Path) -> TextClassifier:
    return TextClassifier.load(tiny_artifact, backend="onnx")


def test_a_server_on_onnx_runtime_never_imports_torch(tiny_artifact: Path) -> None:
    """`textfit serve`'s path (the CLI module, create_app, a load on ONNX Runtime) in a fresh process: neither
    torch nor transformers nor scikit-learn (with scipy and pandas) is imported, which is most of a cold start."""
    code = f"""
import json, sys, time
import textfit.cli
from starlette.testclient import TestClient
from textfit.predictor import Predictor
from textfit.serving.server import create_app

app = create_app(lambda: Predictor.load({str(tiny_artifact)!r}, backend="onnx"))
with TestClient(app) as client:
    while client.get("/ping").status_code != 200:
        time.sleep(0.01)
    statuses = [client.post("/invocations", content=body, headers={{"Content-Type": kind}}).status_code
                for body, kind in [("a good film", "application/x-text"), (json.dumps(["good", "bad"] * 40),
                                   "application/json"), ("good\\nbad\\n", "text/csv")]]
heavy = {{"torch", "transformers", "sklearn", "scipy", "pandas"}}
print(statuses, sorted({{m.split(".")[0] for m in sys.modules}} & heavy))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[200, 200, 200] []"


def test_a_changed_graph_is_refused_and_the_weights_still_checked(tiny_artifact: Path, tmp_path: Path) -> None:
    """The graph's digest is computed while ONNX Runtime reads it: a graph that still loads but differs from the
    one saved (a byte of its weights changed) is refused; so is an artifact whose PyTorch weights are damaged,
    though a server on the graph never reads them."""
    from textfit.errors import ArtifactError
    from textfit.predictor import Predictor

    edited = tmp_path / "edited"
    shutil.copytree(tiny_artifact, edited)
    graph = edited / "onnx" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the initializers: ONNX Runtime loads it, with one weight changed
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"onnx/model.onnx has changed since it was saved"):
        Predictor.load(edited)
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_artifact, damaged)
    weights = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ArtifactError, match="model.safetensors has changed"):
        Predictor.load(damaged)
    assert Predictor.load(tiny_artifact).predict([GOOD, BAD]) == TextClassifier.load(tiny_artifact).predict([GOOD, BAD])


def test_onnx_and_torch_agree(tiny_artifact: Path, onnx: TextClassifier) -> None:
    torch_clf = TextClassifier.load(tiny_artifact)
    expected = torch_clf.predict_proba(TEXTS)
    # in one padded batch, and one by one (no padding): the exported graph must honour the attention mask
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), expected, atol=1e-4)
    np.testing.assert_allclose(np.vstack([onnx.predict_proba([t]) for t in TEXTS]), expected, atol=1e-4)
    # and grouped by length into batches of 2, windows included
    np.testing.assert_allclose(onnx.predict_proba(TEXTS, batch_size=2), expected, atol=1e-4)
    np.testing.assert_allclose(onnx.predict_proba(TEXTS, long_texts="window"),
                               torch_clf.predict_proba(TEXTS, long_texts="window"), atol=1e-4)


def test_the_onnx_tokenizer_gives_autotokenizers_ids(tiny_artifact: Path, onnx: TextClassifier) -> None:
    """The ONNX side reads tokenizer.json through transformers' generic fast tokenizer (no torch import);
    AutoTokenizer's class gives the same ids, truncated and in windows."""
    reference = TextClassifier.load(tiny_artifact).tokenizer_
    texts = [*TEXTS, "Good, GREAT film!", "unknown words here"]
    for options in ({"truncation": True, "max_length": 8},
                    {"truncation": True, "max_length": 8, "stride": 2, "return_overflowing_tokens": True}):
        ours, theirs = onnx.tokenizer_(texts, **options), reference(texts, **options)
        assert ours["input_ids"] == theirs["input_ids"]
        assert ours.get("overflow_to_sample_mapping") == theirs.get("overflow_to_sample_mapping")
    assert onnx.tokenizer_.pad_token_id == reference.pad_token_id


def test_a_large_request_in_slices_among_others_gets_its_rows_in_order(onnx: TextClassifier,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A request of 10 texts, with batches of 4, queued behind a batch that is held while three one-text requests
    arrive: its slices share batches with them, and its rows come back in its own order."""
    big = [" ".join(["good", "bad", "great", "awful", "film", "plot"][j % 6] for j in range(i, i + 1 + i % 4))
           for i in range(10)]
    smalls = [GOOD, BAD, "good film"]
    predict, release, batches = onnx.log_scores, threading.Event(), []

    def held(texts: list[str], **kw: object) -> np.ndarray:
        release.wait(10)
        batches.append(list(texts))
        return predict(texts, **kw)

    monkeypatch.setattr(onnx, "log_scores", held)
    with TestClient(create_app(onnx, ServeSettings(max_batch=4, max_wait_ms=0))) as c:
        def send(texts: list[str]) -> httpx.Response:
            return c.post("/invocations", content=json.dumps(texts), headers={"Content-Type": "application/json"})

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            first = pool.submit(send, ["the film"])  # its batch is the one held
            deadline = time.monotonic() + 10
            while "textfit_requests_waiting 1.0" not in c.get("/metrics").text and time.monotonic() < deadline:
                time.sleep(0.01)
            others = [pool.submit(send, texts) for texts in [big, *[[s] for s in smalls]]]
            while "textfit_requests_waiting 5.0" not in c.get("/metrics").text and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            responses = [f.result() for f in [first, *others]]
    assert [r.status_code for r in responses] == [200] * 5
    with_big = [b for b in batches if set(b) & set(big)]
    assert len(with_big) >= 3 and all(len(b) <= 4 for b in batches)  # sliced into batches of 4
    assert any(set(b) & set(smalls) for b in with_big)  # sharing a batch with the others
    rows = np.array([r["probabilities"] for r in responses[1].json()])
    expected = onnx.predict_proba(big)
    assert not np.allclose(expected, expected[::-1], atol=1e-3)  # the order shows
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    for response, text in zip(responses[2:], smalls):
        np.testing.assert_allclose(response.json()[0]["probabilities"], onnx.predict_proba([text])[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["minilm", "bpe", "unigram"])
def test_the_graph_tokenizer_gives_autotokenizers_ids_for_every_kind(kind: str, tmp_path: Path) -> None:
    """WordPiece (the embedded MiniLM's, BERT's), byte-level BPE (RoBERTa's) and Unigram (XLM-R's): the
    tokenizer.json an artifact holds (saved by the tokenizer training used), through the tokenizers library alone,
    gives the ids training's AutoTokenizer gives: truncated, in windows with a stride, texts longer than the
    window. (transformers' model classes may build their pipeline from the vocabulary rather than read a
    tokenizer.json as it is; what they save is that pipeline, which is what a server reads.)"""
    from transformers import AutoTokenizer

    from textfit.model import export, zoo

    folder = {"minilm": lambda: Path(zoo.resolve_model(None).path), "bpe": lambda: build_bpe_tokenizer(tmp_path),
              "unigram": lambda: build_unigram_tokenizer(tmp_path)}[kind]()
    theirs = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    theirs.save_pretrained(tmp_path / "artifact")  # as TextClassifier.save writes it
    ours = export.GraphTokenizer(tmp_path / "artifact")
    texts = [*TOKENIZER_CORPUS[:5], "a " * 40 + "very long text", "x", "  leading and trailing spaces  ",
             "MIXED Case Words"]
    for options in ({"truncation": True, "max_length": 8},
                    {"truncation": True, "max_length": 512},
                    {"truncation": True, "max_length": 10, "stride": 3, "return_overflowing_tokens": True}):
        got, want = ours(texts, **options), theirs(texts, **options)
        assert got["input_ids"] == want["input_ids"], (kind, options)
        assert got.get("overflow_to_sample_mapping") == want.get("overflow_to_sample_mapping")
    assert ours.pad_token_id == theirs.pad_token_id is not None
