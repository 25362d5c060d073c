"""What textfit knows about each encoder family, in one place: one adapter per architecture.

Encoders differ in where their classification head starts (BERT's pooler output, DistilBERT's
`pre_classifier`, DeBERTa's ContextPooler, RoBERTa's and ELECTRA's token-0 dense head, ModernBERT's pooling
setting) and in what their config calls the head's dropout. An adapter answers every such question: the
features the head reads, the head as a function of them (so that `head(model, features(model, x))` equals
`model(**x).logits` in eval mode, exactly), the dropout setting, the head's last layer (for folding a
calibration temperature), the inputs the model takes, its position limit, and where in its last layer the
computation the head never reads begins. The training loop, the feature cache, calibration and the ONNX export
ask the adapter; nothing else names an architecture.

A checkpoint of any other family trains with full fine-tuning through transformers' own classes; with the
encoder frozen it runs the whole forward each step (no feature cache): slower, still correct.

The small-data recipe (recipes.py) gives any family a second kind of head, `MeanPooled`: the mean of the
encoder's token vectors, L2-normalised (what sentence encoders are trained to produce), into the family's own last
layer. config.json records it (`textfit_pooling: mean`), so a load wraps the model again.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger("textfit")

Inputs = dict[str, torch.Tensor]
# A transformers sequence classifier of any family, or a MeanPooled wrapping one, as the adapters read it: by
# attributes that differ by family (classifier, pre_classifier, pooler, drop) or that transformers adds (config,
# base_model_prefix, _init_weights). nn.Module types every such attribute Tensor | Module; to the checker they are Any.
Model = Any


def _pooled(model: Model, inputs: Inputs) -> torch.Tensor:
    return model.base_model(**inputs).pooler_output


def _first_token(model: Model, inputs: Inputs) -> torch.Tensor:
    return model.base_model(**inputs).last_hidden_state[:, 0]


def _modernbert_pooled(model: Model, inputs: Inputs) -> torch.Tensor:
    """ModernBERT pools as its config says: the first token, or the mean over real tokens."""
    hidden = model.base_model(**inputs).last_hidden_state
    if model.config.classifier_pooling == "cls":
        return hidden[:, 0]
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1)


POOLING_KEY = "textfit_pooling"


def mean_of_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real (unmasked) token vectors of each row, L2-normalised, in fp32."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1).float() / weights.sum(dim=1).float().clamp(min=1.0)
    return nn.functional.normalize(pooled, dim=-1)


class MeanPooled(nn.Module):
    """A transformers sequence classifier whose head reads the mean of the token vectors instead of its own
    pooling: `last_layer(normalize(mean(tokens)))`.

    It shares the wrapped model's modules under their own names, so parameter names, state dicts and
    `save_pretrained` are the wrapped model's; attributes it lacks (config, base_model, save_pretrained) are the
    wrapped model's too. Head parameters the mean does not use (a pooler, RoBERTa's dense layer) are frozen:
    nothing trains them, and DistributedDataParallel requires every trainable parameter to get a gradient.
    """

    def __init__(self, model: Model) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "hf", model)  # not registered: its children are, under their own names
        if not can_mean_pool(model):
            raise TypeError(f"the last layer of {describe(model)} does not read the encoder's hidden vectors")
        keep = {id(p) for p in adapter_for(model).last_layer(model).parameters()}
        for _, p in head_parameters(model):
            p.requires_grad_(id(p) in keep)
        pooler = getattr(model.base_model, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        model.config.update({POOLING_KEY: "mean"})

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "hf"), name)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return SequenceClassifierOutput(logits=head(self, features(self, inputs)))


def can_mean_pool(model: nn.Module) -> bool:
    """Whether the model's last layer reads the encoder's hidden vectors, so that it can read their mean."""
    try:
        last = adapter_for(model).last_layer(model)
    except (AttributeError, IndexError):
        return False
    return last.in_features == getattr(model.config, "hidden_size", None)


def is_mean_pooled(config: Any) -> bool:
    """Whether a config (or a model's) says its head reads the mean of the token vectors."""
    return getattr(getattr(config, "config", config), POOLING_KEY, None) == "mean"


def _dropout_dense(model: Model, features: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(features))  # BERT, ALBERT: Dropout -> Dense on the pooled output


def _token_head(model: Model, features: torch.Tensor) -> torch.Tensor:
    return model.classifier(features.unsqueeze(1))  # RoBERTa, ELECTRA: the head takes token 0 itself


def _distilbert_head(model: Model, features: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(torch.relu(model.pre_classifier(features))))


def _deberta_head(model: Model, features: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(model.pooler(features.unsqueeze(1))))


def _modernbert_head(model: Model, features: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.drop(model.head(features)))


def _classifier(model: Model) -> nn.Linear:
    return model.classifier


def _out_proj(model: Model) -> nn.Linear:
    return model.classifier.out_proj


def _last_linear(model: Model) -> nn.Linear:
    """Any other family: the last Linear layer outside the encoder with one output per class."""
    prefix = model.base_model_prefix
    layers = [m for n, m in model.named_modules() if not n.startswith(prefix) and isinstance(m, nn.Linear)
              and m.out_features == model.config.num_labels]
    return layers[-1]


def _bert_last_attention_output(model: Model) -> nn.Module:
    """BERT, RoBERTa, ELECTRA, DeBERTa-v2: the last layer's attention output (projection, residual, LayerNorm),
    then its feed-forward block, run per position."""
    return model.base_model.encoder.layer[-1].attention.output


def _distilbert_last_norm(model: Model) -> nn.Module:
    """DistilBERT projects inside its attention module; from the LayerNorm after it on, each position alone."""
    return model.base_model.transformer.layer[-1].sa_layer_norm


def _absolute_positions(config: Any) -> int | None:
    return getattr(config, "max_position_embeddings", None)


def _roberta_positions(config: Any) -> int | None:
    """RoBERTa numbers positions from pad_token_id + 1: two fewer usable than its table (514 -> 512)."""
    return config.max_position_embeddings - (config.pad_token_id or 0) - 1


def _deberta_positions(config: Any) -> int | None:
    """DeBERTa-v3 has relative positions only (no limit); with absolute ones too, their table bounds it."""
    return config.max_position_embeddings if getattr(config, "position_biased_input", False) else None


@dataclass(frozen=True)
class Adapter:
    family: str
    model_types: tuple[str, ...]
    dropout_key: str | None
    """The config attribute the head's dropout is read from."""
    features: Callable[[nn.Module, Inputs], torch.Tensor] | None
    """What the head reads, from the encoder; None: no feature cache for this family."""
    head: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None
    last_layer: Callable[[nn.Module], nn.Linear]
    token_types: bool
    """Whether the model takes token_type_ids."""
    position_limit: Callable[[Any], int | None] = _absolute_positions
    per_position_tail: Callable[[nn.Module], nn.Module] | None = None
    """The module of the last layer from which on every position is computed on its own (after attention), when
    the head reads the first position only; None where that does not hold (ALBERT shares one layer module
    across depths, ModernBERT may pool the mean) or is not known."""


ADAPTERS: tuple[Adapter, ...] = (
    Adapter("BERT", ("bert",), "classifier_dropout", _pooled, _dropout_dense, _classifier, True,
            per_position_tail=_bert_last_attention_output),
    Adapter("ALBERT", ("albert",), "classifier_dropout_prob", _pooled, _dropout_dense, _classifier, True),
    Adapter("ELECTRA", ("electra",), "classifier_dropout", _first_token, _token_head, _out_proj, True,
            per_position_tail=_bert_last_attention_output),
    Adapter("DistilBERT", ("distilbert",), "seq_classif_dropout", _first_token, _distilbert_head, _classifier,
            False, per_position_tail=_distilbert_last_norm),
    Adapter("RoBERTa", ("roberta", "xlm-roberta"), "classifier_dropout", _first_token, _token_head, _out_proj,
            False, _roberta_positions, _bert_last_attention_output),
    Adapter("DeBERTa-v2", ("deberta-v2",), "cls_dropout", _first_token, _deberta_head, _classifier, True,
            _deberta_positions, _bert_last_attention_output),
    Adapter("ModernBERT", ("modernbert",), "classifier_dropout", _modernbert_pooled, _modernbert_head,
            _classifier, False),
)
GENERIC = Adapter("other", (), "classifier_dropout", None, None, _last_linear, True)
_BY_TYPE = {model_type: adapter for adapter in ADAPTERS for model_type in adapter.model_types}


def adapter_for(config: Any) -> Adapter:
    """The adapter of a model's config (or of a model); GENERIC for a family textfit has no adapter for."""
    config = getattr(config, "config", config)
    return _BY_TYPE.get(getattr(config, "model_type", ""), GENERIC)


def set_dropout(config: Any, rate: float) -> None:
    """dropout_rate on the head, under the name this family's config reads."""
    key = adapter_for(config).dropout_key
    if key is not None:
        setattr(config, key, rate)


def position_limit(config: Any) -> int | None:
    """The longest input in tokens the encoder can take, None when it has no fixed limit."""
    return adapter_for(config).position_limit(config)


def supports_feature_cache(model: nn.Module) -> bool:
    return isinstance(model, MeanPooled) or adapter_for(model).features is not None


def features(model: Model, inputs: Inputs) -> torch.Tensor:
    """What the head reads, computed by the encoder (train_only_on_top_layer computes it once per row)."""
    if isinstance(model, MeanPooled):
        return mean_of_tokens(model.base_model(**inputs).last_hidden_state, inputs["attention_mask"])
    compute = adapter_for(model).features
    if compute is None:
        raise TypeError(f"no feature cache for model_type {model.config.model_type!r}")
    return compute(model, inputs)


def head(model: Model, feats: torch.Tensor) -> torch.Tensor:
    """The head alone on features: model(**x).logits == head(model, features(model, x)) in eval mode."""
    if isinstance(model, MeanPooled):
        last = adapter_for(model).last_layer(model)
        return last(feats.to(last.weight.dtype))
    run = adapter_for(model).head
    if run is None:
        raise TypeError(f"no feature cache for model_type {model.config.model_type!r}")
    return run(model, feats)


def head_parameters(model: Model) -> list[tuple[str, nn.Parameter]]:
    """The classification head's parameters: everything outside the pretrained encoder."""
    prefix = model.base_model_prefix + "."
    return [(n, p) for n, p in model.named_parameters() if not n.startswith(prefix)]


def token_embeddings(model: Model) -> nn.Module | None:
    """The encoder's token-embedding table (freeze_token_embeddings), None where the model does not name one."""
    try:
        table = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return table if isinstance(table, nn.Module) else None


def reinitialize_head(model: Model) -> None:
    """A new random head on a fine-tuned encoder (reinitialize_top_layer=True on an artifact), each layer
    initialised as the architecture initialises it."""
    prefix = model.base_model_prefix
    for name, module in model.named_modules():
        if name and not name.startswith(prefix) and next(module.parameters(recurse=False), None) is not None:
            model._init_weights(module)


def scale_logits(model: nn.Module, factor: float) -> None:
    """Multiply the logits by `factor` by scaling the head's last layer: temperature scaling stored in the
    weights, so every engine (textfit, ONNX, a plain transformers pipeline) applies it."""
    last = adapter_for(model).last_layer(model)
    with torch.no_grad():
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)


