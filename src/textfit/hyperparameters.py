"""The 19 hyperparameters of SageMaker's Text Classification - TensorFlow algorithm, plus textfit's few extras.

Field names, defaults and valid ranges are the SageMaker contract (README: Hyperparameters). SageMaker passes every value as a
string ("True", "1e-5"), so parsing from strings is the main way in.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from textfit.errors import HyperparameterError

log = logging.getLogger("textfit")

OPTIMIZERS = ("adamw", "adam", "sgd", "nesterov", "rmsprop", "adagrad", "adadelta")
REINITIALIZE = ("Auto", "True", "False")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECIPES = ("auto", "finetune", "fewshot")
# How a model reads a text longer than max_seq_length tokens (long_texts, besides auto).
READS = ("truncate", "head_tail", "window")
LONG_TEXTS = ("auto", *READS)

# Other spellings seen in SageMaker's material (README: Hyperparameters, aliases): the JumpStart scripts'
# `train_only_top_layer`, the tuning page's `eps`, and the v1.x dashed names. Dashes are normalised first.
ALIASES = {
    "train_only_top_layer": "train_only_on_top_layer",
    "eps": "epsilon",
    "adam_learning_rate": "learning_rate",
}


def _unit(lo: float = 0.0, hi: float = 1.0) -> dict[str, Any]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True)
class Hyperparameters:
    """Training settings; field names and defaults are SageMaker's (README: Hyperparameters), extras are marked."""

    batch_size: int = field(default=32, metadata={"min": 1, "max": 65536})
    """Global batch size; split across devices when training on several."""
    beta_1: float = field(default=0.9, metadata={**_unit(), "below_max": True})
    """Adam/AdamW decay rate of the first moment estimates (below 1: at 1 the moment never updates)."""
    beta_2: float = field(default=0.999, metadata={**_unit(), "below_max": True})
    """Adam/AdamW decay rate of the second moment estimates (below 1, as beta_1)."""
    dropout_rate: float = field(default=0.2, metadata=_unit())
    """Dropout before the classification layer (used when a new head is built)."""
    early_stopping: bool = False
    """Stop when val_accuracy has not improved for `early_stopping_patience` epochs."""
    early_stopping_min_delta: float = field(default=0.0, metadata=_unit())
    """Smallest increase of val_accuracy that counts as an improvement."""
    early_stopping_patience: int = field(default=5, metadata={"min": 1, "max": 100000})
    """Epochs without improvement before training stops."""
    epochs: int = field(default=10, metadata={"min": 1, "max": 100000})
    """Number of passes over the training data."""
    epsilon: float = field(default=1e-7, metadata=_unit())
    """Numerical-stability term of adam, adamw, rmsprop, adadelta and adagrad."""
    initial_accumulator_value: float = field(default=0.0001, metadata=_unit())
    """Starting accumulator value of adagrad."""
    learning_rate: float = field(default=0.001, metadata=_unit())
    """Optimizer learning rate (the peak rate when warm-up is used)."""
    momentum: float = field(default=0.9, metadata=_unit())
    """Momentum of sgd and nesterov."""
    optimizer: str = field(default="adam", metadata={"choices": OPTIMIZERS})
    """One of adamw, adam, sgd, nesterov, rmsprop, adagrad, adadelta."""
    regularizers_l2: float = field(default=0.0001, metadata=_unit())
    """L2 factor on the classification layer's weights (added to the loss, as Keras does)."""
    reinitialize_top_layer: str = field(default="Auto", metadata={"choices": REINITIALIZE})
    """Auto: new head for a pretrained encoder, keep the head of a fine-tuned artifact. True/False force it."""
    rho: float = field(default=0.95, metadata=_unit())
    """Discounting factor of rmsprop and adadelta."""
    train_only_on_top_layer: bool = False
    """Freeze the encoder and train only the classification layer."""
    validation_split_ratio: float = field(default=0.2, metadata={"min": 0.0, "max": 0.99})
    """Fraction of the training data held out (stratified) when no validation channel is given."""
    warmup_steps_fraction: float = field(default=0.1, metadata=_unit())
    """Fraction of the update steps with a linear warm-up (adamw only), followed by linear decay."""
    max_seq_length: int = field(default=128, metadata={"min": 8, "max": 8192, "extra": True})
    """textfit extra: texts are truncated to this many tokens."""
    seed: int = field(default=42, metadata={"min": 0, "max": 2**32 - 1, "extra": True})
    """textfit extra: seed for the split, the head's initialisation, dropout and shuffling."""
    precision: str = field(default="auto", metadata={"choices": PRECISIONS, "extra": True})
    """textfit extra: auto (bf16 on CPUs with native bf16, fp16 mixed precision on GPUs), fp32, bf16, fp16."""
    class_weights: str = field(default="none", metadata={"extra": True})
    """textfit extra: loss weight per class: none (SageMaker's), balanced (rows / (classes x class rows)), or one
    positive number per class in class order, comma-separated ("1,4")."""
    calibrate: bool = field(default=False, metadata={"extra": True})
    """textfit extra: fit a temperature on the validation set after training, so probabilities match accuracy."""
    multi_label: bool = field(default=False, metadata={"extra": True})
    """textfit extra: each text has zero or more labels, separated by label_delimiter in data.csv's label column;
    one sigmoid output per label, with a decision threshold per label chosen on the validation rows."""
    label_delimiter: str = field(default="|", metadata={"extra": True})
    """textfit extra: what separates the labels of a row when multi_label=True."""
    freeze_token_embeddings: bool = field(default=True, metadata={"extra": True})
    """textfit extra: keep the encoder's token-embedding table as pretrained while the rest of it is fine-tuned:
    the table is half of a small encoder's weights, and its gradient and optimizer state cost time and memory at
    every step for no measured accuracy (README: Speed)."""
    training_recipe: str = field(default="auto", metadata={"choices": RECIPES, "extra": True})
    """textfit extra: finetune (fine-tune the encoder with its own head), fewshot (for small data: a head on the
    mean of the token vectors, fitted as a linear probe, then a fixed budget of fine-tuning steps on every row),
    or auto (fewshot when the training data has few rows per class; README: Small data)."""
    long_texts: str = field(default="auto", metadata={"choices": LONG_TEXTS, "extra": True})
    """textfit extra: how the trained model reads a text longer than max_seq_length tokens when it predicts:
    truncate (its first max_seq_length tokens alone count), head_tail (its first quarter of them and its last
    tokens for the rest, in training too), window (overlapping windows of max_seq_length tokens, their
    probabilities averaged), or auto (window when at least a quarter of the training texts were longer and
    the set has fewer than 100 rows a class, truncate otherwise). The artifact records the choice;
    `--long-texts` overrides it per command."""

    def __post_init__(self) -> None:
        problems = [p for f in fields(self) if (p := _check_range(f.name, getattr(self, f.name), f.metadata))]
        if problems:
            raise HyperparameterError(_join(problems))

    @classmethod
    def from_strings(cls, values: Mapping[str, object]) -> Hyperparameters:
        """Build from SageMaker-style values (strings or typed), ignoring unknown names with a log line.

        >>> Hyperparameters.from_strings({"epochs": "3", "early_stopping": "True"}).epochs
        3
        """
        return cls(**parse_hyperparameters(values))

    def to_json(self) -> dict[str, Any]:
        """The values as JSON keeps them, typed: what an artifact's manifest records (it read strings before;
        from_strings reads both)."""
        return asdict(self)

    def to_strings(self) -> dict[str, str]:
        """The values as SageMaker passes them: every value a string, booleans as "True"/"False"."""
        return {k: str(v) for k, v in asdict(self).items()}

    def with_values(self, **values: Any) -> Hyperparameters:
        return replace(self, **values)


