"""Every JSON file textfit reads is checked by shape, not only by syntax: valid JSON of a wrong type (the whole
file, or any one field) is one `error:` line naming the file and the field, exit code 2, never a traceback.

Each case takes a real file (a checkpoint of a tiny training run, the files of a saved tiny artifact, SageMaker's
config files) and replaces the document, or one field, by a value of each other JSON type, then runs the real
entry point in this process. A replacement textfit accepts as valid (null where a field is optional, say) is
listed beside each file and left out.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST, make_rows, write_csv
from textfit.cli import main
from textfit.errors import ArtifactError
from textfit.model import artifact

VALUES: dict[str, Any] = {"object": {"x": 1}, "list": [1], "string": "x", "number": 1.5, "boolean": True,
                          "null": None}
"""One value of each JSON type; 1.5 stands for a number that is not an integer."""


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def wrong_values(original: object) -> Iterator[tuple[str, Any]]:
    """Each JSON type other than the original's; an integer field also gets a number that is not an integer."""
    for kind, value in VALUES.items():
        if kind != json_type(original) or (kind == "number" and isinstance(original, int)
                                           and not isinstance(original, bool)):
            yield kind, value


def cases(document: dict[str, Any], also_valid: dict[str, set[str]], prefix: str = ""
          ) -> list[tuple[str | None, str, Any]]:
    """(field, type, value) for every field of `document` and every wrong type, and (None, type, value) for the
    whole file; the replacements in `also_valid` are valid values of their field, so left out."""
    out: list[tuple[str | None, str, Any]] = [] if prefix else [
        (None, kind, value) for kind, value in VALUES.items() if kind != "object"]
    for name, original in document.items():
        field = f"{prefix}{name}"
        out += [(field, kind, value) for kind, value in wrong_values(original)
                if kind not in also_valid.get(field, set())]
    return out