def input_names(model: nn.Module, tokenizer: Any) -> list[str]:
    """The inputs textfit feeds this model (and its ONNX graph): token types only where both sides have them."""
    adapter = adapter_for(model)
    forward = getattr(model, "hf", model).forward  # a MeanPooled model takes what the model it wraps takes
    takes = adapter.token_types if adapter is not GENERIC else "token_type_ids" in inspect.signature(forward).parameters
    types = takes and "token_type_ids" in tokenizer.model_input_names
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])


@contextmanager
def attention(model: nn.Module, implementation: str | None) -> Iterator[None]:
    """Run the block with another of transformers' attention implementations ("eager", "sdpa") where the model
    can switch (the families on transformers' AttentionInterface); with None, or a model that cannot switch, as
    it is. The implementation lives in the config object but is not saved with it."""
    hf: Model = getattr(model, "hf", model)  # a MeanPooled model's attention is the wrapped model's
    current = getattr(hf.config, "_attn_implementation", None)
    can_switch = getattr(hf, "_can_set_attn_implementation", lambda: False)()
    if implementation is None or implementation == current or not can_switch:
        yield
        return
    try:
        hf.set_attn_implementation(implementation)
    except (ValueError, ImportError) as exc:  # a family that refuses it: a speed-up, never a reason to fail
        log.debug("attention %s not available for %s (%s); keeping %s", implementation, describe(model), exc, current)
        yield
        return
    try:
        yield
    finally:
        hf.set_attn_implementation(current)


