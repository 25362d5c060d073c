"""Every encoder family the zoo lists, as a tiny random checkpoint: its adapter is exact, and training,
top-layer training, dropout, calibration, ONNX and incremental training all work on it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import FAMILIES, FAST, build_tiny_family, make_rows, write_csv
from textfit import TextClassifier
from textfit.data import batching
from textfit.data.channels import ClassSet, read_channel
from textfit.errors import HyperparameterError
from textfit.model import architectures
from textfit.predictor import load_torch_model as _load_model
from textfit.training import kernels

CLASSES = ClassSet(values=[0, 1], names=["0", "1"])
FAMILY_NAMES = {"bert": "BERT", "albert": "ALBERT", "electra": "ELECTRA", "distilbert": "DistilBERT",
                "roberta": "RoBERTa", "xlm-roberta": "RoBERTa", "deberta-v2": "DeBERTa-v2", "modernbert": "ModernBERT"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    return name, build_tiny_family(name, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rows")
    write_csv(folder / "data.csv", make_rows(40))
    return folder


def _batch(model: torch.nn.Module, folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    texts = [text for _, text in make_rows(6)] + ["good", "the film was very very bad and awful"]
    types = "token_type_ids" in architectures.input_names(model, tok)
    data = batching.encode(tok, texts, 32, token_types=types)
    return batching.collate(data, list(range(len(texts)))).inputs


def test_every_family_built_here_has_an_adapter() -> None:
    """The zoo's entries map to these families in tests/model/test_zoo.py."""
    from transformers import AutoConfig

    families = {"bert", "albert", "electra", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "modernbert"}
    assert families == set(FAMILIES)
    for model_type in families:
        assert architectures.adapter_for(AutoConfig.for_model(model_type)) is not architectures.GENERIC


def test_head_on_features_equals_the_full_forward(family: tuple[str, Path]) -> None:
    """The feature cache is exact: what train_only_on_top_layer trains is what the saved model runs."""
    name, folder = family
    model = _load_model(str(folder), False, CLASSES, 0.1).eval()
    inputs = _batch(model, folder)
    with torch.inference_mode():
        full = model(**inputs).logits
        cached = architectures.head(model, architectures.features(model, inputs))
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", ["eager", kernels.register_attention()])
def test_the_training_attention_computes_the_same_logits_and_is_put_back(family: tuple[str, Path],
                                                                          implementation: str) -> None:
    """Training on a CPU switches attention for its steps: it must compute what the model's own attention does
    (padding and local windows included), and the model must get its own back, also after an error."""
    name, folder = family
    model = _load_model(str(folder), False, CLASSES, 0.1).eval()
    own = model.config._attn_implementation
    inputs = _batch(model, folder)
    with torch.inference_mode():
        before = model(**inputs).logits
        with architectures.attention(model, implementation):
            assert model.config._attn_implementation == (implementation if name != "deberta-v2" else own)
            switched = model(**inputs).logits
    torch.testing.assert_close(switched, before, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == own
    with pytest.raises(RuntimeError), architectures.attention(model, implementation):
        raise RuntimeError("a step failed")
    assert model.config._attn_implementation == own


@pytest.mark.parametrize("mean_pooled", [False, True])
def test_the_last_layer_on_the_first_position_only_gives_the_same_logits_and_gradients(
        family: tuple[str, Path], mean_pooled: bool) -> None:
    """Training, serving and export compute the last layer's tail for the position the head reads only: the
    logits and the gradient of every parameter must be the whole computation's, the hook must go away after the
    block (also after an error), and a head that reads every position (the mean) must be left whole."""
    name, folder = family
    model = _load_model(str(folder), False, CLASSES, 0.1).eval()  # eval: no dropout, so both runs draw alike
    if mean_pooled:
        model = architectures.MeanPooled(model)
    inputs = _batch(model, folder)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 1, 0])

    def logits_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logits = model(**inputs).logits
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, whole_grads = logits_and_grads()
    tail = architectures.adapter_for(model).per_position_tail
    with architectures.first_position_only(model) as applies:
        assert applies == (tail is not None and not mean_pooled)
        cut, cut_grads = logits_and_grads()
        if applies:
            assert model.base_model(**inputs).last_hidden_state.shape[1] == 1  # the cut is really made
    torch.testing.assert_close(cut, whole, atol=1e-5, rtol=1e-5)
    assert cut_grads.keys() == whole_grads.keys()
    for n, g in whole_grads.items():
        torch.testing.assert_close(cut_grads[n], g, atol=1e-5, rtol=1e-4, msg=n)
    with pytest.raises(RuntimeError), architectures.first_position_only(model):
        raise RuntimeError("a step failed")
    assert model.base_model(**inputs).last_hidden_state.shape[1] == inputs["input_ids"].shape[1]
    # the families that must not cut: ALBERT runs one layer module at every depth, ModernBERT here pools the mean
    assert (tail is None) == (name in ("albert", "modernbert"))


