from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.conftest import FAST
from textfit import TextClassifier
from textfit.data.channels import read_channel
from textfit.errors import ModelNotFoundError
from textfit.model import store, zoo

SMALL_ID = "tensorflow-tc-small-bert-bert-en-uncased-L-2-H-128-A-2"


def small_bert(folder: Path, layers: int = 2, hidden: int = 128) -> Path:
    """A checkpoint shaped like the zoo's Small BERT L-2/H-128 (randomly initialised, with a tiny vocab)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE, SPECIAL

    words = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL
    vocab = {w: i for i, w in enumerate(words + [f"[unused{i}]" for i in range(30522 - len(words))])}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=hidden * 4)
    BertModel(config).save_pretrained(folder)
    return folder


def test_import_checks_and_records_the_checkpoint(tmp_path: Path) -> None:
    path = store.import_model(SMALL_ID, small_bert(tmp_path / "ckpt"), store=tmp_path / "store")
    record = json.loads((path / store.RECORD).read_text())
    assert record["sha256"]["model.safetensors"] == store.sha256(tmp_path / "ckpt" / "model.safetensors")
    assert record["architecture"]["layers"] == 2 and record["architecture"]["hidden"] == 128
    assert zoo.resolve_model(SMALL_ID, store=tmp_path / "store").source == "store"


def test_import_from_a_tarball(tmp_path: Path) -> None:
    folder = small_bert(tmp_path / "ckpt")
    tarball = tmp_path / "ckpt.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for item in folder.iterdir():
            tar.add(item, arcname=item.name)
    path = store.import_model(SMALL_ID, tarball, store=tmp_path / "store")
    assert (path / "model.safetensors").is_file()


def test_a_mismatched_architecture_is_refused_with_the_reason(tmp_path: Path) -> None:
    folder = small_bert(tmp_path / "ckpt", layers=4)
    with pytest.raises(ModelNotFoundError, match="does not match .*: 4 layers, expected 2"):
        store.import_model(SMALL_ID, folder, store=tmp_path / "store")
    assert not (tmp_path / "store" / SMALL_ID).exists()


def test_a_checkpoint_without_safetensors_is_refused(tmp_path: Path) -> None:
    folder = small_bert(tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match="no model.safetensors; textfit loads safetensors weights only"):
        store.import_model(SMALL_ID, folder, store=tmp_path / "store")


def test_ids_without_a_known_copy_accept_an_imported_checkpoint(tiny_bert: Path, tmp_path: Path) -> None:
    experts = "tensorflow-tc-experts-bert-pubmed-1"
    with pytest.raises(ModelNotFoundError, match=f"textfit models import {experts} PATH"):
        zoo.resolve_model(experts, store=tmp_path / "store")
    with pytest.raises(ModelNotFoundError, match="2 layers, expected 12"):  # the tiny one is not BERT-base shaped
        store.import_model(experts, tiny_bert, store=tmp_path / "store")


def test_resolution_order_store_before_embedded(tiny_bert: Path, tmp_path: Path) -> None:
    assert zoo.resolve_model(zoo.EMBEDDED_ID, store=tmp_path / "store").source == "embedded"
    target = zoo.store_path(zoo.EMBEDDED_ID, tmp_path / "store")
    shutil.copytree(tiny_bert, target)
    (target / store.RECORD).write_text("{}")
    assert zoo.resolve_model(zoo.EMBEDDED_ID, store=tmp_path / "store").path == str(target)


def test_training_from_the_store(tmp_path: Path, channel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTFIT_MODEL_STORE", str(tmp_path / "store"))
    store.import_model(SMALL_ID, small_bert(tmp_path / "ckpt"))
    clf = TextClassifier(SMALL_ID, {**FAST, "epochs": "1"}).fit(read_channel(channel))
    assert clf.model_id_ == SMALL_ID and clf.manifest_["base_model"].startswith(str(tmp_path / "store"))
    assert clf.hyperparameters_.optimizer == "adam"  # FAST's, over the zoo entry's adamw


def test_pull_without_a_reachable_hub_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # a closed local port: the download fails at once, as it does on a machine without internet
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelNotFoundError) as info:
        store.pull_model(SMALL_ID, store=tmp_path / "store")
    assert "cannot download google/bert_uncased_L-2_H-128_A-2" in str(info.value)
    assert f"textfit models import {SMALL_ID} DIR" in str(info.value)
    assert not (tmp_path / "store" / SMALL_ID).exists()
