"""Hostile and careless input: model files that carry code, damaged artifacts, malformed requests, abusive
connections. Each case checks the exact answer and that a normal request is still answered correctly after it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
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
from textfit.data import batching
from textfit.model import artifact
from textfit.serving.server import ServeSettings, create_app

GOOD, BAD = "the film was good and great", "the plot was bad and awful"
EVIL_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def textfit(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return forkserver.run([sys.executable, "-m", "textfit", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The run failed with exit 2 and exactly one `error:` line holding each fragment, and no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def _redigest(folder: Path) -> None:
    """An attacker can recompute the digests of a tampered artifact: the code check must hold on its own."""
    manifest = json.loads((folder / artifact.MANIFEST).read_text())
    manifest[artifact.DIGESTS] = artifact.digests(folder)
    (folder / artifact.MANIFEST).write_text(json.dumps(manifest))


def _tar(folder: Path, tarball: Path) -> Path:
    with tarfile.open(tarball, "w:gz") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)
    return tarball


def _with_code(tiny_artifact: Path, tmp_path: Path, model_type: str, tokenizer_code: bool = False
               ) -> tuple[Path, Path]:
    """A copy of a trained artifact whose config.json (or tokenizer config) points at Python files it ships."""
    marker = tmp_path / "code-ran"
    folder = tmp_path / f"evil-{model_type}"
    shutil.copytree(tiny_artifact, folder)
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                   "AutoModelForSequenceClassification": "evil.EvilModel",
                                                   "AutoModel": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer_code:
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        tok.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
        (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    _redigest(folder)
    return folder, marker


# ------------------------------------------------------------------------------------ code in model files


def test_an_unknown_architecture_with_code_is_refused_and_runs_nothing(tiny_artifact: Path, tmp_path: Path) -> None:
    folder, marker = _with_code(tiny_artifact, tmp_path, "evil-model")
    tarball = _tar(folder, tmp_path / "evil.tar.gz")
    # stdin answers "y" to any prompt: none may be asked, and no code may run
    one_error_line(textfit("predict", "--model", str(tarball), stdin="great film\ny\n"),
                   "model_type 'evil-model'", "never runs")
    one_error_line(textfit("models", "import", "tensorflow-tc-bert-en-uncased-L-12-H-768-A-12-2", str(folder),
                           stdin="y\n"), "model_type 'evil-model'")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "data.csv").write_text("\n".join(f"{i % 2},{GOOD if i % 2 else BAD}" for i in range(20)))
    one_error_line(textfit("train", "--train", str(tmp_path / "train"), "--model", str(tarball), "--output",
                           str(tmp_path / "out"), stdin="y\n"), "model_type 'evil-model'")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_code_beside_a_known_architecture_is_ignored(tiny_artifact: Path, tmp_path: Path) -> None:
    folder, marker = _with_code(tiny_artifact, tmp_path, "bert")
    result = textfit("predict", "--model", str(folder), stdin=f"{GOOD}\ny\n")
    assert result.returncode == 0, result.stderr
    expected = TextClassifier.load(tiny_artifact).predict_proba([GOOD, "y"])
    got = [json.loads(line)["probabilities"] for line in result.stdout.splitlines()]
    np.testing.assert_allclose(got, expected, atol=1e-5)  # the built-in BERT ran, not the shipped class
    assert not marker.exists()


def test_a_tokenizer_that_names_its_own_code_runs_none(tiny_artifact: Path, tmp_path: Path) -> None:
    """transformers reads the tokenizer from tokenizer.json and ignores the class it cannot trust: with
    trust_remote_code=False and a BERT config (a tokenizer it has built in), the shipped class is never imported
    and the unknown tokenizer_class falls back to the fast tokenizer of tokenizer.json. The artifact is otherwise
    intact, so it predicts, as code beside a known architecture does above."""
    folder, marker = _with_code(tiny_artifact, tmp_path, "bert", tokenizer_code=True)
    result = textfit("predict", "--model", str(folder), "--text", GOOD, stdin="y\n")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)["probabilities"]
    np.testing.assert_allclose(got, TextClassifier.load(tiny_artifact).predict_proba([GOOD])[0], atol=1e-5)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ damaged artifacts


def _damaged(tiny_artifact: Path, tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_artifact, folder)
    if damage == "no tokenizer.json":
        (folder / "tokenizer.json").unlink()
    elif damage == "truncated weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "malformed labels":
        (folder / "labels_info.json").write_text('{"labels": ["0", "1"')
    elif damage == "edited labels":
        (folder / "labels_info.json").write_text('{"labels": ["a", "b", "c"], "label_values": [0, 1, 2]}')
    return folder


@pytest.mark.parametrize(("damage", "named"), [
    ("no tokenizer.json", "tokenizer.json is missing"),
    ("truncated weights", "model.safetensors has changed"),
    ("malformed labels", "labels_info.json has changed"),
    ("edited labels", "labels_info.json has changed"),
])
def test_a_damaged_artifact_is_one_line_naming_the_file(tiny_artifact: Path, tmp_path: Path, damage: str,
                                                         named: str) -> None:
    folder = _damaged(tiny_artifact, tmp_path, damage)
    one_error_line(textfit("predict", "--model", str(folder), "--text", GOOD), named)


@pytest.mark.parametrize(("damage", "named"), [
    ("no tokenizer.json", "the tokenizer's vocabulary"),
    ("truncated weights", "model.safetensors"),
    ("malformed labels", "labels_info.json"),
    ("edited labels", "3 classes"),
])
def test_damage_is_caught_without_digests_too(tiny_artifact: Path, tmp_path: Path, damage: str, named: str) -> None:
    """An artifact written before digests existed: the files themselves are checked."""
    folder = _damaged(tiny_artifact, tmp_path, damage)
    manifest = json.loads((folder / artifact.MANIFEST).read_text())
    del manifest[artifact.DIGESTS]
    (folder / artifact.MANIFEST).write_text(json.dumps(manifest))
    one_error_line(textfit("predict", "--model", str(folder), "--text", GOOD), named)


def test_a_truncated_tarball_is_one_line(tiny_artifact: Path, tmp_path: Path) -> None:
    data = _tar(tiny_artifact, tmp_path / "m.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    one_error_line(textfit("predict", "--model", str(tmp_path / "cut.tar.gz"), "--text", GOOD), "cut.tar.gz",
                   "complete .tar.gz")


@pytest.mark.parametrize(("content", "said"), [
    (b"this is no tarball at all\n", "the file is not a tarball (gzip, bz2, xz or plain tar); pass a model folder or "
                                     "the model.tar.gz written by textfit train"),
    (b"", "the file is not a tarball (gzip, bz2, xz or plain tar); pass a model folder or the model.tar.gz "
          "written by textfit train"),
    (gzip.compress(b"a gzip file of no tar archive", mtime=0), "a gzip file that holds no tar archive, or only the "
                                                               "start of one; check that it is a complete .tar.gz "
                                                               "written by textfit train, or pass a model folder"),
], ids=["text", "empty", "gzip-of-no-tar"])
def test_a_model_that_is_no_tarball_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
                                                said: str) -> None:
    """tarfile's message lists each decompression it tried, a line each: the user sees one line."""
    from textfit.cli import main

    (tmp_path / "x.tar.gz").write_bytes(content)
    assert main(["predict", "--model", str(tmp_path / "x.tar.gz"), "--text", GOOD]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'x.tar.gz'}: cannot read the tarball: {said}\n"


