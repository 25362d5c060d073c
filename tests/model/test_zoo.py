from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import FAMILIES, build_tiny_family, make_rows
from textfit.data import batching
from textfit.data.channels import ClassSet
from textfit.errors import ModelNotFoundError
from textfit.model import architectures, zoo
from textfit.predictor import load_torch_model as _load_model

SAGEMAKER_IDS = 38

# The architecture (transformers' model_type) of each zoo entry's checkpoint, by the start of its Hugging Face id.
# The two Experts BERTs have no Hugging Face copy but are BERT checkpoints to import; Talking Heads has no loadable
# checkpoint at all. A new zoo entry fails the test below until its architecture is written here.
ARCHITECTURES = {"google-bert/": "bert", "google/bert_uncased_": "bert", "albert/": "albert",
                 "google/electra-": "electra", "distilbert/": "distilbert", "FacebookAI/roberta-": "roberta",
                 "microsoft/deberta-v3-": "deberta-v2", "answerdotai/ModernBERT-": "modernbert",
                 "sentence-transformers/": "bert"}


def _architecture(spec: zoo.ModelSpec) -> str | None:
    if spec.hf_id is None:
        return "bert" if spec.model_id.startswith("tensorflow-tc-experts-bert-") else None
    found = [model_type for start, model_type in ARCHITECTURES.items() if spec.hf_id.startswith(start)]
    assert len(found) == 1, f"{spec.model_id}: which architecture is {spec.hf_id}? Add it to ARCHITECTURES"
    return found[0]


def test_all_38_sagemaker_model_ids_with_their_equivalents() -> None:
    ids = [s.model_id for s in zoo.ZOO if s.model_id.startswith("tensorflow-tc-")]
    assert len(ids) == len(set(ids)) == SAGEMAKER_IDS
    spec = zoo.get_spec("tensorflow-tc-bert-en-uncased-L-12-H-768-A-12-2")
    assert spec is not None and spec.hf_id == "google-bert/bert-base-uncased"
    small = zoo.get_spec("tensorflow-tc-small-bert-bert-en-uncased-L-4-H-256-A-4")
    assert small is not None and small.hf_id == "google/bert_uncased_L-4_H-256_A-4" and small.layers == 4
    assert sum(1 for s in zoo.ZOO if s.hf_id is None) == 4  # Experts x2 and Talking-Heads x2


def test_every_zoo_model_has_full_fine_tuning_defaults_not_sagemakers() -> None:
    for spec in zoo.ZOO:
        assert spec.defaults["optimizer"] == "adamw" and float(spec.defaults["learning_rate"]) <= 1e-4, spec.model_id


def test_every_zoo_architecture_has_an_adapter_and_its_tiny_model_gives_a_logit_per_class(tmp_path: Path) -> None:
    """Each loadable zoo entry is of a family textfit has an adapter for: a tiny random checkpoint of that family
    loads through textfit's loader with a new head of 3 classes, the adapter's last layer is that head's output,
    and a batch gives one finite logit per class."""
    from transformers import AutoConfig, AutoTokenizer

    kinds = {spec.model_id: _architecture(spec) for spec in zoo.ZOO}
    assert sorted(m for m, kind in kinds.items() if kind is None) == ["tensorflow-tc-talking-heads-base",
                                                                      "tensorflow-tc-talking-heads-large"]
    embedded = Path(zoo.resolve_model(None).path) / "config.json"  # the one checkpoint on disk: the table is right
    assert json.loads(embedded.read_text())["model_type"] == kinds[zoo.EMBEDDED_ID]
    classes = ClassSet(values=[0, 1, 2], names=["a", "b", "c"])
    texts = [text for _, text in make_rows(5)]
    for kind in sorted({kind for kind in kinds.values() if kind is not None}):
        adapter = architectures.adapter_for(AutoConfig.for_model(kind))
        assert adapter is not architectures.GENERIC and kind in FAMILIES, kind
        folder = build_tiny_family(kind, tmp_path / kind)
        model = _load_model(str(folder), False, classes, 0.1).eval()
        assert architectures.adapter_for(model) is adapter and adapter.last_layer(model).out_features == 3, kind
        tokenizer = AutoTokenizer.from_pretrained(folder)
        types = "token_type_ids" in architectures.input_names(model, tokenizer)
        inputs = batching.collate(batching.encode(tokenizer, texts, 32, token_types=types), list(range(5))).inputs
        with torch.inference_mode():
            logits = model(**inputs).logits
        assert logits.shape == (5, 3) and torch.isfinite(logits).all(), kind


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
