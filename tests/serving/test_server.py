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

from tests import forkserver
from tests.conftest import wait_for_ping
from textfit import TextClassifier
from textfit.serving.server import ServeSettings, create_app

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
    release, predict = threading.Event(), clf.log_scores
    monkeypatch.setattr(clf, "log_scores", lambda texts, **kw: (release.wait(10), predict(texts, **kw))[1])
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


@pytest.mark.parametrize("in_flight", [1, 2])
def test_batches_compute_at_once_up_to_batches_in_flight(clf: TextClassifier, monkeypatch: pytest.MonkeyPatch,
                                                         in_flight: int) -> None:
    """Two requests, a batch each (max_batch 1): their forward passes meet at a barrier of two, which only
    batches computed at once can pass; one at a time, the first waits out the barrier and breaks it. The answers
    are right either way."""
    meet, predict, together = threading.Barrier(2, timeout=2), clf.log_scores, []

    def meeting(texts: list[str], **kw: object) -> np.ndarray:
        try:
            meet.wait()
            together.append(True)
        except threading.BrokenBarrierError:
            together.append(False)
        return predict(texts, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(clf, "log_scores", meeting)
    settings = ServeSettings(max_batch=1, max_wait_ms=0, batches_in_flight=in_flight)
    with TestClient(create_app(clf, settings)) as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda text: c.post("/invocations", content=text), [GOOD, "a dreadful, boring film"]))
    assert [a.status_code for a in answers] == [200, 200]
    np.testing.assert_allclose([a.json()["probabilities"] for a in answers],
                               clf.predict_proba([GOOD, "a dreadful, boring film"]), atol=1e-5)
    assert together[:2] == ([True, True] if in_flight == 2 else [False, False])


def test_execution_parameters_and_metrics(client: TestClient) -> None:
    # no BatchStrategy: the service and the SageMaker SDK spell it differently, and both default to multi-record
    assert client.get("/execution-parameters").json() == {"MaxConcurrentTransforms": 4, "MaxPayloadInMB": 1}
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


# ------------------------------------------------------------------------------------ a real server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tiny_artifact: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    proc = forkserver.Popen([sys.executable, "-m", "textfit", "serve", "--model", str(tiny_artifact), "--port",
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

    client = httpx.Client(limits=httpx.Limits(max_connections=16), timeout=30)  # one TLS context, not one a call

    def ask(i: int) -> list[float]:
        r = client.post(f"{url}/invocations", content=texts[i].encode(),
                        headers={"Content-Type": "application/x-text", "Accept": "application/json;verbose"})
        assert r.status_code == 200
        return r.json()["probabilities"]

    with client, concurrent.futures.ThreadPoolExecutor(16) as pool:
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
    assert (settings.batch, settings.batch_strategy) == (False, "MULTI_RECORD")
    monkeypatch.setenv("SAGEMAKER_BATCH", "True")
    monkeypatch.setenv("SAGEMAKER_BATCH_STRATEGY", "SINGLE_RECORD")
    settings = ServeSettings.from_environment()
    assert (settings.batch, settings.batch_strategy) == (True, "SINGLE_RECORD")


# ------------------------------------------------------------------------------------ batch transform

# Lines as a batch transform's line splitter cuts them: quoted fields with commas, a blank line, UTF-8 beyond
# Latin (a line separator U+2028 and a next-line U+0085 inside texts, which are not line breaks there), CRLF.
LINES = ['"the film was good, and great"', "the plot was bad, awful", "", "a film \u2028 that was good",
         "très bon film 好 \U0001f600", "bad\u0085 and awful", "   ", "good\r"]
TEXTS = ["the film was good, and great", "the plot was bad, awful", None, "a film \u2028 that was good",
         "très bon film 好 \U0001f600", "bad\u0085 and awful", None, "good"]


def _transform(clf: TextClassifier, strategy: str, content_type: str, accept: str) -> list[str]:
    """Each record as the SageMaker SDK's local batch transform sends it (MultiRecord: the lines of the file in
    one body; SingleRecord: one line a body), assembled as AssembleWith=Line does: each answer, then a newline."""
    settings = ServeSettings(batch=True, batch_strategy=strategy, max_wait_ms=0)
    lines = LINES if content_type == "text/csv" else [
        json.dumps({"text": t}, ensure_ascii=False) if t is not None else line for line, t in zip(LINES, TEXTS)]
    bodies = ["".join(line + "\n" for line in lines)] if strategy == "MULTI_RECORD" else [
        line + "\n" for line in lines]
    out = b""
    with TestClient(create_app(clf, settings)) as c:
        for body in bodies:
            response = c.post("/invocations", content=body.encode(),
                              headers={"Content-Type": content_type, "Accept": accept})
            assert response.status_code == 200, response.text
            out += response.content + b"\n"
    return out.decode().split("\n")[:-1]


