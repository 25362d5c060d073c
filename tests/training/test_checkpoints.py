"""Spot-safe training: SIGTERM stops at a step boundary with a checkpoint, and the resumed run ends with the
weights of an uninterrupted one; a SIGKILL loses at most the epoch in progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import forkserver
from tests.conftest import free_port, kill, make_rows, run_until, write_csv
from textfit import TextClassifier
from textfit.data.channels import read_channel
from textfit.errors import TextfitError

HP = {"epochs": "3", "batch_size": "8", "learning_rate": "0.01", "optimizer": "adamw", "precision": "fp32",
      "max_seq_length": "16"}
HP_ARGS = [arg for name, value in HP.items() for arg in ("--hp", f"{name}={value}")]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("ckpt-data") / "train" / "data.csv", make_rows(2000)).parent


def _cmd(tiny_bert: Path, data: Path, out: Path, ckpt: Path) -> list[str]:
    return [sys.executable, "-m", "textfit", "train", "--train", str(data), "--model-id", str(tiny_bert),
            "--output", str(out), "--checkpoint-dir", str(ckpt), *HP_ARGS]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("whole")
    done = forkserver.run(_cmd(tiny_bert, data, root / "model", root / "ckpt"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "model"


def test_sigterm_checkpoints_and_the_rerun_ends_where_an_uninterrupted_run_does(
        tiny_bert: Path, data: Path, tmp_path: Path, uninterrupted: Path) -> None:
    cmd = _cmd(tiny_bert, data, tmp_path / "model", tmp_path / "ckpt")
    proc = run_until(cmd, "epoch=1 ")  # epoch 1 is done: epoch 2 is under way
    time.sleep(0.7)  # into epoch 2 (200 steps, about 2 s)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped: training stopped by SIGTERM at epoch 2, step" in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()
    state = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert state["loop"]["epoch"] == 2 and state["loop"]["step"] > 0  # mid-epoch
    resumed = forkserver.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from checkpoint {tmp_path / 'ckpt'}: epoch 2, step {state['loop']['step']}" in resumed.stderr
    _same_weights(tmp_path / "model", uninterrupted)
    whole = json.loads((uninterrupted / "textfit.json").read_text())["epochs"]
    again = json.loads((tmp_path / "model" / "textfit.json").read_text())["epochs"]
    for a, b in zip(whole, again, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6) and b["val_accuracy"] == a["val_accuracy"]


def test_a_sigkill_loses_at_most_the_epoch_in_progress(tiny_bert: Path, data: Path, tmp_path: Path,
                                                       uninterrupted: Path) -> None:
    cmd = _cmd(tiny_bert, data, tmp_path / "model", tmp_path / "ckpt")
    proc = run_until(cmd, "epoch=1 ")
    deadline = time.monotonic() + 30
    while not (tmp_path / "ckpt" / "checkpoint.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)  # the epoch-end checkpoint is written just after the epoch's line
    kill(proc)
    # as textfit 0.1 wrote it: its warm-up was a plain function, saved by LambdaLR as null; that checkpoint resumes
    state = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert state["schedule"]["lr_lambdas"] and all(isinstance(f, dict) for f in state["schedule"]["lr_lambdas"])
    state["schedule"]["lr_lambdas"] = [None] * len(state["schedule"]["lr_lambdas"])
    (tmp_path / "ckpt" / "checkpoint.json").write_text(json.dumps(state))
    resumed = forkserver.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from checkpoint" in resumed.stderr and "epoch 2, step 0" in resumed.stderr
    assert "Epoch 1/3" not in resumed.stderr
    _same_weights(tmp_path / "model", uninterrupted)


def _copy_checkpoint(finished_run: Path, to: Path, **changes: object) -> Path:
    import shutil

    shutil.copytree(finished_run, to)
    state = json.loads((to / "checkpoint.json").read_text())
    (to / "checkpoint.json").write_text(json.dumps({**state, **changes}))
    return to


def test_an_unfinished_checkpoint_of_another_run_is_refused(tiny_bert: Path, data: Path, tmp_path: Path,
                                                            uninterrupted: Path) -> None:
    ckpt = _copy_checkpoint(uninterrupted.parent / "ckpt", tmp_path / "ckpt", finished=False)
    before = (ckpt / "checkpoint.json").read_bytes()
    with pytest.raises(TextfitError, match="another training run that has not finished"):
        TextClassifier(str(tiny_bert), {**HP, "learning_rate": "0.02"}).fit(read_channel(data), checkpoint_dir=ckpt)
    assert (ckpt / "checkpoint.json").read_bytes() == before
    # a checkpoint written before runs said whether they finished is taken as unfinished
    state = json.loads(before)
    del state["finished"]
    (ckpt / "checkpoint.json").write_text(json.dumps(state))
    with pytest.raises(TextfitError, match="has not finished"):
        TextClassifier(str(tiny_bert), {**HP, "learning_rate": "0.02"}).fit(read_channel(data), checkpoint_dir=ckpt)


def test_a_finished_run_s_checkpoint_gives_way_to_a_new_job(tiny_bert: Path, data: Path, tmp_path: Path,
                                                            uninterrupted: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """Every job given the same checkpoint location: the next one starts fresh over a finished run's checkpoint,
    which stays until the new run's own first checkpoint is written."""
    finished = json.loads((uninterrupted.parent / "ckpt" / "checkpoint.json").read_text())
    assert finished["finished"] is True and finished["loop"]["epoch"] == 4
    ckpt = _copy_checkpoint(uninterrupted.parent / "ckpt", tmp_path / "ckpt")

    class Hopeless(Exception):
        pass

    def give_up(epoch: int, metrics: object) -> None:
        raise Hopeless  # the new run fails before its first checkpoint: the old one must still be there

    other = {**HP, "learning_rate": "0.02", "epochs": "1"}
    with pytest.raises(Hopeless):
        TextClassifier(str(tiny_bert), other).fit(read_channel(data), checkpoint_dir=ckpt, on_epoch=give_up)
    assert json.loads((ckpt / "checkpoint.json").read_text()) == finished
    with caplog.at_level("INFO", logger="textfit"):
        TextClassifier(str(tiny_bert), other).fit(read_channel(data), checkpoint_dir=ckpt)
    assert "is of an earlier training run that finished: starting afresh" in caplog.text
    assert "Resuming" not in caplog.text
    mine = json.loads((ckpt / "checkpoint.json").read_text())
    assert mine["fingerprint"] != finished["fingerprint"] and mine["finished"] is True
    assert mine["loop"]["epoch"] == 2 and len(mine["loop"]["history"]) == 1