DEEP = '{"a": ' * 50_000 + "1" + "}" * 50_000
"""JSON nested past Python's recursion limit: json.loads raises RecursionError, not a JSONDecodeError."""


def _main_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the CLI in this process: exit code 2 and one error line, no traceback."""
    from textfit.cli import main

    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "tokenizer.json", artifact.LABELS,
                                  artifact.MANIFEST])
def test_json_nested_past_the_recursion_limit_in_a_model_file_is_one_line(
        tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    folder = tmp_path / "deep"
    shutil.copytree(tiny_artifact, folder)
    (folder / name).write_text(DEEP)
    if name != artifact.MANIFEST:  # the digests recomputed, as an attacker would: the parse must fail cleanly
        _redigest(folder)
    line = _main_error(capsys, "predict", "--model", str(folder), "--text", GOOD)
    assert str(folder) in line


def test_json_nested_past_the_recursion_limit_in_an_input_is_one_line(
        tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hp.json").write_text(DEEP)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "data.csv").write_text(f"1,{GOOD}\n0,{BAD}\n")
    assert "hp.json: the JSON nests too deeply" in _main_error(
        capsys, "train", "--train", str(tmp_path / "train"), "--hyperparameters", str(tmp_path / "hp.json"),
        "--output", str(tmp_path / "out"))
    (tmp_path / "train" / "labels_info.json").write_text(DEEP)
    assert "labels_info.json: the JSON nests too deeply" in _main_error(
        capsys, "train", "--train", str(tmp_path / "train"), "--output", str(tmp_path / "out"))
    (tmp_path / "in.jsonl").write_text(f'"{GOOD}"\n{DEEP}\n')
    assert "in.jsonl, line 2: the JSON nests too deeply" in _main_error(
        capsys, "predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.jsonl"))
    assert not (tmp_path / "out").exists()


def test_a_tarball_bomb_is_one_line_and_inflates_nothing(tmp_path: Path) -> None:
    member = tarfile.TarInfo("model.safetensors")
    member.size = 1 << 50  # a petabyte of zeros declared in a few hundred bytes
    with gzip.open(tmp_path / "bomb.tar.gz", "wb") as f:
        f.write(member.tobuf(format=tarfile.PAX_FORMAT))
    one_error_line(textfit("predict", "--model", str(tmp_path / "bomb.tar.gz"), "--text", GOOD), "bomb.tar.gz",
                   "refusing to extract")


def test_a_server_whose_model_cannot_load_exits_with_the_reason(tiny_artifact: Path, tmp_path: Path) -> None:
    folder = _damaged(tiny_artifact, tmp_path, "truncated weights")
    one_error_line(textfit("serve", "--model", str(folder), "--port", str(_free_port())), "model.safetensors")


# ------------------------------------------------------------------------------------ requests, in process


@pytest.fixture(scope="module")
def clf(tiny_artifact: Path) -> TextClassifier:
    return TextClassifier.load(tiny_artifact)


@pytest.fixture
def client(clf: TextClassifier) -> Iterator[TestClient]:
    with TestClient(create_app(clf, ServeSettings(max_wait_ms=0)), raise_server_exceptions=False) as c:
        yield c


def _still_serves(client: TestClient, clf: TextClassifier) -> None:
    response = client.post("/invocations", content=GOOD, headers={"Accept": "application/json"})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["probabilities"], clf.predict_proba([GOOD])[0], atol=1e-5)


# Each content type's malformed bodies and the status each must get, every one sent under every Accept. The plain
# mistakes under the default Accept (an empty or non-UTF-8 x-text body, an image) are tests/serving/test_server.py's.
MALFORMED: dict[str, list[tuple[bytes, int]]] = {
    "application/x-text": [(b"\xff\xfe\x00", 400), (b" \t\n", 400)],
    "application/json": [
        (b"", 400), (b"{x", 400), (b"[1]", 400), (b"NaN", 400), (b"[]", 400),
        (b'"\\ud800"', 400), (b'["fine", "\\udfff x"]', 400),      # lone surrogates
        (b"[" * 100_000, 400),                                       # nesting past the recursion limit
        (b'{"text": "a", "n": ' + b"9" * 5000 + b"}", 400),          # a 5,000-digit number
        (b"[" + b"1" * 5000 + b"]", 400),
        (b'{"instances": [{"text": 3}]}', 400),
    ],
    "application/jsonlines": [(b"", 400), (b"{", 400), (b"{x\n", 400), (b"[1]\n", 400), (b'"ok"\n"\\ud800"\n', 400)],
    "text/csv": [(b"", 400), (b"\n\n", 400), (b"caf\xe9\n", 400)],
    "application/xml": [(b"<a/>", 415)],
}
ACCEPTS = ["application/json", "application/json;verbose", "application/jsonlines", "application/jsonlines;verbose",
           "text/csv", "text/csv;verbose", "*/*"]


@pytest.mark.parametrize("content_type", list(MALFORMED))
def test_malformed_bodies_are_4xx_json_under_every_accept(client: TestClient, clf: TextClassifier,
                                                          content_type: str) -> None:
    """The refusal is JSON with its status whatever the client accepts, and a good body of the same type is still
    answered after it."""
    for accept in ACCEPTS:
        for body, status in MALFORMED[content_type]:
            response = client.post("/invocations", content=body,
                                   headers={"Content-Type": content_type, "Accept": accept})
            assert response.status_code == status, (accept, body[:40])
            assert response.json()["status"] == status and response.json()["error"], (accept, body[:40])
        if content_type != "application/xml":
            body = json.dumps(GOOD).encode() if "json" in content_type else GOOD.encode()
            good = client.post("/invocations", content=body, headers={"Content-Type": content_type, "Accept": accept})
            assert good.status_code == 200, accept
    _still_serves(client, clf)


def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:
    for response, status in ((client.get("/nope"), 404), (client.get("/invocations"), 405),
                             (client.post("/ping"), 405)):
        assert response.status_code == status
        assert response.json()["status"] == status and response.json()["error"]


def test_verbose_false_is_not_verbose(client: TestClient) -> None:
    plain = client.post("/invocations", content=GOOD, headers={"Accept": "application/json;verbose=false"}).json()
    verbose = client.post("/invocations", content=GOOD, headers={"Accept": "application/json;verbose=true"}).json()
    assert set(plain) == {"probabilities"} and set(verbose) == {"probabilities", "labels", "predicted_label"}


def test_a_batch_far_larger_than_the_queue_is_answered_in_slices(clf: TextClassifier) -> None:
    texts = [GOOD if i % 3 else BAD for i in range(30_000)]
    body = json.dumps(texts).encode()
    assert len(body) < 6 * 1024 * 1024
    # 30,000 texts through a queue of one: 235 slices of 128
    with TestClient(create_app(clf, ServeSettings(max_queue=1, max_batch=128, max_wait_ms=0))) as c:
        response = c.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    probs = np.array([r["probabilities"] for r in response.json()])
    assert probs.shape == (30_000, 2)
    np.testing.assert_allclose(probs[:3], clf.predict_proba(texts[:3]), atol=1e-5)
    np.testing.assert_allclose(probs[-3:], clf.predict_proba(texts[-3:]), atol=1e-5)


def test_a_request_that_fails_its_batch_fails_alone(clf: TextClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault no validation foresaw (here: the engine raising on one request's text) costs that request only."""
    predict, arrived = clf.log_scores, threading.Barrier(17, timeout=10)

    def predict_or_fail(texts: list[str], **kw: object) -> np.ndarray:
        if any("poison" in t for t in texts):
            raise RuntimeError("the engine failed on this text")
        return predict(texts, **kw)

    monkeypatch.setattr(clf, "log_scores", predict_or_fail)
    texts = [f"{GOOD} {'bad ' * (i % 4)}" for i in range(16)]
    with TestClient(create_app(clf, ServeSettings(max_wait_ms=50))) as c:
        def send(text: str) -> httpx.Response:
            arrived.wait()
            return c.post("/invocations", content=text)

        with concurrent.futures.ThreadPoolExecutor(17) as pool:
            futures = [pool.submit(send, t) for t in [*texts, "poison film"]]
            responses = [f.result() for f in futures]
        metrics = c.get("/metrics").text
    assert responses[-1].status_code == 400 and "could not be classified" in responses[-1].json()["error"]
    assert [r.status_code for r in responses[:-1]] == [200] * 16
    np.testing.assert_allclose([r.json()["probabilities"] for r in responses[:-1]], clf.predict_proba(texts), atol=1e-5)
    assert float(metrics.split("textfit_batch_texts_count ")[1].split()[0]) < 17  # the requests were coalesced