FIELDS = {f.name: f for f in fields(Hyperparameters)}


def _join(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return "found the following hyperparameter problems:\n" + "\n".join(f"  - {p}" for p in problems)


def parse_class_weights(text: str) -> str | list[float]:
    """'none', 'balanced', or the explicit weights as floats (validated: positive numbers)."""
    value = text.strip().lower()
    if value in ("none", "balanced"):
        return value
    try:
        weights = [float(w) for w in value.replace(";", ",").split(",")]
    except ValueError:
        raise ValueError(f"class_weights={text!r} is not valid; use none, balanced, or numbers such as 1,4") from None
    if len(weights) < 2 or any(w <= 0 for w in weights):
        raise ValueError(f"class_weights={text!r} needs a positive weight for each class, such as 1,4")
    return weights


def _check_range(name: str, value: object, meta: Mapping[str, Any]) -> str | None:
    if name == "class_weights":
        try:
            parse_class_weights(str(value))
        except ValueError as exc:
            return str(exc)
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"{name}={value!r} is not valid; use one of {', '.join(meta['choices'])}"
    if "min" in meta and not meta["min"] <= value <= meta["max"]:
        return f"{name}={value} is out of range; valid values are in [{meta['min']}, {meta['max']}]"
    if meta.get("below_max") and value == meta["max"]:
        # Adam's bias correction divides by 1 - beta**t: at beta = 1 the update is 0/0 (torch refuses it too)
        return f"{name}={value} is out of range; valid values are in [{meta['min']}, {meta['max']})"
    return None


def _parse_value(name: str, raw: object) -> Any:
    kind = FIELDS[name].type
    if name == "label_delimiter":  # taken as given: a space or a tab is a delimiter too
        if not str(raw) or "\n" in str(raw) or '"' in str(raw):
            raise ValueError(f"label_delimiter={raw!r} is not usable; use a character such as | or ;")
        return str(raw)
    text = str(raw).strip()
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f'{name}={raw!r} is not a boolean; use "True" or "False"')
    if kind == "int":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer; use a whole number such as {FIELDS[name].default}") from None
        if not number.is_integer():
            raise ValueError(f"{name}={raw!r} is not an integer; use a whole number such as {FIELDS[name].default}")
        return int(number)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number; use a value such as {FIELDS[name].default}") from None
    if name == "class_weights":
        parse_class_weights(text)
        return text.lower() if text.lower() in ("none", "balanced") else text
    if name == "reinitialize_top_layer":  # SageMaker spells these "Auto"/"True"/"False"; accept any case
        return {c.lower(): c for c in REINITIALIZE}.get(text.lower(), text)
    return text.lower() if name in ("optimizer", "precision", "training_recipe", "long_texts") else text


