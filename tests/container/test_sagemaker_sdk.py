"""The image driven by the SageMaker Python SDK in local mode, as its users drive it (tests/container/sdk_job.py):
fit with string hyperparameters and a validation channel, fit again from that model, deploy, predict with every
content type and Accept, batch transform (MultiRecord by default and SingleRecord), and every answer compared with
`textfit predict` on the same texts. The SDK has no local mode for HyperparameterTuner (its LocalSagemakerClient
creates training, transform, model and endpoint resources only), so tuning is not driven here.

Run by `make container-test`, which installs the SDK in an environment of its own (TEXTFIT_SDK_PYTHON)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.container

IMAGE = os.environ.get("TEXTFIT_IMAGE", "textfit")
SDK_PYTHON = os.environ.get("TEXTFIT_SDK_PYTHON", "")
HERE = Path(__file__).parent


def _isolated_environment() -> dict[str, str]:
    """Dummy credentials, and every AWS endpoint a closed port on this machine: any call to AWS fails here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="example", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_EC2_METADATA_DISABLED="true",
               SAGEMAKER_CONFIG_DEFAULT_ADMIN_CONFIG_OVERRIDE="/nonexistent",
               SAGEMAKER_CONFIG_DEFAULT_USER_CONFIG_OVERRIDE="/nonexistent")
    return env


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    if not SDK_PYTHON or not Path(SDK_PYTHON).is_file():
        pytest.fail("TEXTFIT_SDK_PYTHON names no Python with the SageMaker SDK: run `make container-test`")
    workdir = tmp_path_factory.mktemp("sdk")
    done = subprocess.run([SDK_PYTHON, str(HERE / "sdk_job.py"), IMAGE, str(workdir)], capture_output=True,
                          text=True, timeout=1800, env=_isolated_environment())
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    return json.loads((workdir / "results.json").read_text(encoding="utf-8")), workdir


def _textfit_predict(model: str, texts: list[str]) -> list[dict[str, Any]]:
    """`textfit predict` on the host, from the model.tar.gz the SDK's job wrote, on the endpoint's engine (ONNX
    Runtime), so that probabilities agree to 1e-5."""
    args = [arg for text in texts for arg in ("--text", text)]
    done = subprocess.run([sys.executable, "-m", "textfit", "predict", "--model", model.removeprefix("file://"),
                           "--backend", "onnx", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(float(a) - b) < 1e-5 for a, b in zip(got, want))


def test_both_jobs_wrote_their_models(results: tuple[dict[str, Any], Path]) -> None:
    found, _ = results
    for key in ("first_model", "model"):
        assert found[key].startswith("file://") and Path(found[key].removeprefix("file://")).is_file(), key


def test_every_content_type_and_accept_answers_as_textfit_predict(results: tuple[dict[str, Any], Path]) -> None:
    found, _ = results
    expected = _textfit_predict(found["model"], found["texts"])
    assert len(found["predictions"]) == 16
    for case in found["predictions"]:
        answer, accept = case["answer"], case["accept"]
        want = expected[:1] if case["content_type"] == "application/x-text" else expected
        if accept == "text/csv":  # CSVDeserializer: rows of strings, the probabilities
            rows = [[float(v) for v in row] for row in answer]
        else:
            records = [answer] if isinstance(answer, dict) else answer
            rows = [r["probabilities"] for r in records]
            if accept.endswith(";verbose"):
                assert [r["predicted_label"] for r in records] == [w["predicted_label"] for w in want], case
        assert len(rows) == len(want), case
        assert all(_close(r, w["probabilities"]) for r, w in zip(rows, want)), case


def test_batch_transform_answers_one_line_per_input_line_in_order(results: tuple[dict[str, Any], Path]) -> None:
    found, _ = results
    lines = found["transform_lines"]
    texts = [next(csv.reader(io.StringIO(line))) if line.strip() else None for line in lines]
    texts = [None if t is None else (t[0] if len(t) == 1 else line) for t, line in zip(texts, lines)]
    predicted = _textfit_predict(found["model"], [t for t in texts if t is not None])
    for name, run in found["transforms"].items():
        out = run["output"]
        assert out.endswith("\n") and not out.endswith("\n\n"), (name, out)
        got = out[:-1].split("\n")
        assert len(got) == len(lines), (name, out)  # one to one: no blank line between records, none missing
        want = iter(predicted)
        for line, text in zip(got, texts):
            if text is None:
                assert line == "" if run["accept"].startswith("text/csv") else "error" in json.loads(line), (name, line)
                continue
            w = next(want)
            if run["accept"].startswith("text/csv"):
                label, *probs = next(csv.reader([line]))
                assert label == w["predicted_label"] and _close([float(p) for p in probs], w["probabilities"])
            else:
                record = json.loads(line)  # SingleRecord: one object, never a list of one
                assert isinstance(record, dict) and _close(record["probabilities"], w["probabilities"]), (name, line)