def replaced(document: dict[str, Any], field: str | None, value: Any) -> Any:
    """The document with `field` (dotted for a nested one) replaced by `value`; the value itself for None."""
    if field is None:
        return value
    data = json.loads(json.dumps(document))
    *path, last = field.split(".")
    inner = data
    for key in path:
        inner = inner[int(key)] if isinstance(inner, list) else inner[key]
    inner[last] = value
    return data


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, file: str, field: str | None) -> str:
    """Exit code 2 and exactly one `error:` line, naming the file and the field; no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert file in errors[0], errors[0]
    if field is not None:
        assert f"'{field}" in errors[0], errors[0]
    return errors[0]


def ids(items: list[tuple[str | None, str, Any]]) -> list[str]:
    return [f"{field or 'file'}={kind}" for field, kind, _ in items]


# ------------------------------------------------------------------------------------ a saved artifact

# (the tiny artifact's files, read here once, at collection)
ARTIFACT_ALSO_VALID = {
    artifact.MANIFEST: {"model_id": {"null"}, "base_model": {"null"}, "initialized_from": {"string"}},
    artifact.LABELS: {},
    artifact.CONFIG: {name: {"null"} for name in (
        "architectures", "classifier_dropout", "dtype", "id2label", "label2id", "pad_token_id", "problem_type",
        "transformers_version")} | {"bos_token_id": {"number"}, "eos_token_id": {"number", "list"}},
    "tokenizer_config.json": {name: {"null"} for name in (
        "cls_token", "mask_token", "pad_token", "sep_token", "unk_token", "backend", "tokenizer_class")}
    | {"model_max_length": {"number", "null"}, "strip_accents": {"boolean"}},
}
"""Replacements that are valid values of their field: a field that may be null, an integer that may be a list."""

MODEL_FILES = {
    artifact.MANIFEST: {"model_id": "/m", "base_model": "/m", "architecture": "BERT", "initialized_from": None,
                        "fine_tuned": True, "hyperparameters": {"epochs": "8"},
                        "training_recipe": {"name": "finetune", "reason": "r", "head": "h"},
                        "classes": {"labels": ["0", "1"], "label_values": [0, 1]},
                        "epochs": [{"loss": 0.5, "val_loss": None}], "best_epoch": 1, "stopped_early": False,
                        "data": {"train": {}}, "versions": {"textfit": "0.1.0"}, "created": "2026-01-01", "workers": 1,
                        "files": {"config.json": "0" * 64}},
    artifact.LABELS: {"labels": ["0", "1"], "label_values": [0, 1]},
    artifact.CONFIG: {"add_cross_attention": False, "architectures": ["BertForSequenceClassification"],
                      "attention_probs_dropout_prob": 0.1, "bos_token_id": None, "classifier_dropout": 0.2,
                      "dtype": "float32", "eos_token_id": None, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                      "hidden_size": 32, "id2label": {"0": "0"}, "initializer_range": 0.02,
                      "intermediate_size": 64, "is_decoder": False, "label2id": {"0": 0}, "layer_norm_eps": 1e-12,
                      "max_position_embeddings": 128, "model_type": "bert", "num_attention_heads": 2,
                      "num_hidden_layers": 2, "pad_token_id": 0, "problem_type": "single_label_classification",
                      "tie_word_embeddings": True, "transformers_version": "5", "type_vocab_size": 2,
                      "use_cache": True, "vocab_size": 29},
    "tokenizer_config.json": {"backend": "tokenizers", "cls_token": "[CLS]", "do_lower_case": True,
                              "is_local": True, "local_files_only": True, "mask_token": "[MASK]",
                              "model_max_length": 512, "pad_token": "[PAD]",
                              "sep_token": "[SEP]", "strip_accents": None, "tokenize_chinese_chars": True,
                              "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]"},
}
"""The fields of each file as a saved tiny artifact holds them: only their types matter here (the test checks
that the real files have these fields, so that no field of theirs goes untried)."""

ARTIFACT_CASES = [(name, *case) for name, document in MODEL_FILES.items()
                  for case in cases(document, ARTIFACT_ALSO_VALID[name])]


def test_the_cases_cover_every_field_of_the_real_files(tiny_artifact: Path) -> None:
    for name, document in MODEL_FILES.items():
        real = json.loads((tiny_artifact / name).read_text())
        assert set(real) <= set(document), (name, set(real) - set(document))
        assert {f: json_type(v) for f, v in real.items()} == {f: json_type(document[f]) for f in real}, name


@pytest.mark.parametrize(("name", "field", "kind", "value"), ARTIFACT_CASES,
                         ids=[f"{name}:{case}" for name, *rest in ARTIFACT_CASES for case in ids([tuple(rest)])])
def test_a_model_file_of_a_wrong_shape_is_one_line(tiny_artifact: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], name: str, field: str | None,
                                                   kind: str, value: Any) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_artifact, folder)
    document = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps(replaced(document, field, value)))
    if name != artifact.MANIFEST:  # digests recomputed, as by whoever edited the file: the shape check must hold
        manifest = json.loads((folder / artifact.MANIFEST).read_text())
        manifest[artifact.DIGESTS] = artifact.digests(folder)
        (folder / artifact.MANIFEST).write_text(json.dumps(manifest))
    code = main(["predict", "--model", str(folder), "--text", "a good film"])
    one_error_line(capsys, code, str(folder / name), field)


def test_a_manifest_naming_a_file_outside_the_folder_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_artifact, folder)
    manifest = json.loads((folder / artifact.MANIFEST).read_text())
    manifest[artifact.DIGESTS]["../../etc/passwd"] = "0" * 64
    (folder / artifact.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="field 'files' names '../../etc/passwd', which is not a file"):
        artifact.check_intact(folder)


def test_a_hyperparameter_value_in_the_manifest_names_the_manifest(tiny_artifact: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_artifact, folder)
    manifest = json.loads((folder / artifact.MANIFEST).read_text())
    manifest["hyperparameters"]["epochs"] = "many"
    (folder / artifact.MANIFEST).write_text(json.dumps(manifest))
    line = one_error_line(capsys, main(["predict", "--model", str(folder), "--text", "good"]),
                          str(folder / artifact.MANIFEST), "hyperparameters")
    assert "epochs='many' is not an integer" in line


def test_labels_of_unequal_length_are_one_line(tiny_artifact: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_artifact, folder)
    (folder / artifact.LABELS).write_text(json.dumps({"labels": ["0", "1"], "label_values": [0]}))
    manifest = json.loads((folder / artifact.MANIFEST).read_text())
    manifest[artifact.DIGESTS] = artifact.digests(folder)
    (folder / artifact.MANIFEST).write_text(json.dumps(manifest))
    line = one_error_line(capsys, main(["predict", "--model", str(folder), "--text", "good"]),
                          str(folder / artifact.LABELS), "labels")
    assert "hold 2 and 1 items" in line


def test_a_pretrained_checkpoint_of_a_wrong_shape_is_one_line_when_training(
        tiny_bert: Path, channel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "2"}))
    code = main(["train", "--train", str(channel), "--model-id", str(folder), "--output", str(tmp_path / "out")])
    line = one_error_line(capsys, code, str(folder / "config.json"), "num_hidden_layers")
    assert "is a string, expected an integer" in line
    assert not (tmp_path / "out").exists()


def test_importing_a_checkpoint_of_a_wrong_shape_is_one_line(tiny_bert: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTFIT_MODEL_STORE", str(tmp_path / "store"))
    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer, "do_lower_case": "yes"}))
    code = main(["models", "import", "my-bert", str(folder)])
    one_error_line(capsys, code, str(folder / "tokenizer_config.json"), "do_lower_case")
    assert not (tmp_path / "store" / "my-bert").exists()


# ------------------------------------------------------------------------------------ model tarballs


def _tarball(path: Path, name: str) -> Path:
    member = tarfile.TarInfo(name)
    member.size = 1
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:  # PAX: a name of any length
        tar.addfile(member, io.BytesIO(b"x"))
    return path


@pytest.mark.parametrize(("name", "why"), [
    ("x" * 100_000, "its name is 100,000 characters long, more than 4,096"),
    ("a/" * 2_000 + "f", "its name is 2,001 folders deep, more than 32"),
    ("./" * 50_000 + "f", "its name is 100,001 characters long"),
    ("a" * 300 + "/f", "a part of its name is longer than 255 characters"),
])
def test_a_tarball_entry_with_a_huge_name_is_one_short_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            name: str, why: str) -> None:
    tarball = _tarball(tmp_path / "m.tar.gz", name)
    line = one_error_line(capsys, main(["predict", "--model", str(tarball), "--text", "good"]), str(tarball), None)
    assert why in line and len(line) < 400
    assert not list(tmp_path.glob("**/f"))


def test_a_tarball_whose_headers_nest_past_the_recursion_limit_is_one_line(tmp_path: Path) -> None:
    """tarfile reads a chain of extended headers recursively: thousands of them are a RecursionError."""
    raw = io.BytesIO()
    first = tarfile.TarInfo("config.json")
    first.size = 2
    raw.write(first.tobuf(format=tarfile.USTAR_FORMAT) + b"{}".ljust(512, b"\0"))
    record = b"10 path=x\n"
    for _ in range(5_000):
        header = tarfile.TarInfo("././@PaxHeader")
        header.type, header.size = tarfile.XHDTYPE, len(record)
        raw.write(header.tobuf(format=tarfile.USTAR_FORMAT) + record.ljust(512, b"\0"))
    (tmp_path / "deep.tar.gz").write_bytes(gzip.compress(raw.getvalue() + b"\0" * 1024))
    with pytest.raises(ArtifactError, match="headers nest past Python's recursion limit"):
        artifact.safe_extract(tmp_path / "deep.tar.gz", tmp_path / "out")


# ------------------------------------------------------------------------------------ training checkpoints

HP = {**FAST, "epochs": "1", "optimizer": "adamw", "max_seq_length": "16"}


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The training data and the checkpoint folder of a finished tiny run with --checkpoint-dir."""
    root = tmp_path_factory.mktemp("shapes-ckpt")
    data = write_csv(root / "train" / "data.csv", make_rows(48)).parent
    assert main(train_args(tiny_bert, data, root / "model", root / "ckpt")) == 0
    return data, root / "ckpt"