@pytest.mark.parametrize("strategy", ["MULTI_RECORD", "SINGLE_RECORD"])
@pytest.mark.parametrize(("content_type", "accept"), [("text/csv", "application/json;verbose"),
                                                      ("text/csv", "text/csv;verbose"),
                                                      ("application/jsonlines", "application/jsonlines"),
                                                      ("text/csv", "application/jsonlines;verbose")])
def test_batch_transform_answers_one_record_a_line_in_order(clf: TextClassifier, strategy: str, content_type: str,
                                                            accept: str) -> None:
    out = _transform(clf, strategy, content_type, accept)
    expected = clf.predict_proba([t for t in TEXTS if t is not None])
    if accept.startswith("application/json;") and strategy == "MULTI_RECORD":
        out = [json.dumps(r) for r in json.loads(out[0])]  # one JSON list for the whole body
    assert len(out) == len(LINES)  # one to one: no blank line between answers, none missing
    rows = iter(expected)
    for line, text in zip(out, TEXTS):
        if text is None:
            assert line == "" if accept.startswith("text/csv") else json.loads(line) == {
                "error": "the line is blank; no text to classify"}
            continue
        want = next(rows)
        if accept.startswith("text/csv"):
            label, *probs = line.split(",")
            assert label == str(int(want.argmax())) and np.allclose([float(p) for p in probs], want, atol=1e-6)
        else:
            record = json.loads(line)  # SingleRecord: one object for the one record, never a list of one
            assert isinstance(record, dict) and np.allclose(record["probabilities"], want, atol=1e-6)


def test_outside_batch_transform_blank_lines_are_skipped_and_lines_end_with_newlines(client: TestClient) -> None:
    response = client.post("/invocations", content=f"{GOOD}\n\n{BAD}\n".encode(),
                           headers={"Content-Type": "text/csv", "Accept": "application/jsonlines"})
    assert response.status_code == 200 and response.text.endswith("}\n") and response.text.count("\n") == 2
    assert client.post("/invocations", content=b"\n", headers={"Content-Type": "text/csv"}).status_code == 400


# ------------------------------------------------------------------------------------ the documented limits


def test_the_readme_limits_are_the_defaults() -> None:
    """Each row of the README's Serve limits table is the flag's default and the server's own default."""
    from textfit.cli import build_parser
    from textfit.serving.connections import ConnectionLimits

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("Limits, each a flag of `textfit serve`:")[1].split("\n\n")[1]
    rows = {cells[1].strip(" `"): cells[2:] for cells in (line.split("|") for line in table.splitlines()[2:])}
    first_number = {flag: float(cells[0].replace(",", "").split()[0]) for flag, cells in rows.items()}
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    defaults = {a.option_strings[-1]: a.default for a in serve._actions if a.option_strings}
    ranges = {a.option_strings[-1]: a.type.describe() for a in serve._actions if hasattr(a.type, "describe")}
    for flag, cells in rows.items():  # "1 to 1024" of "an integer from 1 to 1024", as --help says it
        assert ranges[flag].endswith(cells[1].strip()), flag
    limits, settings = ConnectionLimits(), ServeSettings()
    assert set(first_number) == {"--max-body-mb", "--body-timeout", "--max-header-kb", "--max-headers",
                                 "--header-timeout", "--keep-alive", "--max-connections", "--max-queue"}
    assert first_number["--max-body-mb"] * 1024 * 1024 == settings.max_body_bytes  # the flag's default is the env's
    assert first_number["--body-timeout"] == defaults["--body-timeout"] == settings.body_timeout_s
    assert first_number["--max-header-kb"] * 1024 == defaults["--max-header-kb"] * 1024 == limits.max_header_bytes
    assert first_number["--max-headers"] == defaults["--max-headers"] == limits.max_headers
    assert first_number["--header-timeout"] == defaults["--header-timeout"] == limits.header_timeout_s
    assert first_number["--keep-alive"] == defaults["--keep-alive"] == limits.keep_alive_s
    assert first_number["--max-connections"] == defaults["--max-connections"] == limits.max_connections
    assert first_number["--max-queue"] == defaults["--max-queue"] == settings.max_queue


HEADER_LIMIT, HEADERS_LIMIT, BODY_LIMIT = 64 * 1024, 100, 6 * 1024 * 1024  # the README's defaults
CONNECTIONS, TIMEOUT, KEEP_ALIVE = 4, 2.0, 1.0  # small, so that the tests reach them quickly


