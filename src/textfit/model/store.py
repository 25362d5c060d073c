"""The local model store: pretrained checkpoints copied in ahead of time, so that jobs run with no network.

A store is a folder of `<model_id>/` checkpoint folders (Hugging Face layout), each with a `textfit-store.json`
that records where it came from and the sha256 of its weights. `import_model` checks that a checkpoint loads
and matches the zoo entry's architecture before it is accepted; `pull_model` downloads from the Hub.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from textfit.core import ownership
from textfit.core.shapes import check_config, check_model_files
from textfit.errors import ModelNotFoundError
from textfit.model import artifact, pretrained
from textfit.model.artifact import sha256
from textfit.model.zoo import STORE_RECORD as RECORD
from textfit.model.zoo import ModelSpec, get_spec, store_path

WEIGHT_FILES = ("model.safetensors",)


def _architecture(folder: Path) -> dict[str, Any]:
    config = check_config(folder / "config.json")
    return {
        "layers": config.get("num_hidden_layers", config.get("n_layers")),
        "hidden": config.get("hidden_size", config.get("dim")),
        "vocab": config.get("vocab_size"),
        "model_type": config.get("model_type"),
    }


def check_architecture(folder: Path, spec: ModelSpec) -> None:
    """Refuse a checkpoint whose shape is not the zoo entry's (a BERT-base file under a BERT-large id, say)."""
    arch = _architecture(folder)
    problems = []
    if arch["layers"] != spec.layers:
        problems.append(f"{arch['layers']} layers, expected {spec.layers}")
    if arch["hidden"] != spec.hidden:
        problems.append(f"hidden size {arch['hidden']}, expected {spec.hidden}")
    if spec.vocab and arch["vocab"] != spec.vocab:
        problems.append(f"vocabulary of {arch['vocab']}, expected {spec.vocab}")
    if problems:
        raise ModelNotFoundError(f"{folder} does not match {spec.model_id} ({spec.name}): {'; '.join(problems)}; "
                                 "import the checkpoint under its own id, or pass the folder as --model-id")


def _check_loads(folder: Path) -> None:
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelNotFoundError(f"{folder}: no model.safetensors; textfit loads safetensors weights only "
                                 "(convert a pytorch_model.bin with transformers' save_pretrained on a trusted machine)")
    check_model_files(folder)  # config.json and tokenizer_config.json of the shape transformers reads
    pretrained.load_config(str(folder))  # refuses an architecture transformers does not know, runs no code
    pretrained.load_tokenizer(str(folder))
    pretrained.load_encoder(str(folder))


def _install(model_id: str, source_folder: Path, origin: str, store: Path | None) -> Path:
    """Copy a checked checkpoint into the store atomically and record its checksum."""
    target = store_path(model_id, store)
    ownership.check_writable(target, ownership.STORE, f"the store entry of {model_id}")
    with artifact.staged(target, folder=True, kind="store") as tmp:
        for item in source_folder.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
            elif item.is_dir() and not item.name.startswith("."):
                shutil.copytree(item, tmp / item.name)
        record = {"model_id": model_id, "source": origin,
                  "sha256": {name: sha256(tmp / name) for name in WEIGHT_FILES if (tmp / name).is_file()},
                  "architecture": _architecture(tmp)}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target


def import_model(model_id: str, source: str | Path, store: Path | None = None) -> Path:
    """Copy a checkpoint folder or tarball into the store under model_id, after checking it.

    Raises:
        ModelNotFoundError: the checkpoint does not load, or its architecture is not the id's.
    """
    spec = get_spec(model_id)
    with artifact.opened(source) as folder:
        _check_loads(folder)
        if spec is not None:
            check_architecture(folder, spec)
        return _install(model_id, folder, str(source), store)


def pull_model(model_id: str, store: Path | None = None) -> Path:
    """Download a zoo model (or any Hub repo id) into the store: the one command that uses the network."""
    from huggingface_hub import snapshot_download

    spec = get_spec(model_id)
    repo = spec.hf_id if spec is not None else model_id
    if repo is None:
        raise ModelNotFoundError(f"{model_id}: {spec.note if spec else 'unknown id'}; import a checkpoint with "
                                 f"`textfit models import {model_id} PATH`")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(snapshot_download(repo, local_dir=tmp, allow_patterns=[
                "*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]))
        except Exception as exc:  # the Hub client raises many kinds; all mean the same to the user
            raise ModelNotFoundError(f"cannot download {repo} ({type(exc).__name__}: {exc}); check the network, "
                                     f"or copy the checkpoint here and run `textfit models import {model_id} DIR`") from None
        _check_loads(folder)
        if spec is not None:
            check_architecture(folder, spec)
        return _install(model_id, folder, f"hf://{repo}", store)
