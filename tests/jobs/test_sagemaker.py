"""The SageMaker container contract, end to end in a temporary /opt/ml."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import FAST, make_rows, write_csv
from textfit import TextClassifier
from textfit.cli import main
from textfit.core.environment import serve_environment
from textfit.jobs.sagemaker import training_job
from textfit.model import artifact


def container(root: Path, tiny_bert: Path, rows: int = 48, **extra: str) -> Path:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    hp = {**FAST, "model_id": str(tiny_bert), "_tuning_objective_metric": "validation:accuracy",
          "sagemaker_program": "transfer_learning.py", **extra}
    (config / "hyperparameters.json").write_text(json.dumps(hp))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    write_csv(root / "input" / "data" / "training" / "data.csv", make_rows(rows))
    (root / "model").mkdir()  # SageMaker creates it, empty
    return root


def test_a_training_job_end_to_end(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = container(tmp_path / "ml", tiny_bert)
    job = training_job(root)
    assert job.current_host == "algo-1" and job.model is None and job.validation is None
    assert main(["sagemaker", "train", "--prefix", str(root)]) == 0
    artifact.check_complete(root / "model")
    assert not (root / "output" / "failure").exists()
    logs = capsys.readouterr().err
    assert re.search(r"val_accuracy: [0-9.]+", logs) and "Ignoring hyperparameter _tuning_objective_metric" in logs
    manifest = json.loads((root / "model" / "textfit.json").read_text())
    assert manifest["model_id"] == str(tiny_bert)


def test_bad_data_writes_the_failure_file_and_no_model(tiny_bert: Path, tmp_path: Path) -> None:
    root = container(tmp_path / "ml", tiny_bert)
    (root / "input" / "data" / "training" / "data.csv").write_text("label,text\n0,good\n1,bad\n")
    assert main(["sagemaker", "train", "--prefix", str(root)]) == 2
    failure = (root / "output" / "failure").read_text()
    assert "line 1: this looks like a header row" in failure and len(failure) <= 1025
    assert list((root / "model").iterdir()) == []


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"epochs": ', "Expecting value"),
    (b'{"epochs": "\xff"}', "can't decode byte 0xff"),
    (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "maximum recursion depth"),
])
def test_an_unreadable_hyperparameters_file_is_the_failure_reason(tiny_bert: Path, tmp_path: Path, content: bytes,
                                                                  reason: str) -> None:
    root = container(tmp_path / "ml", tiny_bert)
    (root / "input" / "config" / "hyperparameters.json").write_bytes(content)
    assert main(["sagemaker", "train", "--prefix", str(root)]) == 2
    failure = (root / "output" / "failure").read_text()
    assert "hyperparameters.json: cannot read the hyperparameters" in failure and reason in failure
    assert list((root / "model").iterdir()) == []


def test_a_missing_training_channel(tmp_path: Path) -> None:
    (tmp_path / "ml").mkdir()
    assert main(["sagemaker", "train", "--prefix", str(tmp_path / "ml")]) == 2
    assert "no training channel" in (tmp_path / "ml" / "output" / "failure").read_text()


def test_incremental_training_through_the_model_channel(tiny_bert: Path, tmp_path: Path) -> None:
    first = container(tmp_path / "first", tiny_bert)
    assert main(["sagemaker", "train", "--prefix", str(first)]) == 0
    artifact.write_tarball(first / "model", tmp_path / "model.tar.gz")  # what SageMaker uploads

    second = container(tmp_path / "second", tiny_bert, epochs="1")
    (second / "input" / "data" / "model").mkdir(parents=True)
    shutil.copy(tmp_path / "model.tar.gz", second / "input" / "data" / "model" / "model.tar.gz")
    assert main(["sagemaker", "train", "--prefix", str(second)]) == 0
    manifest = json.loads((second / "model" / "textfit.json").read_text())
    assert manifest["initialized_from"].endswith("model.tar.gz")
    assert TextClassifier.load(second / "model").classes_ == ["0", "1"]


def test_sm_channel_variables_win(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = container(tmp_path / "ml", tiny_bert)
    elsewhere = write_csv(tmp_path / "elsewhere" / "data.csv", make_rows(20)).parent
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(elsewhere))
    monkeypatch.setenv("SM_HOSTS", '["algo-1", "algo-2"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")
    job = training_job(root)
    assert job.train == elsewhere and job.hosts == ["algo-1", "algo-2"] and job.current_host == "algo-2"


def test_serving_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serve_environment().port == 8080 and serve_environment().max_payload_mb == 6.0
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9000")
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20")
    monkeypatch.setenv("SAGEMAKER_BATCH", "true")
    monkeypatch.setenv("SAGEMAKER_BATCH_STRATEGY", "SingleRecord")
    monkeypatch.setenv("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "2")
    env = serve_environment()
    assert (env.port, env.max_payload_mb, env.batch, env.batch_strategy, env.max_concurrent_transforms) == (
        9000, 20.0, True, "SINGLE_RECORD", 2)


def test_a_multi_instance_job_maps_onto_one_launch(tiny_bert: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from textfit.jobs.sagemaker import launch_plan

    root = container(tmp_path / "ml", tiny_bert)
    assert launch_plan(training_job(root), gpus=0) is None  # one CPU instance: no launcher at all
    monkeypatch.setenv("SM_HOSTS", '["algo-2", "algo-1", "algo-3"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")
    plan = launch_plan(training_job(root), gpus=4)
    assert plan is not None
    assert (plan.nnodes, plan.node_rank, plan.master_addr, plan.nproc_per_node) == (3, 1, "algo-1", 4)