def test_the_sagemaker_job_checkpoints_when_its_folder_exists(tmp_path: Path) -> None:
    from textfit.jobs.sagemaker import training_job

    write_csv(tmp_path / "input" / "data" / "training" / "data.csv", make_rows(10))
    assert training_job(tmp_path).checkpoint_dir is None
    os.makedirs(tmp_path / "checkpoints")
    assert training_job(tmp_path).checkpoint_dir == tmp_path / "checkpoints"


def test_a_distributed_job_checkpoints_on_sigterm_and_resumes(tiny_bert: Path, tmp_path: Path) -> None:
    data = write_csv(tmp_path / "train" / "data.csv", make_rows(1600)).parent
    cmd = [*_cmd(tiny_bert, data, tmp_path / "model", tmp_path / "ckpt"), "--hp", "epochs=2", "--nproc-per-node", "2", "--master-port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = forkserver.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**env, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("epoch=1 "):
            break
    time.sleep(0.7)
    proc.send_signal(signal.SIGTERM)  # to the launcher, as `docker stop` sends it to PID 1
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, err[-2000:]
    stopped = [line for line in err.splitlines() if "stopped" in line]  # one line for the job, from the launcher
    assert len(stopped) == 1 and "Traceback" not in err, err[-2000:]
    assert stopped[0].startswith("stopped: distributed training stopped by SIGTERM at epoch 2, step ")
    assert json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())["loop"]["epoch"] == 2
    resumed = forkserver.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from checkpoint" in resumed.stderr and "epoch 2, step" in resumed.stderr
    assert json.loads((tmp_path / "model" / "textfit.json").read_text())["workers"] == 2


def test_a_distributed_job_without_checkpoints_stops_on_sigterm_with_one_line(tiny_bert: Path, tmp_path: Path
                                                                               ) -> None:
    # 800 rows: the second epoch (80 steps) is still under way when the signal, sent on the first epoch's line,
    # arrives
    data = write_csv(tmp_path / "train" / "data.csv", make_rows(800)).parent
    cmd = [*_cmd(tiny_bert, data, tmp_path / "model", tmp_path / "ckpt"), "--hp", "epochs=2", "--nproc-per-node", "2", "--master-port", str(free_port())]
    cmd.remove("--checkpoint-dir")
    cmd.remove(str(tmp_path / "ckpt"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = forkserver.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("epoch=1 "):
            break
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, err[-2000:]
    assert time.monotonic() - started < 25, "the workers hung until the launcher's kill"  # torch waits 30 s
    stopped = [line for line in err.splitlines() if "stopped" in line]
    assert stopped == ["stopped: distributed training stopped by SIGTERM; nothing was written (with a checkpoint "
                       "folder the workers write one at their last step, and the same command resumes from it)"], err
    assert "Traceback" not in err and not (tmp_path / "model").exists() and not (tmp_path / "ckpt").exists()
