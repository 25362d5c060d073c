"""The endpoint in-process (Starlette's TestClient) and as a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import wait_for_ping
from textfit import TextClassifier
from textfit.server import ServeSettings, create_app

GOOD, BAD = "the film was good and great", "the plot was bad and awful"


@pytest.fixture
def clf(tiny_artifact: Path) -> TextClassifier:
    return TextClassifier.load(tiny_artifact)


@pytest.fixture
def client(clf: TextClassifier) -> Iterator[TestClient]:
    with TestClient(create_app(clf, ServeSettings(max_body_bytes=2000, max_wait_ms=0))) as c:
        yield c


def test_ping(client: TestClient) -> None:
    response = client.get("/ping")
    assert response.status_code == 200 and response.content == b""


def test_ping_is_503_until_the_model_is_loaded(clf: TextClassifier) -> None:
    loaded = threading.Event()

    def slow_load() -> TextClassifier:
        loaded.wait(10)
        return clf

    with TestClient(create_app(slow_load)) as c:
        assert c.get("/ping").status_code == 503
        assert c.post("/invocations", content=GOOD).status_code == 503
        loaded.set()
        deadline = time.monotonic() + 10
        while c.get("/ping").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.get("/ping").status_code == 200


def test_x_text_verbose_is_sagemakers_response(client: TestClient, clf: TextClassifier) -> None:
    response = client.post("/invocations", content=GOOD.encode(),
                           headers={"Content-Type": "application/x-text", "Accept": "application/json;verbose"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json;verbose"
    body = response.json()
    assert body["labels"] == clf.classes_ and body["predicted_label"] == "1"
    np.testing.assert_allclose(body["probabilities"], clf.predict_proba([GOOD])[0], atol=1e-6)


def test_x_text_default_accept_is_probabilities_only(client: TestClient) -> None:
    body = client.post("/invocations", content=BAD, headers={"Content-Type": "application/x-text"}).json()
    assert set(body) == {"probabilities"} and body["probabilities"][0] > 0.5


@pytest.mark.parametrize(
    ("content_type", "body", "accept"),
    [
        ("application/json", json.dumps([GOOD, BAD]), "application/json;verbose"),
        ("application/json", json.dumps({"instances": [GOOD, BAD]}), "application/json"),
        ("application/jsonlines", f'{{"text": "{GOOD}"}}\n"{BAD}"\n', "application/jsonlines;verbose"),
        ("application/jsonlines", f'"{GOOD}"\n"{BAD}"\n', "application/jsonlines"),
        ("text/csv", f"{GOOD}\n{BAD}\n", "text/csv;verbose"),
        ("text/csv", f"{GOOD}\n{BAD}\n", "application/json"),
    ],
)
def test_batches_in_every_content_type_answer_in_order(client: TestClient, content_type: str, body: str,
                                                       accept: str) -> None:
    response = client.post("/invocations", content=body.encode(), headers={"Content-Type": content_type,
                                                                           "Accept": accept})
    assert response.status_code == 200 and response.headers["content-type"].startswith(accept)
    if accept.startswith("text/csv"):
        labels = [line.split(",")[0] for line in response.text.splitlines()]
        assert labels == ["1", "0"]
        return
    records = response.json() if accept.startswith("application/json;") or accept == "application/json" else [
        json.loads(line) for line in response.text.splitlines()]
    assert len(records) == 2
    assert records[0]["probabilities"][1] > 0.5 > records[1]["probabilities"][1]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "image/png"}, b"x", 415),
        ({"Content-Type": "application/x-text", "Accept": "application/xml"}, b"x", 406),
        ({"Content-Type": "application/x-text"}, b"", 400),
        ({"Content-Type": "application/x-text"}, b"caf\xe9", 400),
        ({"Content-Type": "application/json"}, b"{nope", 400),
        ({"Content-Type": "application/x-text"}, b"x" * 2001, 413),
    ],
)
def test_client_mistakes_are_4xx_json_and_the_server_keeps_serving(client: TestClient, headers: dict[str, str],
                                                                   body: bytes, status: int) -> None:
    response = client.post("/invocations", content=body, headers=headers)
    assert response.status_code == status
    assert response.json()["status"] == status and response.json()["error"]
    assert client.post("/invocations", content=GOOD).status_code == 200


def test_a_full_queue_is_503_with_retry_after(clf: TextClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    release, predict = threading.Event(), clf.predict_proba
    monkeypatch.setattr(clf, "predict_proba", lambda texts, **kw: (release.wait(10), predict(texts, **kw))[1])
    with TestClient(create_app(clf, ServeSettings(max_queue=2, max_wait_ms=0))) as c:
        send = lambda: c.post("/invocations", content=GOOD)  # noqa: E731
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(send) for _ in range(2)]
            deadline = time.monotonic() + 10
            while "textfit_requests_waiting 2.0" not in c.get("/metrics").text and time.monotonic() < deadline:
                time.sleep(0.01)
            response = send()
            release.set()
            assert [f.result().status_code for f in held] == [200, 200]
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["status"] == 503
        assert c.post("/invocations", content=json.dumps(["a", "b"]),
                      headers={"Content-Type": "application/json"}).status_code == 200


def test_execution_parameters_and_metrics(client: TestClient) -> None:
    assert client.get("/execution-parameters").json() == {"MaxConcurrentTransforms": 4, "BatchStrategy": "MULTI_RECORD",
                                                          "MaxPayloadInMB": 1}
    client.post("/invocations", content=GOOD)
    client.post("/invocations", content=b"", headers={"Content-Type": "application/x-text"})
    text = client.get("/metrics").text
    assert 'textfit_requests_total{status="200"} 1.0' in text
    assert 'textfit_requests_total{status="400"} 1.0' in text
    assert "textfit_request_seconds_bucket" in text and "textfit_batch_texts_count 1.0" in text


def test_long_texts_option(tiny_artifact: Path) -> None:
    clf = TextClassifier.load(tiny_artifact)
    long_text = " ".join(["good great"] * 40 + ["bad awful"] * 5)  # about 90 tokens, max_seq_length is 128
    clf.hyperparameters_ = clf.hyperparameters_.with_values(max_seq_length=16)
    truncated = clf.predict_proba([long_text])
    windowed = clf.predict_proba([long_text], long_texts="window")
    head_only = clf.predict_proba([" ".join(["good great"] * 7)])
    np.testing.assert_allclose(truncated, head_only, atol=1e-6)  # truncation sees only the start
    assert not np.allclose(windowed, truncated, atol=1e-4)  # windows see the end too
    np.testing.assert_allclose(windowed.sum(), 1.0, atol=1e-5)


def test_onnx_and_torch_agree(tiny_artifact: Path) -> None:
    torch_clf = TextClassifier.load(tiny_artifact)
    onnx_clf = TextClassifier.load(tiny_artifact, backend="onnx")
    texts = [GOOD, BAD, "good", "the very long plot was really quite awful and the acting was bad " * 3]
    # in one padded batch, and one by one (no padding): the exported graph must honour the attention mask
    np.testing.assert_allclose(onnx_clf.predict_proba(texts), torch_clf.predict_proba(texts), atol=1e-4)
    np.testing.assert_allclose(np.vstack([onnx_clf.predict_proba([t]) for t in texts]),
                               torch_clf.predict_proba(texts), atol=1e-4)


# ------------------------------------------------------------------------------------ a real server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tiny_artifact: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "textfit", "serve", "--model", str(tiny_artifact), "--port",
                             str(port), "--backend", "torch", "--max-queue", "50000"], stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_for_ping(url)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    assert proc.stderr is not None
    proc.stderr.close()


def test_concurrent_requests_each_get_their_own_answer(server: tuple[subprocess.Popen[bytes], str],
                                                        clf: TextClassifier) -> None:
    _, url = server
    texts = [" ".join(["good", "bad", "great", "awful", "film", "plot"][j % 6] for j in range(i, i + 2 + i % 5))
             for i in range(64)]
    expected = clf.predict_proba(texts)

    def ask(i: int) -> list[float]:
        r = httpx.post(f"{url}/invocations", content=texts[i].encode(), timeout=30,
                       headers={"Content-Type": "application/x-text", "Accept": "application/json;verbose"})
        assert r.status_code == 200
        return r.json()["probabilities"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(len(texts))))
    np.testing.assert_allclose(answers, expected, atol=1e-5)
    metrics = httpx.get(f"{url}/metrics").text
    batches = float(metrics.split("textfit_batch_texts_count ")[1].split()[0])
    assert batches < len(texts)  # concurrent requests were coalesced


def test_sigterm_drains_in_flight_requests(server: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = server
    big = json.dumps([GOOD] * 20000)  # a request that takes a few seconds
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{url}/invocations", content=big.encode(), timeout=60,
                              headers={"Content-Type": "application/json"})
        time.sleep(0.5)  # received, and being answered
        proc.send_signal(signal.SIGTERM)
        response = pending.result()
    assert response.status_code == 200 and len(response.json()) == 20000
    assert proc.wait(timeout=30) == 0  # drained, then a clean exit


def test_settings_from_the_sagemaker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "2")
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/jsonlines")
    settings = ServeSettings.from_environment(max_batch=8, max_body_bytes=None)
    assert (settings.max_body_bytes, settings.default_accept, settings.max_batch) == (
        2 * 1024 * 1024, "application/jsonlines", 8)