def train_args(tiny_bert: Path, data: Path, output: Path, ckpt: Path) -> list[str]:
    return ["train", "--train", str(data), "--model-id", str(tiny_bert), "--output", str(output),
            "--checkpoint-dir", str(ckpt), "--onnx", "none",
            *[arg for name, value in HP.items() for arg in ("--hp", f"{name}={value}")]]


def checkpoint_cases() -> list[tuple[str | None, str, Any]]:
    """Every top-level field, every field of the loop, and the fields of the optimizer, schedule and scaler
    the running code checks against its own, each replaced by each other JSON type (the fields as `save` writes
    them; the fixture's real file is checked to have the same ones)."""
    top = {"version": 1, "fingerprint": "f", "loop": {}, "optimizer": {}, "schedule": {}, "scaler": None,
           "has_best": True, "finished": True}
    loop = {"epoch": 2, "step": 0, "totals": [0.0], "history": [{}], "best_epoch": 1, "wait": 0, "es_best": 0.5,
            "stopped_early": False}
    group = {"lr": 0.01, "betas": [0.9, 0.999], "amsgrad": False, "params": [0]}
    return (cases(top, {}) + cases(loop, {}, "loop.") + cases(group, {}, "optimizer.param_groups.0.")
            + cases({"last_epoch": 1}, {}, "schedule."))


