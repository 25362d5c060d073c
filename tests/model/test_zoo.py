from __future__ import annotations

from pathlib import Path

import pytest

from textfit.errors import ModelNotFoundError
from textfit.model import zoo

SAGEMAKER_IDS = 38


def test_all_38_sagemaker_model_ids_with_their_equivalents() -> None:
    ids = [s.model_id for s in zoo.ZOO if s.model_id.startswith("tensorflow-tc-")]
    assert len(ids) == len(set(ids)) == SAGEMAKER_IDS
    spec = zoo.get_spec("tensorflow-tc-bert-en-uncased-L-12-H-768-A-12-2")
    assert spec is not None and spec.hf_id == "google-bert/bert-base-uncased"
    small = zoo.get_spec("tensorflow-tc-small-bert-bert-en-uncased-L-4-H-256-A-4")
    assert small is not None and small.hf_id == "google/bert_uncased_L-4_H-256_A-4" and small.layers == 4
    assert sum(1 for s in zoo.ZOO if s.hf_id is None) == 4  # Experts x2 and Talking-Heads x2


def test_every_zoo_model_fine_tunes_with_its_own_defaults() -> None:
    for spec in zoo.ZOO:
        assert spec.defaults["optimizer"] == "adamw" and float(spec.defaults["learning_rate"]) <= 1e-4, spec.model_id


def test_the_embedded_model_is_the_default_and_resolves_offline() -> None:
    resolved = zoo.resolve_model(None)
    assert resolved.model_id == zoo.EMBEDDED_ID and resolved.source == "embedded"
    assert (Path(resolved.path) / "model.safetensors").is_file()


def test_a_local_checkpoint_folder(tiny_bert: Path, tmp_path: Path) -> None:
    assert zoo.resolve_model(str(tiny_bert)).source == "local"
    with pytest.raises(ModelNotFoundError, match="holds no config.json"):
        zoo.resolve_model(str(tmp_path))


def test_a_missing_model_says_where_it_looked_and_how_to_fix_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelNotFoundError) as info:
        zoo.resolve_model("tensorflow-tc-bert-en-uncased-L-12-H-768-A-12-2")
    text = str(info.value)
    assert "google-bert/bert-base-uncased" in text and "not available offline" in text
    assert "hf download google-bert/bert-base-uncased" in text and "--allow-network" in text


def test_ids_without_a_known_copy_say_so() -> None:
    with pytest.raises(ModelNotFoundError, match="Talking Heads Base.*no loadable PyTorch checkpoint"):
        zoo.resolve_model("tensorflow-tc-talking-heads-base")


def test_an_unknown_name() -> None:
    with pytest.raises(ModelNotFoundError, match="neither a zoo id, a local folder nor a Hugging Face repo id"):
        zoo.resolve_model("bert-base-typo")
