"""Data-parallel training with 2 CPU processes (gloo) against one process, on the same data and seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import forkserver
from tests.conftest import build_tiny_bert, finish, free_port, make_rows, start_textfit, write_csv
from textfit.training.distributed import World, my_rows, split_message

# 52 rows, batch 10: the split leaves 42 training rows, so the last global batch (2 rows) gives each worker one
HP = ["--hp", "epochs=3", "--hp", "batch_size=10", "--hp", "learning_rate=0.01", "--hp", "optimizer=adam",
      "--hp", "precision=fp32", "--hp", "dropout_rate=0", "--hp", "training_recipe=finetune"]


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout: then 2 workers and 1 must compute the same gradients."""
    return build_tiny_bert(tmp_path_factory.mktemp("bert-no-dropout"), hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


def start(model: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return start_textfit("train", "--train", str(data), "--model-id", str(model), "--output", str(out), *HP, *extra)


def test_the_batch_is_split_across_workers() -> None:
    assert my_rows(list(range(10)), World(0, 3)) == [0, 3, 6, 9]
    assert my_rows(list(range(10)), World(2, 3)) == [2, 5, 8]
    assert split_message(32, World(0, 3)) == ("batch_size 32 is split across 3 workers: 11 rows on 2 of them, "
                                              "10 on the others")


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_every_worker_gets_rows_in_every_step(world: int) -> None:
    """Any row count, batch size and worker count: every global batch has a row for each worker, and an
    epoch holds every row once."""
    import random

    from textfit.training.loop import _plan

    rng = random.Random(world)
    for _ in range(300):
        rows, batch = rng.randint(world, 400), rng.randint(1, 70)
        lengths = [rng.randint(1, 128) for _ in range(rows)]
        plan = _plan(lengths, batch, rng.randint(0, 99), World(0, world))
        assert sorted(r for group in plan for r in group) == list(range(rows))
        assert all(len(my_rows(group, World(rank, world))) >= 1 for group in plan for rank in range(world)), (
            rows, batch)


@pytest.mark.parametrize("recipe", ["finetune", "fewshot"])
def test_two_workers_match_one(no_dropout_bert: Path, tmp_path: Path, recipe: str) -> None:
    """The small-data recipe too: each worker embeds its share for the probe, and all fit the same one."""
    data = write_csv(tmp_path / "train" / "data.csv", make_rows(52)).parent
    extra = ("--hp", f"training_recipe={recipe}", "--hp", "validation_split_ratio=0.2")
    # side by side: one thread each, so the job of one process computes as it would alone
    started = start(no_dropout_bert, data, tmp_path / "one", *extra), start(no_dropout_bert, data, tmp_path / "two",
                                                                          "--nproc-per-node", "2", "--master-port", str(free_port()), *extra)
    one, two = (finish(p) for p in started)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "train", "two"]  # one artifact
    assert two.stderr.count("Epoch 1/3") == 1  # only rank 0 logs the metric lines
    assert len(two.stdout.strip().splitlines()) == 1  # and prints the one summary of the job
    assert "batch_size 10 is split across 2 workers: 5 rows each" in two.stderr
    a = json.loads((tmp_path / "one" / "textfit.json").read_text())
    b = json.loads((tmp_path / "two" / "textfit.json").read_text())
    assert b["workers"] == 2 and a["workers"] == 1
    for x, y in zip(a["epochs"], b["epochs"], strict=True):
        assert y["val_accuracy"] == x["val_accuracy"]  # over the whole validation set, all-reduced
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4)  # float sums in another order
        assert y["val_loss"] == pytest.approx(x["val_loss"], abs=1e-4)


def test_a_killed_worker_stops_the_job_with_a_message(no_dropout_bert: Path, tmp_path: Path) -> None:
    """41 rows in batches of 10, no validation: the last global batch holds one row, and each worker still gets
    rows in every step (two whole epochs run before a worker is killed)."""
    data = write_csv(tmp_path / "train" / "data.csv", make_rows(41)).parent
    cmd = [sys.executable, "-m", "textfit", "train", "--train", str(data), "--model-id", str(no_dropout_bert),
           "--output", str(tmp_path / "out"), *HP, "--hp", "epochs=20000", "--hp", "validation_split_ratio=0",
           "--nproc-per-node", "2", "--master-port", str(free_port())]
    proc = forkserver.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if line.startswith("Epoch 3/") or time.monotonic() > deadline:
            break
    else:
        pytest.fail("the job ended before its third epoch")
    assert line.startswith("Epoch 3/"), line  # two whole epochs of 41 rows on two workers
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    rest = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 2
    assert "error: distributed training failed" in rest and "the other workers were stopped" in rest
    assert not (tmp_path / "out").exists()


def _children(pid: int) -> list[int]:
    """Worker processes of the launcher: its spawned children, not multiprocessing's resource tracker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)
