"""Nothing of the user's is ever deleted or changed: every folder textfit writes into is new, empty or its own.

The exact cases that once deleted a user's files, each refusal's one line, replacing textfit's own folders, and
a property test: for random layouts of user files around the paths a command is given, no user file is ever
modified or removed, whatever the command's outcome (a signal mid-run included).
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import forkserver
from tests.conftest import FAST, kill, make_rows, run_until, write_csv
from textfit.cli import main
from textfit.core import ownership
from textfit.errors import ArtifactError
from textfit.model import artifact

HP = {**FAST, "epochs": "2", "max_seq_length": "16"}
HP_ARGS = [arg for name, value in HP.items() for arg in ("--hp", f"{name}={value}")]


def train(tiny_bert: Path, channel: Path, *args: str) -> int:
    return main(["train", "--model-id", str(tiny_bert), "--train", str(channel), *HP_ARGS, "--onnx", "none", *args])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root by its path relative to root, with its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------- the reported cases

def test_a_checkpoint_dir_holding_a_users_file_is_refused_and_left_as_it_was(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("t\n")
    assert train(tiny_bert, channel, "--checkpoint-dir", str(precious), "--output", str(tmp_path / "out")) == 2
    line = one_error_line(capsys)
    assert "--checkpoint-dir" in line and "thesis.txt" in line
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    assert (precious / "thesis.txt").read_text() == "t\n"
    assert not (tmp_path / "out").exists()


def test_the_training_channel_as_checkpoint_dir_is_refused(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(channel)
    assert train(tiny_bert, channel, "--checkpoint-dir", str(channel), "--output", str(tmp_path / "out")) == 2
    assert "overlaps --train" in one_error_line(capsys)
    assert snapshot(channel) == before
    assert sorted(p.name for p in channel.iterdir()) == ["data.csv"]


@pytest.mark.parametrize("where", ["inside the channel", "holding the channel", "the output", "inside the output"])
def test_a_checkpoint_dir_overlapping_a_channel_or_the_output_is_refused(
        where: str, tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    ckpt = {"inside the channel": channel / "ckpt", "holding the channel": channel.parent,
            "the output": out, "inside the output": out / "ckpt"}[where]
    before = snapshot(tmp_path)
    assert train(tiny_bert, channel, "--checkpoint-dir", str(ckpt), "--output", str(out)) == 2
    assert "overlaps --" in one_error_line(capsys)
    assert snapshot(tmp_path) == before
    assert not out.exists() and not (channel / "ckpt").exists()


def test_a_checkpoint_dir_that_is_a_file_is_refused_and_not_moved(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ckpt").write_text("mine")
    assert train(tiny_bert, channel, "--checkpoint-dir", str(tmp_path / "ckpt"), "--output", str(tmp_path / "o")) == 2
    assert "is not a folder" in one_error_line(capsys)
    assert (tmp_path / "ckpt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "train"]  # no hidden .ckpt.old-PID


def test_a_checkpoint_dir_holding_a_textfit_model_is_refused(
        tiny_bert: Path, tiny_artifact: Path, channel: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    model = Path(shutil.copytree(tiny_artifact, tmp_path / "model"))
    before = snapshot(model)
    assert train(tiny_bert, channel, "--checkpoint-dir", str(model), "--output", str(tmp_path / "o")) == 2
    assert "a textfit artifact folder" in one_error_line(capsys)
    assert snapshot(model) == before


def test_a_checkpoint_dir_of_textfit_is_written_marked_and_used_again(
        tiny_bert: Path, channel: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    assert train(tiny_bert, channel, "--checkpoint-dir", str(ckpt), "--output", str(tmp_path / "a")) == 0
    assert sorted(p.name for p in ckpt.iterdir()) == [".textfit", "checkpoint.json", "checkpoint.safetensors"]
    assert ownership.owner(ckpt) == (ownership.CHECKPOINT,
                                     frozenset({".textfit", "checkpoint.json", "checkpoint.safetensors"}))
    # the same run again finds its finished checkpoint: its folder is textfit's, so it is read, not refused
    assert train(tiny_bert, channel, "--checkpoint-dir", str(ckpt), "--output", str(tmp_path / "b")) == 0


# ----------------------------------------------------------------------------------------- output and --overwrite

def test_overwrite_replaces_an_earlier_artifact_but_never_a_users_file_in_it(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert train(tiny_bert, channel, "--output", str(out)) == 0
    first = json.loads((out / "textfit.json").read_text())["created"]
    assert ".textfit" in {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out)
    assert train(tiny_bert, channel, "--output", str(out), "--overwrite") == 2
    line = one_error_line(capsys)
    assert "notes.txt" in line and "textfit did not write" in line
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    assert train(tiny_bert, channel, "--output", str(out), "--overwrite", "--hp", "seed=3") == 0
    assert json.loads((out / "textfit.json").read_text())["hyperparameters"]["seed"] == 3
    assert first  # the first run's manifest was there to be replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no .out.old-* left


def test_overwrite_never_replaces_a_folder_of_user_files(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("...")
    (out / "config.json").write_text("{}")  # a name textfit also writes: still the user's
    before = snapshot(out)
    assert train(tiny_bert, channel, "--output", str(out), "--overwrite") == 2
    assert "files textfit did not write (chapter1.tex, config.json)" in one_error_line(capsys)
    assert snapshot(out) == before


def test_an_unmarked_artifact_of_an_earlier_textfit_is_still_replaced_with_overwrite(
        tiny_artifact: Path, tiny_bert: Path, channel: Path, tmp_path: Path) -> None:
    import shutil

    out = Path(shutil.copytree(tiny_artifact, tmp_path / "out"))
    (out / ownership.MARKER).unlink(missing_ok=True)
    assert ownership.owner(out) is not None and ownership.foreign_entries(out) == []
    assert train(tiny_bert, channel, "--output", str(out), "--overwrite") == 0
    assert (out / ownership.MARKER).is_file()


def test_a_tarball_of_the_users_is_never_replaced(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out.tar.gz").write_bytes(b"my backup")
    assert train(tiny_bert, channel, "--output", str(tmp_path / "out"), "--tar", "--overwrite") == 2
    assert "out.tar.gz: exists and is not a model tarball textfit wrote" in one_error_line(capsys)
    assert (tmp_path / "out.tar.gz").read_bytes() == b"my backup"
    assert not (tmp_path / "out").exists()  # refused before training


def test_textfits_own_tarball_is_replaced_only_with_overwrite(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert train(tiny_bert, channel, "--output", str(out), "--tar") == 0
    import shutil

    shutil.rmtree(out)
    assert train(tiny_bert, channel, "--output", str(out), "--tar") == 2
    assert "pass --overwrite" in one_error_line(capsys)
    assert train(tiny_bert, channel, "--output", str(out), "--tar", "--overwrite") == 0


# -------------------------------------------------------------------------------------- evaluate, predict, store

def test_evaluate_never_writes_over_a_users_metrics(
        tiny_artifact: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": 1}')
    assert main(["evaluate", "--model", str(tiny_artifact), "--data", str(channel), "--output", str(out)]) == 2
    assert "metrics.json" in one_error_line(capsys)
    assert (out / "metrics.json").read_text() == '{"mine": 1}'
    fresh = tmp_path / "fresh"
    assert main(["evaluate", "--model", str(tiny_artifact), "--data", str(channel), "--output", str(fresh)]) == 0
    assert main(["evaluate", "--model", str(tiny_artifact), "--data", str(channel), "--output", str(fresh)]) == 0
    assert ownership.owner(fresh) is not None and ownership.owner(fresh)[0] == ownership.EVALUATION  # type: ignore[index]


def test_predict_never_replaces_a_file_it_did_not_write(
        tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.csv"
    data.write_text("0,the film was bad\n")
    assert main(["predict", "--model", str(tiny_artifact), "--text", "good", "--output", str(data)]) == 2
    assert "is not a predictions file textfit wrote" in one_error_line(capsys)
    assert data.read_text() == "0,the film was bad\n"
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", str(tiny_artifact), "--text", "good", "--output", str(out)]) == 0
    assert main(["predict", "--model", str(tiny_artifact), "--text", "bad", "--text", "good",
                 "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_a_staged_folder_never_replaces_one_holding_user_files(tmp_path: Path) -> None:
    """The last guard under every caller's check: the rename that replaces a folder refuses user files."""
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "checkpoint.json").write_text(json.dumps({"fingerprint": "x", "loop": {}}))
    (target / "mine.txt").write_text("keep")
    with (pytest.raises(ArtifactError, match="mine.txt, which textfit did not write"),
          artifact.staged(target, folder=True, kind=ownership.CHECKPOINT) as tmp):
        (tmp / "checkpoint.json").write_text("{}")
    assert (target / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_stale_temporary_of_a_dead_run_is_removed_only_if_textfit_marked_it(tmp_path: Path) -> None:
    dead = 2 ** 22 + 12345  # above any pid_max default: no such process
    mine = tmp_path / f".out.tmp-{dead}-abc"
    mine.mkdir()
    ownership.mark(mine, ownership.ARTIFACT)
    theirs = tmp_path / f".out.tmp-{dead}-xyz"
    theirs.mkdir()
    (theirs / "data.txt").write_text("keep")
    with artifact.staged(tmp_path / "out", folder=True, kind=ownership.ARTIFACT) as tmp:
        (tmp / "config.json").write_text("{}")
    assert not mine.exists()
    assert (theirs / "data.txt").read_text() == "keep"


def test_the_store_never_replaces_a_folder_of_the_users(tiny_bert: Path, tmp_path: Path) -> None:
    from textfit.errors import TextfitError
    from textfit.model import store

    store_root = tmp_path / "store"
    target = store.store_path("my-model", store_root)
    target.mkdir(parents=True)
    (target / "notes.md").write_text("mine")
    with pytest.raises(TextfitError, match="notes.md"):
        store.import_model("my-model", tiny_bert, store_root)
    assert (target / "notes.md").read_text() == "mine"
    (target / "notes.md").unlink()
    assert store.import_model("my-model", tiny_bert, store_root) == target
    assert store.import_model("my-model", tiny_bert, store_root) == target  # its own entry: replaced


# ------------------------------------------------------------------------------------------- the property test

NAMES = ["thesis.txt", "data.csv", "config.json", "checkpoint.json", "model.safetensors", "README.md", "textfit.json",
         "notes", ".hidden"]
PLACES = ["ckpt", "out", "beside", "train"]


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, object]:
    files = draw(st.lists(st.tuples(st.sampled_from(PLACES), st.sampled_from(NAMES), st.binary(max_size=8)),
                          max_size=4, unique_by=lambda f: (f[0], f[1])))
    ckpt = draw(st.sampled_from(["ckpt", "train", "train/ckpt", "out", "out/ckpt", "beside", "beside/x/y", "file"]))
    out = draw(st.sampled_from(["out", "ckpt/out", "beside/out", "train/out", "beside"]))
    return {"files": files, "ckpt": ckpt, "out": out, "overwrite": draw(st.booleans()), "tar": draw(st.booleans())}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=False)