def test_dropout_rate_reaches_the_head(family: tuple[str, Path]) -> None:
    name, folder = family
    model = _load_model(str(folder), False, CLASSES, 0.37)
    key = architectures.adapter_for(model).dropout_key
    assert getattr(model.config, key) == 0.37
    head = [m for n, m in model.named_modules() if not n.startswith(model.base_model_prefix)
            and isinstance(m, torch.nn.Dropout)]
    assert head and all(m.p == 0.37 for m in head if m is not getattr(getattr(model, "pooler", None), "dropout", None))


def test_scaling_the_last_layer_scales_the_logits(family: tuple[str, Path]) -> None:
    name, folder = family
    model = _load_model(str(folder), False, CLASSES, 0.1).eval()
    inputs = _batch(model, folder)
    with torch.inference_mode():
        before = model(**inputs).logits
    architectures.scale_logits(model, 0.5)
    with torch.inference_mode():
        after = model(**inputs).logits
    torch.testing.assert_close(after, before * 0.5, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_token_embeddings_stay_as_pretrained_and_the_rest_trains(
        family: tuple[str, Path], rows: Path, freeze: bool, caplog: pytest.LogCaptureFixture) -> None:
    name, folder = family
    pretrained = _load_model(str(folder), False, CLASSES, 0.1)
    hp = {**FAST, "epochs": "1", "freeze_token_embeddings": str(freeze)}
    with caplog.at_level("INFO", logger="textfit"):
        clf = TextClassifier(str(folder), hp).fit(read_channel(rows))
    table = pretrained.get_input_embeddings().weight
    assert torch.equal(clf.model_.get_input_embeddings().weight, table) == freeze
    trained = dict(clf.model_.named_parameters())
    moved = [n for n, p in pretrained.named_parameters()
             if p is not table and n not in dict(architectures.head_parameters(pretrained))
             and not torch.equal(p, trained[n])]
    assert len(moved) >= 8, moved  # the encoder's layers train either way
    assert ("token embeddings frozen" in caplog.text) == freeze


def test_top_layer_training_trains_the_whole_head_and_only_it(family: tuple[str, Path], rows: Path) -> None:
    name, folder = family
    pretrained = _load_model(str(folder), False, CLASSES, 0.1)
    clf = TextClassifier(str(folder), {**FAST, "epochs": "1", "train_only_on_top_layer": "True"}).fit(read_channel(rows))
    trained = dict(clf.model_.named_parameters())
    head = dict(architectures.head_parameters(pretrained))
    for n, p in pretrained.named_parameters():
        if n in head:
            if p.ndim >= 2:  # every layer of the head moved, pre_classifier and poolers included
                assert not torch.equal(p, trained[n]), n
        else:
            assert torch.equal(p, trained[n]), n


# Enough for every family's tiny random encoder to learn the separable rows from scratch: ALBERT (one layer module
# shared by every depth) is the slowest, at 0.85 of the training rows after 4 epochs and 1.0 after 6 (seeds 0-2).
LEARNS = {**FAST, "epochs": "6", "learning_rate": "0.005"}


def test_full_training_learns_exports_and_trains_incrementally(family: tuple[str, Path], rows: Path,
                                                               tmp_path: Path) -> None:
    name, folder = family
    clf = TextClassifier(str(folder), {**LEARNS, "calibrate": "True"}).fit(read_channel(rows))
    assert clf.manifest_["architecture"] == FAMILY_NAMES[name]
    training = make_rows(40)
    accuracy = np.mean(np.array(clf.predict([text for _, text in training])) == [str(y) for y, _ in training])
    assert accuracy >= 0.9, (name, accuracy)  # chance is 0.5
    saved = clf.save(tmp_path / "model")
    texts = [text for _, text in make_rows(12, seed=3)]
    torch_probs = TextClassifier.load(saved).predict_proba(texts)
    np.testing.assert_allclose(torch_probs, clf.predict_proba(texts), atol=1e-6)
    clf.export_onnx(saved, quantize=True)
    onnx_probs = TextClassifier.load(saved, backend="onnx").predict_proba(texts)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    int8 = TextClassifier.load(saved, backend="onnx", quantized=True).predict_proba(texts)
    assert int8.shape == torch_probs.shape and np.abs(int8 - torch_probs).max() < 0.2
    further = TextClassifier(hyperparameters={**FAST, "epochs": "1"}, init_model=saved).fit(read_channel(rows))
    assert further.classes_ == clf.classes_ and further.manifest_["architecture"] == clf.manifest_["architecture"]


def test_max_seq_length_above_the_positions_is_refused_before_training(family: tuple[str, Path], rows: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    name, folder = family
    limit = architectures.position_limit(_load_model(str(folder), False, CLASSES).config)
    if limit is None:  # relative positions only (DeBERTa-v3): any length
        assert name == "deberta-v2"
        return
    assert limit == 128
    with pytest.raises(HyperparameterError, match=r"max_seq_length=512 is above the 128 positions of"):
        TextClassifier(str(folder), {**FAST, "max_seq_length": "512"}).fit(read_channel(rows))
    assert "Epoch 1/" not in caplog.text  # refused before any training


def test_the_default_max_seq_length_is_lowered_to_a_shorter_encoder(rows: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    folder = build_tiny_family("bert", tmp_path / "short", max_position_embeddings=64)
    clf = TextClassifier(str(folder), LEARNS).fit(read_channel(rows))
    assert clf.hyperparameters_.max_seq_length == 64
    assert "max_seq_length: 64, the positions of" in caplog.text
    # texts of 240 tokens, past the 64 positions: no position error, and each is read right
    good, bad = " ".join(["the film was good and great"] * 40), " ".join(["the plot was bad and awful"] * 40)
    assert clf.predict([good, bad]) == ["1", "0"]


def test_truncated_training_texts_are_counted(tiny_bert: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    data = make_rows(40)
    data[0] = (data[0][0], " ".join(["good"] * 100))
    write_csv(tmp_path / "t" / "data.csv", data)
    clf = TextClassifier(str(tiny_bert), {**FAST, "epochs": "1", "max_seq_length": "16",
                                          "validation_split_ratio": "0"}).fit(read_channel(tmp_path / "t"))
    assert "1 of 40 training texts are longer than max_seq_length=16 tokens" in caplog.text
    assert clf.manifest_["data"]["train"]["truncated_texts"] == 1


def test_a_family_without_an_adapter_trains_frozen_without_a_cache(rows: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """MPNet has no adapter: full fine-tuning through transformers' class, and a frozen encoder that runs each
    step, said in the log; never a silently wrong head."""
    import transformers
    from transformers import BertTokenizer

    from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE, SPECIAL

    folder = tmp_path / "mpnet"
    vocab = {w: i for i, w in enumerate(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL)}
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.MPNetConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                                      pad_token_id=0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    caplog.set_level(logging.INFO, logger="textfit")
    clf = TextClassifier(str(folder), {**FAST, "epochs": "2", "train_only_on_top_layer": "True"}).fit(read_channel(rows))
    assert "has no feature cache in textfit, so the frozen encoder runs at every step" in caplog.text
    assert clf.input_names_ == ["input_ids", "attention_mask"]  # MPNet takes no token types
    assert clf.manifest_["architecture"] == "mpnet (no textfit adapter)"
    TextClassifier(str(folder), {**FAST, "epochs": "1"}).fit(read_channel(rows))  # full fine-tuning too
    # and the small-data recipe: its mean-pooled head on the last layer transformers' class has (out_proj)
    small = TextClassifier(str(folder), {"epochs": "1", "precision": "fp32", "training_recipe": "fewshot"}).fit(read_channel(rows))
    assert small.manifest_["architecture"] == "mpnet (no textfit adapter), mean-pooled head"
    saved = small.save(tmp_path / "mpnet-model")
    texts = [t for _, t in make_rows(10, seed=4)]
    np.testing.assert_allclose(TextClassifier.load(saved, backend="onnx").predict_proba(texts),
                               small.predict_proba(texts), atol=1e-4)


def test_a_model_refusing_the_training_attention_keeps_its_own(tiny_bert: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The attention switch is a speed-up: a model that refuses it trains with its own attention."""
    model = _load_model(str(tiny_bert), False, CLASSES, 0.1).eval()
    own = model.config._attn_implementation

    def refuse(implementation: str) -> None:
        raise ValueError(f"{implementation} is not supported")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    inputs = _batch(model, tiny_bert)
    with architectures.attention(model, kernels.register_attention()):
        assert model.config._attn_implementation == own
        model(**inputs)
    assert model.config._attn_implementation == own