CHECKPOINT_CASES = checkpoint_cases()


def test_the_checkpoint_cases_cover_every_field(trained: tuple[Path, Path]) -> None:
    state = json.loads((trained[1] / "checkpoint.json").read_text())
    fields = {field for field, _, _ in CHECKPOINT_CASES if field}
    assert set(state) <= {f.split(".")[0] for f in fields}
    assert {f"loop.{name}" for name in state["loop"]} <= fields
    assert state["schedule"] is not None and state["scaler"] is None  # adamw's warm-up schedule; fp32


@pytest.mark.parametrize(("field", "kind", "value"), CHECKPOINT_CASES, ids=ids(CHECKPOINT_CASES))
def test_a_checkpoint_of_a_wrong_shape_is_one_line(tiny_bert: Path, trained: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], field: str | None, kind: str,
                                                   value: Any) -> None:
    data, original = trained
    ckpt = tmp_path / "ckpt"
    shutil.copytree(original, ckpt)
    state = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps(replaced(state, field, value)))
    code = main(train_args(tiny_bert, data, tmp_path / "model", ckpt))
    one_error_line(capsys, code, str(ckpt / "checkpoint.json"), field.replace(".0.", "[0].") if field else None)
    assert not (tmp_path / "model").exists()


def test_an_intact_copy_of_the_checkpoint_resumes(tiny_bert: Path, trained: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The baseline of the cases above: the same command with the checkpoint as written resumes from it."""
    data, original = trained
    shutil.copytree(original, tmp_path / "ckpt")
    assert main(train_args(tiny_bert, data, tmp_path / "model", tmp_path / "ckpt")) == 0
    assert "Resuming from checkpoint" in capsys.readouterr().err


def test_the_position_of_a_checkpoint_of_a_wrong_shape_is_none(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from textfit.training.checkpoints import position

    assert position(trained[1]) == (2, 0)  # one epoch done: the next starts at its first step
    shutil.copytree(trained[1], tmp_path / "ckpt")
    state = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    for loop in ([1, 2, 3], {**state["loop"], "epoch": "2"}, {**state["loop"], "step": None}):
        (tmp_path / "ckpt" / "checkpoint.json").write_text(json.dumps({**state, "loop": loop}))
        assert position(tmp_path / "ckpt") is None


# ------------------------------------------------------------------------------------ SageMaker's config files

SAGEMAKER_FILES = {
    "hyperparameters.json": {**FAST, "model_id": "m", "_tuning_objective_metric": "validation:accuracy"},
    "resourceconfig.json": {"current_host": "algo-1", "hosts": ["algo-1"]},
}
SAGEMAKER_ALSO_VALID = {"hyperparameters.json": {name: {"number", "boolean"} for name in
                                                 SAGEMAKER_FILES["hyperparameters.json"]},
                        "resourceconfig.json": {}}
SAGEMAKER_CASES = [(name, *case) for name, document in SAGEMAKER_FILES.items()
                   for case in cases(document, SAGEMAKER_ALSO_VALID[name])]


@pytest.mark.parametrize(("name", "field", "kind", "value"), SAGEMAKER_CASES,
                         ids=[f"{name}:{case}" for name, *rest in SAGEMAKER_CASES for case in ids([tuple(rest)])])
def test_a_sagemaker_config_file_of_a_wrong_shape_is_the_failure_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, field: str | None, kind: str,
        value: Any) -> None:
    root = tmp_path / "ml"
    config = root / "input" / "config"
    config.mkdir(parents=True)
    for other, document in SAGEMAKER_FILES.items():
        (config / other).write_text(json.dumps(replaced(document, field, value) if other == name else document))
    write_csv(root / "input" / "data" / "training" / "data.csv", make_rows(10))
    (root / "model").mkdir()
    line = one_error_line(capsys, main(["sagemaker", "train", "--prefix", str(root)]), str(config / name), field)
    assert line.removeprefix("error: ") + "\n" == (root / "output" / "failure").read_text()
    assert list((root / "model").iterdir()) == []


@pytest.mark.parametrize("hosts", ['{"algo-1": 1}', "[1, 2]", "algo-1"])
def test_sm_hosts_of_a_wrong_shape_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], hosts: str) -> None:
    root = tmp_path / "ml"
    write_csv(root / "input" / "data" / "training" / "data.csv", make_rows(10))
    monkeypatch.setenv("SM_HOSTS", hosts)
    line = one_error_line(capsys, main(["sagemaker", "train", "--prefix", str(root)]), "SM_HOSTS", None)
    assert "a JSON list of host names" in line


# ------------------------------------------------------------------------------------ --hyperparameters


@pytest.mark.parametrize(("kind", "value"), [(k, v) for k, v in VALUES.items() if k != "object"])
def test_a_hyperparameters_file_of_a_wrong_type_is_one_line(tiny_bert: Path, channel: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], kind: str,
                                                            value: Any) -> None:
    (tmp_path / "hp.json").write_text(json.dumps(value))
    code = main(["train", "--train", str(channel), "--model-id", str(tiny_bert), "--hyperparameters",
                 str(tmp_path / "hp.json"), "--output", str(tmp_path / "out")])
    one_error_line(capsys, code, str(tmp_path / "hp.json"), None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("field", "kind", "value"), [
    (field, kind, value) for field in ("epochs", "learning_rate", "optimizer", "early_stopping", "class_weights")
    for kind, value in VALUES.items() if kind in ("object", "list")])
def test_a_hyperparameter_of_a_wrong_type_in_the_file_is_one_line(tiny_bert: Path, channel: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str], field: str,
                                                                  kind: str, value: Any) -> None:
    """A list or an object is refused, naming the field (the file's reading code, in cli.py, does not yet check
    the values' types: a null becomes the text "None", which class_weights and label_delimiter accept)."""
    (tmp_path / "hp.json").write_text(json.dumps({field: value}))
    code = main(["train", "--train", str(channel), "--model-id", str(tiny_bert), "--hyperparameters",
                 str(tmp_path / "hp.json"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and field in errors[0], err


@pytest.mark.parametrize("value", [None, [3], {"n": 3}])
def test_a_hyperparameters_file_value_of_the_wrong_type_is_one_line(
        value: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"batch_size": "8", "epochs": value}))
    write_csv(tmp_path / "train" / "data.csv", make_rows(16))
    assert main(["train", "--train", str(tmp_path / "train"), "--hyperparameters", str(hp),
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {hp}: field 'epochs'"), err
    assert not (tmp_path / "out").exists()