@given(layout=layouts())
def test_no_user_file_is_ever_modified_or_removed(layout: dict[str, object], tiny_bert: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("layout")
    write_csv(root / "train" / "data.csv", make_rows(24))
    for place, name, content in layout["files"]:  # type: ignore[attr-defined]
        if place == "train" and name == "data.csv":
            continue
        (root / place).mkdir(parents=True, exist_ok=True)
        (root / place / name).write_bytes(content)
    if layout["ckpt"] == "file":
        (root / "file").write_bytes(b"a file")
    before = snapshot(root)
    args = ["--checkpoint-dir", str(root / str(layout["ckpt"])), "--output", str(root / str(layout["out"]))]
    args += ["--overwrite"] * bool(layout["overwrite"]) + ["--tar"] * bool(layout["tar"])
    code = train(tiny_bert, root / "train", *args)
    assert code in (0, 2)
    after = snapshot(root)
    for path, digest in before.items():
        assert after.get(path) == digest, f"{path} was {'changed' if path in after else 'removed'}: {layout}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_mid_run_leaves_every_user_file_as_it_was(signum: int, tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "train" / "data.csv", make_rows(2000))
    (tmp_path / "notes.txt").write_text("beside the output")
    (tmp_path / "train" / "labels.txt").write_text("in the channel")
    (tmp_path / "out.tar.gz.txt").write_text("a near name")
    before = snapshot(tmp_path)
    cmd = [sys.executable, "-m", "textfit", "train", "--model-id", str(tiny_bert), "--train",
           str(tmp_path / "train"), *HP_ARGS, "--hp", "epochs=3", "--checkpoint-dir", str(tmp_path / "ckpt"),
           "--output", str(tmp_path / "out"), "--tar"]
    proc = run_until(cmd, "epoch=1 ")
    if signum == signal.SIGKILL:
        kill(proc)
    else:
        proc.send_signal(signum)
        proc.wait(timeout=60)
        assert proc.stderr is not None
        proc.stderr.close()
    after = snapshot(tmp_path)
    assert {p: after.get(p) for p in before} == before
    # the rerun resumes from textfit's own checkpoint folder and finishes
    done = forkserver.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p: snapshot(tmp_path).get(p) for p in before} == before


def test_tune_never_writes_into_a_folder_of_the_users(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "trials.csv").write_text("mine")
    assert main(["tune", "--train", str(channel), "--model-id", str(tiny_bert), "--output", str(out),
                 "--max-jobs", "1"]) == 2
    assert "trials.csv" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["trials.csv"]
    assert (out / "trials.csv").read_text() == "mine"