def _first_position(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a[:, :1] if isinstance(a, torch.Tensor) and a.dim() == 3 else a for a in args)


@contextmanager
def first_position_only(model: nn.Module) -> Iterator[bool]:
    """Within the block, the encoder's last layer computes past its attention for the first position only: the
    one the head reads ([CLS]). Every other position's last-layer output reaches nothing, so the logits and every
    gradient are the whole computation's, for the last layer's output projection and feed-forward block at one
    position instead of all (5-11% of a 6-layer encoder's step, docs/benchmarks.md). Training, serving and the
    ONNX export use it. In training, dropout then draws numbers for the first position only: the masks it applies
    there have the same law, so training follows another random path of the same distribution (not the same
    path as without the cut, for a given seed). The block's last_hidden_state has one position. Yields whether it
    applies: not to a mean-pooled head, nor to a family without `per_position_tail`."""
    tail = adapter_for(model).per_position_tail
    if tail is None or isinstance(model, MeanPooled):
        yield False
        return
    handle = tail(model).register_forward_pre_hook(_first_position)
    try:
        yield True
    finally:
        handle.remove()


def describe(model: Model) -> str:
    adapter = adapter_for(model)
    name = adapter.family if adapter is not GENERIC else f"{model.config.model_type} (no textfit adapter)"
    return f"{name}, mean-pooled head" if isinstance(model, MeanPooled) else name