def test_a_huge_text_is_cut_before_it_is_tokenized(clf: TextClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the first max_seq_length tokens count, so only a bounded prefix is tokenized: 6 MB costs what 8 KB
    does, and the answer is the same as for the whole text."""
    huge = (GOOD + " ") * 200_000
    seen: list[int] = []
    tokenize = batching._tokenize
    monkeypatch.setattr(batching, "_tokenize", lambda tok, texts, n: (seen.extend(map(len, texts)),
                                                                     tokenize(tok, texts, n))[1])
    probs = clf.predict_proba([huge])
    limit = clf.hyperparameters_.max_seq_length * batching.CHARS_PER_TOKEN
    assert max(seen) <= limit < len(huge)
    ids = clf.tokenizer_(huge[: len(huge) // 10], truncation=True, max_length=clf.hyperparameters_.max_seq_length)
    assert batching.encode(clf.tokenizer_, [huge], clf.hyperparameters_.max_seq_length).input_ids[0] == \
        ids["input_ids"]
    np.testing.assert_allclose(probs, clf.predict_proba([huge[:limit]]), atol=1e-6)


def test_leading_whitespace_does_not_hide_the_text() -> None:
    """A cut that leaves the window short (whitespace makes no tokens) grows until the window fills."""
    import tempfile

    from transformers import AutoTokenizer

    from tests.conftest import build_tiny_bert

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(build_tiny_bert(Path(tmp)))
    text = " " * 10_000 + "good film " * 100  # within max_length * MAX_CHARS_PER_TOKEN
    ids = batching.encode(tok, [text], 16).input_ids[0]
    assert ids == tok(text, truncation=True, max_length=16)["input_ids"] and len(ids) == 16


# ------------------------------------------------------------------------------------ a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    port = _free_port()
    proc = forkserver.Popen([sys.executable, "-m", "textfit", "serve", "--model", str(tiny_artifact), "--port",
                             str(port), "--backend", "torch", "--header-timeout", "3", "--max-connections", "40",
                             "--max-header-kb", "16", "--max-headers", "50"],
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_for_ping(url)
    yield proc, url, port
    proc.kill()
    proc.wait(timeout=10)


def _raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes and read until the server closes the connection (or `wait` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _status_and_json(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _normal(url: str, clf: TextClassifier) -> None:
    response = httpx.post(f"{url}/invocations", content=GOOD, timeout=30)
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["probabilities"], clf.predict_proba([GOOD])[0], atol=1e-5)


def test_oversized_headers_are_431(server: tuple[subprocess.Popen[bytes], str, int], clf: TextClassifier) -> None:
    _, url, port = server
    big = b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 4\r\n\r\ngood"
    status, body = _status_and_json(_raw(port, big))
    assert status == 431 and body["status"] == 431
    many = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(60)) + b"\r\n"
    status, body = _status_and_json(_raw(port, many))
    assert status == 431 and "header fields" in str(body["error"])
    _normal(url, clf)


def test_headers_that_never_finish_time_out(server: tuple[subprocess.Popen[bytes], str, int],
                                            clf: TextClassifier) -> None:
    _, url, port = server
    start = time.monotonic()
    status, body = _status_and_json(_raw(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n", wait=10))
    assert status == 408 and body["status"] == 408
    assert time.monotonic() - start < 8  # the fixture's --header-timeout 3, and slack for a loaded machine
    _normal(url, clf)


def test_a_flood_of_idle_connections_is_shed(server: tuple[subprocess.Popen[bytes], str, int],
                                             clf: TextClassifier) -> None:
    """More half-open connections than the cap: the excess is refused at once, the rest time out, and normal
    clients are answered again within the header deadline."""
    proc, url, port = server
    before = _sockets(proc.pid)
    sockets = []
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /invocations HTTP/1.1\r\n")
            sockets.append(s)
        time.sleep(3.5)  # past the fixture's 3 s header deadline
        _normal(url, clf)
    finally:
        for s in sockets:
            s.close()
    deadline = time.monotonic() + 10  # the server lets go of them all: the module's next test starts from here
    while _sockets(proc.pid) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sockets(proc.pid) <= before


def _sockets(pid: int) -> int:
    """How many sockets a process holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_mixed_good_and_bad_requests_at_concurrency_32(server: tuple[subprocess.Popen[bytes], str, int],
                                                       clf: TextClassifier) -> None:
    _, _, port = server
    goods = [" ".join(["good", "bad", "great", "awful", "film", "plot"][j % 6] for j in range(i, i + 2 + i % 5))
             for i in range(96)]
    expected = clf.predict_proba(goods)
    bads: list[tuple[bytes, str, int]] = [(b'"\\ud800"', "application/json", 400), (b"[" * 5000, "application/json", 400),
                                          (b"caf\xe9", "application/x-text", 400), (b"", "application/x-text", 400),
                                          (b"x", "application/xml", 415)]

    def post(body: bytes, content_type: str | None) -> tuple[int, bytes]:
        """A connection a request, as 32 separate clients would send them (the standard library's client:
        httpx.post builds a client and its TLS context a call, 40 ms of CPU; one shared httpx client's pool
        failed now and then when the server closed a connection after an error)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/invocations", body=body,
                         headers={"Content-Type": content_type} if content_type else {})
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def ask(i: int) -> tuple[int, int, list[float] | None]:
        if i % 4 == 3:
            body, content_type, status = bads[i % len(bads)]
            return status, post(body, content_type)[0], None
        got, answer = post(goods[i % len(goods)].encode(), None)
        return 200, got, json.loads(answer)["probabilities"] if got == 200 else None

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(ask, range(384)))
    assert [got for _, got, _ in results] == [want for want, _, _ in results]
    answers = [(i, probs) for i, (_, _, probs) in enumerate(results) if probs is not None]
    np.testing.assert_allclose([p for _, p in answers], expected[[i % len(goods) for i, _ in answers]], atol=1e-5)


def test_sigterm_exits_zero(tiny_artifact: Path) -> None:
    port = _free_port()
    proc = forkserver.Popen([sys.executable, "-m", "textfit", "serve", "--model", str(tiny_artifact), "--port",
                             str(port), "--backend", "torch"], stderr=subprocess.DEVNULL)
    wait_for_ping(f"http://127.0.0.1:{port}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_undecodable_bytes_on_the_command_line_are_one_line(tiny_artifact: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "textfit", "predict", "--model", str(tiny_artifact), "--text",
                             b"\xff good"], capture_output=True, text=True, timeout=120)
    one_error_line(result, "text 1 holds an invalid Unicode character")
