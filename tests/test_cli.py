from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, kill, make_rows, run_until, write_csv
from textfit.cli import build_parser, main

FAST_ARGS = [arg for name, value in FAST.items() for arg in ("--hp", f"{name}={value}")]


def run(tiny_bert: Path, *args: str) -> int:
    return main(["-q", "train", "--model-id", str(tiny_bert), *FAST_ARGS, *args])


def test_train_then_predict(tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps({"epochs": "6", "_tuning_objective_metric": "validation:accuracy"}))
    out = tmp_path / "model"
    assert run(tiny_bert, "--train", str(channel), "--output", str(out), "--hyperparameters", str(hp_file), "--tar") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((out / "textfit.json").read_text())
    kept = manifest["epochs"][manifest["best_epoch"] - 1]
    assert summary["output"] == str(out) and summary["val_accuracy"] == kept["val_accuracy"]
    assert summary["val_accuracy"] == max(e["val_accuracy"] for e in manifest["epochs"])
    assert (tmp_path / "model.tar.gz").is_file()
    assert json.loads((out / "textfit.json").read_text())["hyperparameters"]["epochs"] == 4  # --hp wins over the file
    assert main(["predict", "--model", str(out), "--text", "good great film", "--text", "awful bad"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r) for r in records] == [{"probabilities", "labels", "predicted_label", "line"}] * 2
    assert [r["line"] for r in records] == [1, 2]  # with --text, the text's place among them
    assert records[0]["labels"] == ["0", "1"] and records[0]["predicted_label"] == "1"