@pytest.fixture(scope="module")
def limited(tiny_artifact: Path) -> Iterator[tuple[str, int]]:
    """One server for the module's limit tests: header and body limits at their defaults, the rest small."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SAGEMAKER_MAX_PAYLOAD_IN_MB"}
    proc = forkserver.Popen([sys.executable, "-m", "textfit", "serve", "--model", str(tiny_artifact), "--port",
                             str(port), "--backend", "torch", "--max-connections", str(CONNECTIONS),
                             "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
                             "--keep-alive", str(KEEP_ALIVE)], stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for_ping(url)
    yield url, port
    proc.kill()
    proc.wait(timeout=10)


def _exchange(port: int, *parts: bytes, pause: float = 0.0, wait: float = 10.0) -> bytes:
    """Send `parts` (with `pause` between them) on one connection; read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)
            s.sendall(part)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _statuses(raw: bytes) -> list[int]:
    return [int(line.split()[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def _head(size: int, path: bytes = b"/ping", close: bool = True) -> bytes:
    """A GET whose request line and headers, to the blank line that ends them, are `size` bytes."""
    start = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"") + b"X-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize(("size", "status"), [(HEADER_LIMIT - 1024, 200), (HEADER_LIMIT, 200),
                                              (HEADER_LIMIT + 1, 431), (HEADER_LIMIT + 1024, 431)])
def test_the_header_size_limit_is_exact(limited: tuple[str, int], size: int, status: int) -> None:
    """In one write (the server reads it at once: the limit used to hold only past one read, 100 KiB passed
    64 KiB) and in two writes apart."""
    _, port = limited
    head = _head(size)
    assert len(head) == size
    assert _statuses(_exchange(port, head)) == [status]
    assert _statuses(_exchange(port, head[:1000], head[1000:], pause=0.2)) == [status]


def test_a_pipelined_head_over_the_limit_is_431(limited: tuple[str, int]) -> None:
    _, port = limited
    assert _statuses(_exchange(port, _head(500, close=False) + _head(HEADER_LIMIT))) == [200, 200]
    assert _statuses(_exchange(port, _head(500, close=False) + _head(HEADER_LIMIT + 1024))) == [200, 431]


@pytest.mark.parametrize(("count", "status"), [(HEADERS_LIMIT, 200), (HEADERS_LIMIT + 1, 431)])
def test_the_header_count_limit_is_exact(limited: tuple[str, int], count: int, status: int) -> None:
    _, port = limited
    fields = [b"Host: x", b"Connection: close"] + [b"X-%d: 1" % i for i in range(count - 2)]
    raw = _exchange(port, b"GET /ping HTTP/1.1\r\n" + b"\r\n".join(fields) + b"\r\n\r\n")
    assert _statuses(raw) == [status]


@pytest.mark.parametrize(("size", "status"), [(BODY_LIMIT - 1024, 200), (BODY_LIMIT, 200),
                                              (BODY_LIMIT + 1, 413), (BODY_LIMIT + 1024, 413)])
def test_the_body_size_limit_is_exact(limited: tuple[str, int], size: int, status: int) -> None:
    url, _ = limited
    body = (b"good film " * (size // 10 + 1))[:size]
    declared = httpx.post(f"{url}/invocations", content=body, timeout=60,
                          headers={"Content-Type": "application/x-text"})
    assert declared.status_code == status, declared.text
    chunked = httpx.post(f"{url}/invocations", content=iter([body[: size // 2], body[size // 2 :]]), timeout=60,
                         headers={"Content-Type": "application/x-text"})  # no Content-Length: counted as it comes
    assert chunked.status_code == status, chunked.text


def test_the_header_and_body_deadlines(limited: tuple[str, int]) -> None:
    _, port = limited
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n"
    assert _statuses(_exchange(port, head, b"\r\ngood", pause=TIMEOUT / 4)) == [200]  # well within
    start = time.monotonic()
    assert _statuses(_exchange(port, head)) == [408]  # the blank line never comes
    assert TIMEOUT - 0.1 <= time.monotonic() - start < TIMEOUT + 3
    start = time.monotonic()
    raw = _exchange(port, head + b"\r\ngo")  # half the body
    assert _statuses(raw) == [408] and b"did not arrive" in raw
    assert TIMEOUT - 0.1 <= time.monotonic() - start < TIMEOUT + 3


def test_an_idle_keep_alive_connection_closes(limited: tuple[str, int]) -> None:
    _, port = limited
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_head(200, close=False))
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(KEEP_ALIVE / 4)
        s.sendall(_head(200, close=False))  # within the keep-alive: the same connection answers
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert s.recv(65536) == b""  # closed by the server, idle for KEEP_ALIVE
        assert KEEP_ALIVE - 0.1 <= time.monotonic() - start < KEEP_ALIVE + 3


def test_the_connection_limit_is_exact(limited: tuple[str, int]) -> None:
    """CONNECTIONS open at once are served; one more is answered 503 and closed."""
    _, port = limited
    deadline = time.monotonic() + 10  # the connections of earlier tests may still be closing on the server
    while True:
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CONNECTIONS)]
        try:
            for s in held:
                s.sendall(_head(200, close=False))
            answers = [s.recv(65536) for s in held]
            if all(a.startswith(b"HTTP/1.1 200") for a in answers) or time.monotonic() > deadline:
                assert [a[:12] for a in answers] == [b"HTTP/1.1 200"] * CONNECTIONS
                raw = _exchange(port, _head(200))
                break
        finally:
            for s in held:
                s.close()
        time.sleep(0.2)
    assert _statuses(raw) == [503] and b"retry-after: 1" in raw.lower()