def canonical_name(name: str) -> str | None:
    """The field name for a SageMaker spelling (aliases, v1 dashed names), or None when unknown."""
    key = name.strip().replace("-", "_")
    key = ALIASES.get(key, key)
    return key if key in FIELDS else None


def parse_hyperparameters(values: Mapping[str, object]) -> dict[str, Any]:
    """Typed values for the names given, by canonical name; every problem is collected and raised once.

    Unknown names are logged and ignored, as SageMaker's scripts do ("Ignoring unrecognized arguments"):
    automatic model tuning adds `_tuning_objective_metric`, and the container adds `sagemaker_*` names.
    """
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    for raw_name, raw in values.items():
        name = canonical_name(raw_name)
        if name is None:
            _log_ignored(raw_name)
            continue
        try:
            value = _parse_value(name, raw)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if name in parsed and parsed[name] != value:
            problems.append(f"{name} is given twice with different values ({parsed[name]!r} and {value!r})")
        parsed[name] = value
        if problem := _check_range(name, value, FIELDS[name].metadata):
            problems.append(problem)
    if problems:
        raise HyperparameterError(_join(problems))
    return parsed


def _log_ignored(name: str) -> None:
    if name.startswith(("_", "sagemaker_")):
        log.info("Ignoring hyperparameter %s (not used by the algorithm)", name)
        return
    guess = difflib.get_close_matches(name.replace("-", "_"), list(FIELDS) + list(ALIASES), n=1)
    hint = f"; did you mean {guess[0]}?" if guess else ""
    log.warning("Ignoring unrecognized hyperparameter %s%s", name, hint)


@dataclass(frozen=True)
class Given:
    """What the user set, typed once at the edge (a CLI flag, hyperparameters.json, an API mapping), and the one
    order in which defaults fill the rest: SageMaker's (the fields' own), then the model's (the zoo), then the
    chosen recipe's (training/recipes.choose, for the names not in `names`); a value the user gave is never
    overridden."""

    values: Mapping[str, Any]
    """The user's values, typed, by canonical name."""
    names: frozenset[str]
    """The names the user set: a recipe leaves these alone."""

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> Given:
        values = parse_hyperparameters(raw)
        names = set(values)
        if "_tuning_objective_metric" in raw:  # SageMaker's tuner reads val_accuracy: keep the validation split
            names.add("validation_split_ratio")
        return cls(dict(values), frozenset(names))

    def resolve(self, model_defaults: Mapping[str, Any] | None = None) -> Hyperparameters:
        """SageMaker's defaults, the model's own under them, the user's values over both.

        A model's defaults (model/zoo.py) replace SageMaker's algorithm-level ones only for full fine-tuning: the
        algorithm-level adam at 1e-3 suits a frozen encoder and wrecks the fine-tuning of a whole transformer.
        """
        merged: dict[str, Any] = {}
        if model_defaults and not self.values.get("train_only_on_top_layer", False):
            merged.update(model_defaults)
        merged.update(self.values)
        return Hyperparameters(**merged)


def resolve(given: Mapping[str, object], model_defaults: Mapping[str, Any] | None = None) -> Hyperparameters:
    """The hyperparameters of a run from raw values (strings or typed): Given.parse(given).resolve(...)."""
    return Given.parse(given).resolve(model_defaults)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """`--hp name=value` pairs from the command line, as strings."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise HyperparameterError(f"--hp {pair!r} is not of the form name=value; for example --hp epochs=3")
        out[name.strip()] = value.strip()
    return out