def bad(tmp_path: Path, content: bytes) -> Path:
    (tmp_path / "bad").mkdir(exist_ok=True)
    (tmp_path / "bad" / "data.csv").write_bytes(content)
    return tmp_path / "bad"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file or folder"),
        (b"", "the file is empty"),
        (b"label,text\n0,good\n1,bad\n", "line 1: this looks like a header row"),
        (b"0,good\n1,bad,film\n", "line 2: expected 2 columns"),
        (b"0,good\n1,bad\nx,film\n0,y\n", "line 3: label 'x' is not an integer"),
        (b"0,good\n1,\n", "line 2: the text is empty"),
        (b"0,good\n1,caf\xe9\n", "line 2: the file is not valid UTF-8"),
        (b"1,good\n1,bad\n", "a classifier needs at least 2 classes"),
        (b"0,good\n1,bad\n", "2 rows are too few to hold out validation_split_ratio=0.2"),
    ],
)
def test_bad_data_one_message_no_traceback_nothing_written(
    tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    train = bad(tmp_path, content) if content is not None else tmp_path / "missing"
    out = tmp_path / "out"
    assert run(tiny_bert, "--train", str(train), "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: ") and message in err and "Traceback" not in err
    assert content is None or str(train / "data.csv") in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_validation_with_classes_the_training_data_lacks(tiny_bert: Path, channel: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    val = write_csv(tmp_path / "val" / "data.csv", [(0, "good film"), (7, "bad film")])
    assert run(tiny_bert, "--train", str(channel), "--validation", str(val.parent), "--output", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert f"{val}, line 2: label 7 is not among the classes" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hp", "learning_rate=5"], "learning_rate=5.0 is out of range"),
        (["--hp", "optimizer=lion"], "optimizer='lion' is not valid"),
        (["--hp", "epochs"], "not of the form name=value"),
        (["--hp", "early_stopping=True", "--hp", "validation_split_ratio=0"], "early_stopping=True needs validation"),
    ],
)
def test_bad_hyperparameters(tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str], message: str) -> None:
    assert run(tiny_bert, "--train", str(channel), "--output", str(tmp_path / "o"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_hyperparameters_file(tiny_bert: Path, channel: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    hp_file = tmp_path / "hp.json"
    hp_file.write_text('{"epochs": "3",\n "batch_size": }')
    assert run(tiny_bert, "--train", str(channel), "--hyperparameters", str(hp_file), "--output", str(tmp_path / "o")) == 2
    assert f"{hp_file}, line 2: not valid JSON" in capsys.readouterr().err


def test_a_non_empty_output_is_refused_before_training(tiny_bert: Path, channel: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("keep me")
    assert run(tiny_bert, "--train", str(channel), "--output", str(tmp_path / "o")) == 2
    assert "holds files textfit did not write (notes.txt)" in capsys.readouterr().err
    assert (tmp_path / "o" / "notes.txt").read_text() == "keep me"


def test_a_missing_artifact_for_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--model", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "no such model folder or tarball" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert f"usage: textfit {name}" in capsys.readouterr().out


def test_models_info_shows_the_fine_tuning_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "info", "textfit-tc-all-minilm-l6-v2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fine_tuning_defaults"]["learning_rate"] == "0.0001"
    assert info["fine_tuning_defaults"]["optimizer"] == "adamw" and info["parameters"] == 22_713_216


def test_a_run_killed_mid_training_leaves_no_artifact(tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "big" / "data.csv", make_rows(400))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "textfit", "train", "--train", str(tmp_path / "big"), "--model-id", str(tiny_bert),
           "--output", str(out), "--hp", "epochs=1000", "--hp", "optimizer=adam", "--hp", "precision=fp32"]
    proc = run_until(cmd, "Epoch 2/")  # training is under way
    kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]


def test_a_latin1_hyperparameters_file_is_one_line(tiny_bert: Path, channel: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hp.json").write_bytes('{"epochs": "2", "note": "café"}'.encode("latin-1"))
    assert run(tiny_bert, "--train", str(channel), "--output", str(tmp_path / "out"), "--hyperparameters",
               str(tmp_path / "hp.json")) == 2
    err = capsys.readouterr().err
    assert "hp.json: the hyperparameters file is not valid UTF-8" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_outputs_that_cannot_work_are_refused_before_training(tiny_bert: Path, channel: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("x")
    for output, message in ((channel / "model", "inside the data folder"),
                            (tmp_path / "a-file" / "model", "cannot write in")):
        assert run(tiny_bert, "--train", str(channel), "--output", str(output)) == 2
        err = capsys.readouterr().err
        assert message in err and "Epoch 1/" not in err and "Traceback" not in err
    from textfit.errors import ArtifactError
    from textfit.model.artifact import check_output

    with pytest.raises(ArtifactError, match="the model needs about 1000000000000 MB but"):
        check_output(tmp_path / "big", False, needed_bytes=10**18)


def test_a_report_that_fails_after_training_keeps_the_model(tiny_bert: Path, channel: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from textfit.model import artifact
    from textfit.reports import plots

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError("drawing the confusion matrix")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "confusion_matrix", out_of_memory)
    monkeypatch.setattr(artifact, "write_tarball", disk_full)
    out = tmp_path / "model"
    assert run(tiny_bert, "--train", str(channel), "--output", str(out), "--tar") == 3
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert f"the model is saved in {out}" in errors[0]
    assert "confusion_matrix.png could not be written (MemoryError" in errors[0]
    assert "model.tar.gz could not be written (No space left on device)" in errors[0]
    from textfit import TextClassifier

    assert TextClassifier.load(out).predict(["good great film"]) == ["1"]
    assert not (out / "confusion_matrix.png").exists() and (out / "validation_report.json").is_file()


EXIT_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.5)
    (out / "thread").write_text("done")
if sys.argv[2] == "thread":
    threading.Thread(target=late).start()  # a non-daemon thread still at work when the command ends
sys.argv = ["textfit", *sys.argv[3:]]
from textfit.cli import run
run()
"""


@pytest.mark.parametrize("thread", ["thread", "none"])
def test_the_fast_exit_keeps_what_an_exit_must_do(tmp_path: Path, thread: str) -> None:
    """`textfit` exits without unloading its modules, but atexit handlers run, stdout arrives whole, the exit
    code is the command's, and a non-daemon thread is waited for."""
    import subprocess

    listing = subprocess.run([sys.executable, "-c", EXIT_PROBE, str(tmp_path), thread, "models", "list"],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").exists() == (thread == "thread")
    rows = listing.stdout.strip().splitlines()
    assert len(rows) > 38 and rows[-1].endswith("embedded"), rows[-3:]  # the whole zoo, its last line whole
    failed = subprocess.run([sys.executable, "-c", EXIT_PROBE, str(tmp_path), "none", "predict", "--model",
                             str(tmp_path / "absent"), "--text", "x"], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.startswith("error: "), failed.stderr[-2000:]
