"""The container, built and driven as SageMaker drives it: `docker run IMAGE train` and `docker run IMAGE serve`,
in network isolation (--network none), on a mounted /opt/ml. Run by `make container-test` (and so by CI where a
Docker engine can run); `make test` leaves it out."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

IMAGE = os.environ.get("TEXTFIT_IMAGE", "textfit")
REVIEWS = Path(__file__).parents[2] / "examples" / "reviews"
HP = {"epochs": "1", "batch_size": "32", "validation_split_ratio": "0.2"}


def docker(*args: str, timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def opt_ml(root: Path, hyperparameters: dict[str, str], rows: list[list[str]] | None = None) -> Path:
    """A SageMaker training container's /opt/ml: hyperparameters.json (strings) and the training channel."""
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (root / "input" / "data" / "training").mkdir(parents=True)
    if rows is None:
        shutil.copy(REVIEWS / "data.csv", root / "input" / "data" / "training" / "data.csv")
        shutil.copy(REVIEWS / "labels_info.json", root / "input" / "data" / "training" / "labels_info.json")
    else:
        with (root / "input" / "data" / "training" / "data.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def train(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return docker("run", "--rm", "--network", "none", "-v", f"{root}:/opt/ml", *extra, IMAGE, "train")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = opt_ml(tmp_path_factory.mktemp("job"), HP)
    done = train(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_a_training_job_writes_the_model(trained: Path) -> None:
    model = trained / "model"
    for name in ("config.json", "model.safetensors", "labels_info.json", "textfit.json", "onnx/model.onnx"):
        assert (model / name).is_file(), name
        assert (model / name).stat().st_mode & 0o777 == 0o644, name  # readable by the host's users
    manifest = json.loads((model / "textfit.json").read_text())
    assert manifest["model_id"] == "textfit-tc-all-minilm-l6-v2" and manifest["hyperparameters"]["epochs"] == 1
    assert not (trained / "output" / "failure").exists()


def test_bad_data_writes_the_failure_file(tmp_path: Path) -> None:
    root = opt_ml(tmp_path, HP, [["label", "text"], ["0", "bad film"], ["1", "good film"]])
    done = train(root)
    assert done.returncode == 2
    assert "looks like a header row" in (root / "output" / "failure").read_text()


def test_incremental_training_from_a_model_tar_gz(trained: Path, tmp_path: Path) -> None:
    root = opt_ml(tmp_path, HP)
    (root / "input" / "data" / "model").mkdir(parents=True)
    with tarfile.open(root / "input" / "data" / "model" / "model.tar.gz", "w:gz") as tar:
        for item in sorted((trained / "model").iterdir()):
            tar.add(item, arcname=item.name)
    done = train(root)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((root / "model" / "textfit.json").read_text())
    assert manifest["initialized_from"] == "/opt/ml/input/data/model/model.tar.gz"


def _wait_for(container: str, marker: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in docker("logs", container).stderr:
            return
        time.sleep(0.5)
    raise AssertionError(f"{marker!r} not in the logs of {container}")


def test_sigterm_checkpoints_and_a_new_job_resumes(tmp_path: Path) -> None:
    root = opt_ml(tmp_path, {**HP, "epochs": "4"})
    (root / "checkpoints").mkdir()
    name = f"textfit-test-{uuid.uuid4().hex[:8]}"
    started = docker("run", "-d", "--name", name, "--network", "none", "-v", f"{root}:/opt/ml", IMAGE, "train")
    assert started.returncode == 0, started.stderr
    try:
        _wait_for(name, "epoch=1 ")
        start = time.monotonic()
        docker("stop", "-t", "60", name)  # SIGTERM, as a spot interruption sends
        stopped_after = time.monotonic() - start
        code = int(docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip())
        logs = docker("logs", name).stderr
    finally:
        docker("rm", "-f", name)
    assert code == 143 and stopped_after < 30, (code, stopped_after, logs[-2000:])
    assert "stopped: training stopped by SIGTERM at epoch 2" in logs
    assert (root / "checkpoints" / "checkpoint.json").is_file() and not (root / "model" / "config.json").exists()
    resumed = train(root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from checkpoint /opt/ml/checkpoints: epoch 2" in resumed.stderr
    assert "Epoch 1/4" not in resumed.stderr and (root / "model" / "model.safetensors").is_file()


@pytest.fixture
def server(trained: Path) -> Iterator[tuple[str, float]]:
    """`docker run IMAGE serve` on the trained model, in network isolation; (container, seconds to /ping 200)."""
    name = f"textfit-serve-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    started = docker("run", "-d", "--name", name, "--network", "none", "-v", f"{trained / 'model'}:/opt/ml/model",
                     IMAGE, "serve")
    assert started.returncode == 0, started.stderr
    ready = None
    while time.monotonic() - start < 120:
        if ask(name, "/ping", method="GET")["status"] == 200:
            ready = time.monotonic() - start
            break
        time.sleep(0.1)
    assert ready is not None, docker("logs", name).stderr[-2000:]
    try:
        yield name, ready
    finally:
        docker("rm", "-f", name)


CLIENT = """
import json, sys, urllib.request, urllib.error
path, method, body, ctype, accept = sys.argv[1:6]
if body.startswith("@repeat:"):  # a large body, built here: argv cannot carry it
    count, text = body[len("@repeat:"):].split(":", 1)
    body = json.dumps([text] * int(count))
req = urllib.request.Request("http://127.0.0.1:8080" + path, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": ctype, "Accept": accept})
try:
    with urllib.request.urlopen(req, timeout=120) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode()}))
except Exception as e:
    print(json.dumps({"status": 0, "body": str(e)}))
"""


def ask(container: str, path: str, body: str = "", content_type: str = "application/x-text",
        accept: str = "application/json", method: str = "POST") -> dict[str, object]:
    """A request from inside the container: with --network none, the endpoint is reachable only there."""
    done = docker("exec", container, "python", "-c", CLIENT, path, method, body, content_type, accept, timeout=180)
    if done.returncode != 0:
        return {"status": 0, "body": done.stderr}
    return json.loads(done.stdout)


def test_serving_in_network_isolation(server: tuple[str, float], trained: Path) -> None:
    name, ready = server
    assert ready < 10, ready  # measured and printed below; the model's ONNX graph is in the artifact
    print(f"/ping answered 200 {ready:.1f} s after docker run")
    one = ask(name, "/invocations", "what a lovely, moving film", accept="application/json;verbose")
    assert one["status"] == 200
    answer = json.loads(str(one["body"]))
    from textfit import TextClassifier  # the same model on this side of the container: the same answer

    here = TextClassifier.load(trained / "model").classify(["what a lovely, moving film"])[0]
    assert answer["labels"] == here["labels"] == ["negative", "positive"]
    assert answer["predicted_label"] == here["predicted_label"]
    assert max(abs(a - b) for a, b in zip(answer["probabilities"], here["probabilities"])) < 1e-4
    batch = ask(name, "/invocations", json.dumps(["a dull, slow plot", "a wonderful film"]), "application/json")
    assert batch["status"] == 200 and len(json.loads(str(batch["body"]))) == 2
    params = ask(name, "/execution-parameters", method="GET")
    assert json.loads(str(params["body"])) == {"MaxConcurrentTransforms": 4, "MaxPayloadInMB": 6}
    assert ask(name, "/invocations", "x", "application/xml")["status"] == 415


def test_docker_stop_answers_the_request_in_flight_then_exits_zero(server: tuple[str, float]) -> None:
    name, _ = server
    text = "a lovely film, and a long one " * 8
    # A request of about 5 s of work on this machine, whatever its speed (the drain allows 30 s): the rate is
    # measured first, as the difference between 300 texts and one (docker exec's start-up cancels out).
    timings = []
    for count in (1, 300):
        start = time.monotonic()
        assert ask(name, "/invocations", f"@repeat:{count}:{text}", "application/json")["status"] == 200
        timings.append(time.monotonic() - start)
    count = max(300, min(3000, int(5.0 * 299 / max(timings[1] - timings[0], 1e-3))))
    print(f"299 texts took {timings[1] - timings[0]:.2f} s more than one: {count} texts in flight")
    client = subprocess.Popen(["docker", "exec", name, "python", "-c", CLIENT, "/invocations", "POST",
                               f"@repeat:{count}:{text}", "application/json", "application/json"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    start = time.monotonic()
    docker("stop", "-t", "30", name)
    elapsed = time.monotonic() - start
    out, _ = client.communicate(timeout=60)
    answer = json.loads(out)
    assert answer["status"] == 200 and len(json.loads(str(answer["body"]))) == count
    assert int(docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()) == 0 and elapsed < 30
