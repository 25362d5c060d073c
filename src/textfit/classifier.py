"""TextClassifier: a pretrained encoder with its classification head, in scikit-learn's shape.

`fit` trains (fresh from a zoo model, or incrementally from an earlier model folder) on texts and labels in
memory (or a Channel already read), `predict_proba` returns probabilities whose columns are `classes_`,
`save`/`load` round-trip the model folder. The estimator reads no files of data, extracts no tarball, installs no
signal handler and writes no report: the training job (jobs/train.py, behind `textfit train` and
`textfit.train()`) reads the channels, opens model.tar.gz, records where the data and the model came from, and
writes the ONNX graph, the reports and the tarball beside the model.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from textfit.core import ownership
from textfit.core.shapes import check_model_files
from textfit.data import batching
from textfit.data.channels import (
    Channel,
    ClassSet,
    class_set,
    encode_labels,
    from_memory,
    multi_label_split,
    read_channel,
    stratified_split,
)
from textfit.errors import ArtifactError, DataError, HyperparameterError, ReportError, TextfitError
from textfit.hyperparameters import FIELDS, Given, Hyperparameters
from textfit.model import artifact, export, pretrained
from textfit.model.zoo import defaults_for, resolve_model
from textfit.predictor import Predicting, load_torch_model, read_model, saved_hyperparameters, softmax
from textfit.reports import metrics


def _torch_side(name: str) -> ModuleType:
    """torch, or one of the textfit modules built on it, imported now."""
    import torch

    from textfit.model import architectures
    from textfit.training import checkpoints, loop, recipes

    return {"torch": torch, "architectures": architectures, "checkpoints": checkpoints, "recipes": recipes,
            "training": loop}[name]


class _OnFirstUse:
    """A module's stand-in that imports it when fit, save or an export first reads one of its names: a model loaded
    for ONNX Runtime predicts without torch, and a server on it starts without it (docs/benchmarks.md: 42% less
    resident memory)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(_torch_side(self._name), attribute)


if TYPE_CHECKING:
    import torch

    from textfit.model import architectures
    from textfit.training import checkpoints, recipes
    from textfit.training import loop as training
else:
    torch, architectures, checkpoints, recipes, training = (
        _OnFirstUse(name) for name in ("torch", "architectures", "checkpoints", "recipes", "training"))

log = logging.getLogger("textfit")

ChannelLike = str | Path | Channel


class NotFitted(TextfitError, NotFittedError):
    """A prediction asked of an estimator before fit: textfit's error, and scikit-learn's NotFittedError."""


def _data_summary(labels: list[Any], classes: ClassSet, truncated: int) -> dict[str, Any]:
    """What the model was trained or validated on, counted: where the rows came from is the job's to add."""
    counts = Counter(label for row in labels for label in (row if isinstance(row, list) else [row]))
    return {"rows": len(labels), "class_counts": {classes.names[i]: counts.get(i, 0) for i in range(len(classes.names))},
            "truncated_texts": truncated}


def _cross_fitted_temperature(logits: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """The temperature fitted on all validation rows (the one stored), and honest calibrated probabilities
    of every row: each half scaled by the temperature fitted on the other half, never on itself."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    held_out = np.zeros_like(logits, dtype=np.float64)
    for fit_on, apply_to in (halves, halves[::-1]):
        t = metrics.fit_temperature(logits[fit_on], labels[fit_on])
        held_out[apply_to] = softmax(logits[apply_to] / t)
    return metrics.fit_temperature(logits, labels), held_out


@dataclass(frozen=True)
class LabelMode:
    """How labels are read: one per text, or (multi_label) several, separated by `delimiter` in data.csv."""

    multi_label: bool = False
    delimiter: str = "|"


def _as_channel(data: ChannelLike | Sequence[str], labels: Sequence[object] | None, what: str, mode: LabelMode
                ) -> Channel:
    """A Channel, or texts and labels in memory checked as a channel's rows are; a path is read (deprecated)."""
    if isinstance(data, (str, Path, Channel)):
        if labels is not None:
            raise DataError(f"{what}: labels come with texts in memory, fit(texts, labels); a channel holds its own "
                            "labels (pass a validation channel as validation=...)")
        if isinstance(data, Channel):
            return data
        warnings.warn("TextClassifier.fit(path) is deprecated and goes in the next release: fit takes texts and "
                      "labels (or a Channel from textfit.data.channels.read_channel); textfit.train(path, ...) "
                      "trains from files", DeprecationWarning, stacklevel=4)
        return read_channel(data, multi_label=mode.multi_label, delimiter=mode.delimiter)
    if labels is None:
        raise DataError(f"{what}: texts in memory need their labels: fit(texts, labels)")
    return from_memory(data, labels, what=what, multi_label=mode.multi_label, delimiter=mode.delimiter)


def label_mode(given: Given, source: Path | None) -> LabelMode:
    """multi_label and label_delimiter as given, else as the model being trained further (a folder) had them:
    how the job reads the channels before a fit."""
    values = dict(given.values)
    if source is not None and (source / artifact.MANIFEST).is_file():
        earlier = saved_hyperparameters(source, artifact.read_json(source / artifact.MANIFEST, artifact.MANIFEST_SHAPE))
        values = {**{k: earlier[k] for k in ("multi_label", "label_delimiter") if k in earlier}, **values}
    return LabelMode(bool(values.get("multi_label", False)), str(values.get("label_delimiter", "|")))


def _position_checked(hp: Hyperparameters, config: Any, given: Collection[str], where: str) -> Hyperparameters:
    """max_seq_length within the encoder's positions: a value the user gave above it is an error before training;
    the default is lowered to the limit, and the log says so."""
    limit = architectures.position_limit(config)
    if limit is None or hp.max_seq_length <= limit:
        return hp
    if "max_seq_length" in given:
        raise HyperparameterError(f"max_seq_length={hp.max_seq_length} is above the {limit} positions of {where}; "
                                  f"use max_seq_length={limit} or less (and --long-texts window to predict on "
                                  "longer texts)")
    log.info("max_seq_length: %d, the positions of %s (the default %d is more than it takes)", limit, where,
             hp.max_seq_length)
    return hp.with_values(max_seq_length=limit)


def _log_truncated(data: batching.Encoded, max_length: int, what: str, head_tail: bool = False) -> None:
    if data.truncated and head_tail:
        log.info("%d of %d %s texts are longer than max_seq_length=%d tokens and were read as head and tail (their "
                 "first and last tokens, %d in all)", data.truncated, len(data), what, max_length, max_length)
    elif data.truncated:
        log.info("%d of %d %s texts are longer than max_seq_length=%d tokens and were truncated (only their "
                 "first %d tokens count in training)", data.truncated, len(data), what, max_length, max_length)


# long_texts=auto reads texts as windows when at least this share of the training texts is longer than
# max_seq_length and the training set has fewer than WINDOW_BELOW_ROWS_PER_CLASS rows a class. Then long texts
# are what the model will be asked about, and their truncated tails held words it never read: on BBC News (every
# article longer) the same models scored higher with windows at 8, 16, 32 and 64 rows a class (+0.95, +0.27,
# +0.14, +0.32 points over 5-10 samples). At 128 a class windows no longer paid for their cost (+0.05 points with
# the small-data recipe, at 5 windows an article), and models fine-tuned on 128 a class or on all 1,781 articles
# scored lower with them (-0.32 points; 0.9505 against 0.9550): larger sets keep truncation, as do a few long
# texts among short ones (docs/benchmarks.md). Trained and read as head and tail, a large set scored higher on
# BBC (0.973 against 0.950) and lower on manual pages (0.840 against 0.870), whose heads say the most: auto
# does not choose it (long_texts=head_tail does).
LONG_TEXT_SHARE = 0.25
WINDOW_BELOW_ROWS_PER_CLASS = 100


def _long_texts(hp: Hyperparameters, data: batching.Encoded, per_class: float) -> Hyperparameters:
    """The hyperparameters with long_texts=auto resolved from the training texts' lengths and the rows a class
    (`per_class`), and the choice logged."""
    if hp.long_texts != "auto":
        return hp
    share = data.truncated / max(1, len(data))
    longer = (f"{100 * share:.0f}% of the training texts are longer than max_seq_length={hp.max_seq_length} "
              f"tokens")
    if share < LONG_TEXT_SHARE:
        log.info("long_texts: truncate (%s, under %.0f%%): predictions read the first %d tokens of a text", longer,
                 100 * LONG_TEXT_SHARE, hp.max_seq_length)
        return hp.with_values(long_texts="truncate")
    if per_class >= WINDOW_BELOW_ROWS_PER_CLASS:
        log.info("long_texts: truncate (%s, but %.0f training rows a class, %d or more: models trained on that "
                 "many first windows scored no higher reading whole texts); long_texts=window reads them whole",
                 longer, per_class, WINDOW_BELOW_ROWS_PER_CLASS)
        return hp.with_values(long_texts="truncate")
    log.info("long_texts: window (%s, at least %.0f%%, and %.0f training rows a class): predictions read a longer "
             "text as overlapping windows, up to %d of them, and average them; long_texts=truncate reads only the "
             "first %d tokens, at a window's cost", longer, 100 * LONG_TEXT_SHARE, per_class, batching.MAX_WINDOWS,
             hp.max_seq_length)
    return hp.with_values(long_texts="window")


@dataclass(frozen=True)
class _Start:
    """Where a fit starts: the checkpoint folder, what it is, and the settings resolved against it."""

    path: str
    model_id: str | None
    base_model: str
    fine_tuned: bool
    reinit: bool
    hp: Hyperparameters
    classes: ClassSet
    allow_network: bool


class TextClassifier(Predicting, ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained encoder for text classification.

    Args:
        model_id: a zoo id, a Hugging Face repo id or a local checkpoint folder (default: the embedded model).
        hyperparameters: SageMaker-style values (strings are fine); unset ones take the model's defaults.
        init_model: an earlier textfit model folder to continue training from (textfit.train(model=...) also
            takes its model.tar.gz or an s3:// URI).
        allow_network: let transformers download a model missing from the local cache.

    >>> clf = TextClassifier(hyperparameters={"epochs": "2"}).fit(["great film", "dull plot", ...],
    ...                                                           ["pos", "neg", ...])  # doctest: +SKIP
    >>> clf.predict(["a wonderful, moving film"])  # doctest: +SKIP
    ['pos']
    """

    # fitted attributes that more than one method assigns (_set_fitted, then a fit's validation or a load)
    thresholds_: list[float] | None
    validation_report_: dict[str, Any] | None

    def __init__(self, model_id: str | None = None, hyperparameters: Mapping[str, object] | Hyperparameters | None = None,
                 *, init_model: str | Path | None = None, allow_network: bool = False, **named: object) -> None:
        # scikit-learn's contract: every parameter stored as given, under its own name, and nothing else done
        # here (clone() rebuilds the estimator from get_params() and checks each value is the same object).
        unknown = sorted(set(named) - set(FIELDS))
        if unknown:
            raise TypeError(f"TextClassifier got unknown parameters {', '.join(unknown)}; the hyperparameters are "
                            f"{', '.join(FIELDS)}")
        self.model_id = model_id
        self.hyperparameters = hyperparameters
        self.init_model = init_model
        self.allow_network = allow_network
        for name in FIELDS:
            setattr(self, name, named.get(name))

    def effective_hyperparameters(self) -> dict[str, object]:
        """What this estimator was given: `hyperparameters` (a mapping, or a Hyperparameters object: all of its
        values), under the hyperparameters given by name (None: not given)."""
        base = self.hyperparameters
        given: dict[str, object] = (dict(asdict(base)) if isinstance(base, Hyperparameters) else dict(base or {}))
        given.update({name: getattr(self, name) for name in FIELDS if getattr(self, name, None) is not None})
        return given

    def score(self, X: Sequence[str], y: Sequence[object], sample_weight: Sequence[float] | None = None) -> float:
        """Accuracy on (texts, labels), the labels given as in training (values or class names): scikit-learn's
        `score`, which cross_val_score and GridSearchCV use."""
        from sklearn.metrics import accuracy_score

        if self.multi_label_:
            return float(super().score(X, y, sample_weight=sample_weight))
        truth = [self.class_index(label) for label in y]
        predicted = self.predict_proba(X).argmax(axis=1)
        return float(accuracy_score([-1 if t is None else t for t in truth], predicted, sample_weight=sample_weight))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    # ------------------------------------------------------------------------------------------ fitting

    def _reinitialize(self, hp: Hyperparameters, fine_tuned: bool, where: str) -> bool:
        """reinitialize_top_layer's matrix (README, Train): whether a new random head is built."""
        reinit = {"Auto": not fine_tuned, "True": True, "False": False}[hp.reinitialize_top_layer]
        if not fine_tuned and not reinit:
            raise HyperparameterError(
                f"reinitialize_top_layer=False needs a fine-tuned textfit model, but {where} is a pretrained encoder "
                "without a classification layer; use reinitialize_top_layer=Auto or True"
            )
        return reinit

    def _start(self, source: Path | None, train: Channel) -> _Start:
        """Resolve the model, its hyperparameters and the classes; nothing heavier than config.json is loaded."""
        fine_tuned = source is not None and artifact.is_fine_tuned(source)
        manifest = artifact.check_intact(source) if source is not None and fine_tuned else {}
        resolved = None if source is not None else resolve_model(self.model_id, allow_network=self.allow_network)
        model_id = resolved.model_id if resolved else (manifest.get("model_id") or self.model_id or str(self.init_model))
        path = str(source) if source is not None else resolved.path  # type: ignore[union-attr]
        hp = self.given_.resolve(defaults_for(model_id))
        reinit = self._reinitialize(hp, fine_tuned, str(self.init_model or path))
        if fine_tuned and not reinit:
            info = artifact.read_labels(source / artifact.LABELS)  # type: ignore[operator]
            classes = ClassSet(values=list(info["label_values"]), names=list(info["labels"]))
            earlier = bool(saved_hyperparameters(source, manifest).get("multi_label", False))  # type: ignore[arg-type]
            if earlier != hp.multi_label:
                raise HyperparameterError(f"{self.init_model} is a {'multi' if earlier else 'single'}-label model; "
                                          f"train it further with multi_label={earlier}, or build a new head with "
                                          "reinitialize_top_layer=True")
        else:
            classes = class_set(train)
        allow_network = self.allow_network and not fine_tuned
        check_model_files(path)  # a local folder's config.json and tokenizer_config.json, before transformers
        hp = _position_checked(hp, pretrained.load_config(path, allow_network), self.given_.names, model_id)
        return _Start(path, model_id, manifest.get("base_model") or path, fine_tuned, reinit, hp, classes,
                      allow_network)

    def _split(self, train: Channel, validation: Channel | None, classes: ClassSet, hp: Hyperparameters,
               hold_out: bool = True) -> tuple[list[str], list[int], list[str], list[int]]:
        """(train texts, train labels, validation texts, validation labels) as class indices; without
        `hold_out` (the small-data recipe) every row trains."""
        origin = "the model being trained further" if self.init_model else f"the training data ({train.path})"
        y = encode_labels(train, classes, origin=origin)
        if hp.multi_label and hp.calibrate:
            raise HyperparameterError("calibrate=True is for single-label models (a softmax temperature); "
                                      "multi-label models get a decision threshold per label instead")
        if validation is not None:
            return train.texts, y, validation.texts, encode_labels(validation, classes, origin=origin)
        if not hold_out:
            return train.texts, y, [], []
        if hp.validation_split_ratio == 0:
            for name in ("early_stopping", "calibrate"):
                if getattr(hp, name):
                    raise HyperparameterError(f"{name}=True needs validation data; pass a validation channel or "
                                              "set validation_split_ratio above 0")
            return train.texts, y, [], []
        if hp.multi_label:
            tr, va = multi_label_split(y, len(classes.values), hp.validation_split_ratio, hp.seed, path=train.path)
        else:
            tr, va = stratified_split(y, hp.validation_split_ratio, hp.seed, path=train.path)
        return [train.texts[i] for i in tr], [y[i] for i in tr], [train.texts[i] for i in va], [y[i] for i in va]

    def _model(self, start: _Start, mean_pooled: bool = False) -> tuple[architectures.Model, Any]:
        torch.manual_seed(start.hp.seed)  # the new head's initial weights
        if not start.reinit:
            model = load_torch_model(start.path, False)  # incremental training keeps the trained head and its dropout
        else:
            model = load_torch_model(start.path, start.allow_network, start.classes, start.hp.dropout_rate,
                                start.hp.multi_label, mean_pooled, ignore_mismatched_sizes=start.fine_tuned)
            if start.fine_tuned:
                architectures.reinitialize_head(model)
        return model, pretrained.load_tokenizer(start.path, start.allow_network)

    def _opened_init_model(self) -> contextlib.AbstractContextManager[Path]:
        """The model folder to train further. A tarball is the job's to open (textfit.train(model=...)); here it
        is still extracted, deprecated."""
        assert self.init_model is not None
        if artifact.is_tarball(Path(self.init_model)):
            warnings.warn("TextClassifier(init_model=<tarball>) is deprecated and goes in the next release: pass the "
                          "model folder, or textfit.train(..., model='model.tar.gz')", DeprecationWarning, stacklevel=4)
        return artifact.opened(self.init_model)

    def fit(self, X: Channel | Sequence[str], y: Sequence[object] | None = None, *,
            validation: Channel | tuple[Sequence[str], Sequence[object]] | None = None,
            on_epoch: Callable[[int, training.EpochMetrics], None] | None = None,
            checkpoint_dir: str | Path | None = None, stop: checkpoints.StopSignal | None = None) -> TextClassifier:
        """Train; returns self.

        Args:
            X: the texts (a list), or a Channel already read (textfit.data.channels.read_channel). A path is read
                too, deprecated: `textfit.train(path, ...)` trains from files.
            y: with texts, their labels (integers or names; for a multi-label model, lists of labels), as
                scikit-learn's fit(X, y).
            validation: (texts, labels), or a Channel; default: a stratified split of X.
            on_epoch: called with (epoch, metrics) after each epoch.
            checkpoint_dir: write a checkpoint there at each epoch end and when `stop` is requested, and resume
                from the one it holds (same data, hyperparameters and model).
            stop: with checkpoint_dir, a StopSignal whose request (from another thread, or a signal handler of
                yours) stops training at the next step boundary, after writing the checkpoint. fit installs no
                signal handler: that is the entry point's choice (`textfit train` makes SIGTERM and SIGINT request
                it).

        Every check of data and hyperparameters runs before the model's weights are loaded.

        Raises:
            DataError, HyperparameterError, ModelNotFoundError, ArtifactError: with what to fix.
            TrainingInterrupted: `stop` was requested; the checkpoint to resume from is written.
        """
        self.given_ = Given.parse(self.effective_hyperparameters())  # the edge: typed once, here
        if checkpoint_dir is not None:  # before anything is read: a folder that is not textfit's is never written
            channels = [("--train", X), ("--validation", validation)]
            ownership.check_apart(Path(checkpoint_dir), "--checkpoint-dir", [
                (flag, c.path if isinstance(c, Channel) else Path(c)) for flag, c in channels
                if isinstance(c, (str, Path)) or (isinstance(c, Channel) and c.path.exists())])
            ownership.check_writable(Path(checkpoint_dir), ownership.CHECKPOINT, "--checkpoint-dir")
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(self._opened_init_model()) if self.init_model else None
            mode = label_mode(self.given_, source)
            train_ch = _as_channel(X, y, "the training data", mode)
            val_ch = None
            if validation is not None:
                val_ch = (_as_channel(validation[0], validation[1], "the validation data", mode)
                          if isinstance(validation, tuple) else _as_channel(validation, None, "the validation data", mode))
            start = self._start(source, train_ch)
            given = self.given_.names
            recipe = recipes.choose(start.hp, given, len(train_ch.texts), len(start.classes.names),
                                    validation=val_ch is not None, new_head=start.reinit)
            hp = recipe.hp
            x_train, y_train, x_val, y_val = self._split(train_ch, val_ch, start.classes, hp, recipe.hold_out)
            log_hyperparameters(hp, given)
            recipes.log_recipe(recipe, given, len(x_train), len(train_ch.texts) - len(x_train))
            model, tokenizer = self._model(start, mean_pooled=recipe.name == recipes.FEWSHOT)
        names = architectures.input_names(model, tokenizer)
        types = "token_type_ids" in names
        n_labels = len(start.classes.names) if hp.multi_label else 0
        # A head_tail model learns from what it will read: each long text's head and tail.
        head_tail = hp.long_texts == "head_tail"
        train_data = batching.encode(tokenizer, x_train, hp.max_seq_length, y_train, token_types=types,
                                     n_labels=n_labels, head_tail=head_tail)
        val_data = batching.encode(tokenizer, x_val, hp.max_seq_length, y_val, token_types=types,
                                   n_labels=n_labels, head_tail=head_tail) if x_val else None
        _log_truncated(train_data, hp.max_seq_length, "training", head_tail)
        hp = _long_texts(hp, train_data, recipes.rows_per_class(len(train_ch.texts), len(start.classes.names)))
        log.info("Classes (%d): %s", len(start.classes.names), ", ".join(start.classes.names))
        if recipe.name == recipes.FEWSHOT and recipe.new_head and isinstance(model, architectures.MeanPooled):
            recipes.fit_probe(model, train_data, hp, training.class_weights(
                hp.class_weights, y_train, len(start.classes.names), hp.multi_label))
        checkpointer = None
        if checkpoint_dir is not None:
            checkpointer = checkpoints.Checkpointer(Path(checkpoint_dir), checkpoints.fingerprint(
                hp.to_strings(), train_data.input_ids, train_data.labels,
                {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and "version" not in k}),
                stop or checkpoints.StopSignal())
        result = training.train(model, train_data, val_data, hp, on_epoch=on_epoch, checkpoint=checkpointer)

        history = [m.as_dict() for m in result.history]
        manifest = {
            "model_id": start.model_id,
            "base_model": start.base_model,
            "architecture": architectures.describe(model),
            "initialized_from": str(self.init_model) if self.init_model else None,
            "fine_tuned": True,
            "hyperparameters": hp.to_json(),
            "training_recipe": {"name": recipe.name, "reason": recipe.reason,
                                "head": "mean of the token vectors" if architectures.is_mean_pooled(model)
                                else "the architecture's own"},
            "classes": {"labels": list(start.classes.names), "label_values": list(start.classes.values)},
            "epochs": history,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "data": {"train": _data_summary(y_train, start.classes, train_data.truncated),
                     "validation": _data_summary(y_val, start.classes, val_data.truncated if val_data else 0)
                     if y_val else None,
                     "validation_source": "channel" if val_ch else f"split {hp.validation_split_ratio}"},
        }
        self._set_fitted(model.cpu().eval(), tokenizer, manifest, start.classes.names, start.classes.values, hp=hp)
        self.validation_report_ = self._validate(x_val, y_val) if x_val else None
        return self

    def _validate(self, texts: list[str], labels: list[Any]) -> dict[str, Any]:
        """The final validation report of the kept model; with calibrate=True, a temperature fitted first; for a
        multi-label model, the decision threshold of each label is chosen on these rows first."""
        if self.multi_label_:
            truth = metrics.label_matrix(labels, len(self.classes_))
            proba = self.predict_proba(texts)
            self.thresholds_ = metrics.best_thresholds(truth, proba)
            self.manifest_["thresholds"] = dict(zip(self.classes_, self.thresholds_))
            at_half = metrics.multi_label_report(truth, proba, self.classes_, [0.5] * len(self.classes_))
            report = metrics.multi_label_report(truth, proba, self.classes_, self.thresholds_)
            log.info("Decision thresholds per label (chosen on the validation rows for F1): %s; micro-F1 %.4f at "
                     "0.5, %.4f at these", ", ".join(f"{c} {t:.3f}" for c, t in zip(self.classes_, self.thresholds_)),
                     at_half.micro_f1, report.micro_f1)
            return {**report.as_dict(), "micro_f1_at_0.5": at_half.micro_f1, "class_weights": self.hyperparameters_.class_weights}
        # The report is of the served computation: windows where the model reads long texts so. The temperature
        # is fitted on the logits of one row a text (its first max_seq_length tokens, or its head and tail), and
        # applies to every window alike.
        prefix_only = self.long_texts_ != "window"
        # One row a text's logits (predict_logits reads as the model does): the served probabilities of a model
        # that does not read windows, and what a temperature fits.
        logits = self.predict_logits(texts) if prefix_only or self.hyperparameters_.calibrate else None
        before = metrics.report(labels, softmax(logits) if logits is not None and prefix_only
                                else self.predict_proba(texts), self.classes_)
        calibration = None
        if self.hyperparameters_.calibrate:
            assert logits is not None and self.model_ is not None  # computed above; a fit's model is PyTorch's
            temperature, held_out = _cross_fitted_temperature(logits, np.asarray(labels), self.hyperparameters_.seed)
            architectures.scale_logits(self.model_, 1.0 / temperature)  # stored in the weights: every engine applies it
            after = metrics.report(labels, held_out, self.classes_)
            calibration = {"temperature": temperature, "ece_before": before.expected_calibration_error,
                           "ece_after": after.expected_calibration_error, "log_loss_before": before.log_loss,
                           "log_loss_after": after.log_loss,
                           "after_measured_on": "held-out halves of the validation rows (2-fold cross-fitting)"}
            log.info("Calibration: temperature %.3f, expected calibration error %.4f -> %.4f (measured on rows the "
                     "temperature was not fitted on)", temperature, before.expected_calibration_error,
                     after.expected_calibration_error)
            self.manifest_["calibration"] = calibration
            before = metrics.report(labels, softmax(logits / temperature) if prefix_only else self.predict_proba(texts),
                                    self.classes_)
        return {**before.as_dict(), "class_weights": self.hyperparameters_.class_weights, "calibration": calibration}

    # ------------------------------------------------------------------------------------------ fitted state

    # ------------------------------------------------------------------------------------------ predicting
    # predict_proba, predict, classify, class_index, predict_logits: Predicting's (predictor.py), over the
    # state _set_fitted gives

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFitted("this TextClassifier is not fitted yet; call fit() or TextClassifier.load()")

    # ------------------------------------------------------------------------------------------ persistence

    def write_model(self, folder: Path) -> None:
        """What a prediction needs, into `folder`: weights, config, tokenizer, labels, and the manifest with the
        digest of every model file there (an ONNX graph the job exported into `folder` first included)."""
        assert self.model_ is not None  # save and save_artifact refuse a model loaded as an ONNX graph alone
        self.model_.save_pretrained(folder)  # safetensors, config.json with id2label / label2id
        self.tokenizer_.save_pretrained(folder)
        artifact.write_json(folder / artifact.LABELS, {"labels": self.classes_, "label_values": self.label_values_})
        self.manifest_[artifact.DIGESTS] = artifact.digests(folder)
        artifact.write_json(folder / artifact.MANIFEST, self.manifest_)

    def save(self, path: str | Path, *, overwrite: bool = False, tar: bool = False, onnx: str | None = None) -> Path:
        """Write the model folder atomically: what `load` reads back (write_model). The ONNX graph, the reports
        beside the model (model card, validation report, plots) and the tarball are the training job's:
        `textfit.train(..., output=, tar=True)` writes them; `export_onnx` adds a graph to a saved folder.

        `tar=True` (writes `<path>.tar.gz`) and `onnx` (fp32 or int8: the graph too) are deprecated: the job's
        `tar` and `onnx` replace them.

        Raises:
            ArtifactError: the model could not be written (nothing is left behind).
            ReportError: the model is saved, but its ONNX graph or the tarball is not.
        """
        self._check_fitted()
        output = Path(path)
        if self.model_ is None:
            raise ArtifactError("this model was loaded for ONNX inference only; load it with backend='torch' to "
                                "save it")
        if onnx not in (None, "none", "fp32", "int8"):
            raise ArtifactError(f"onnx={onnx!r} is not valid; use fp32, int8 or none")
        if tar or onnx not in (None, "none"):
            warnings.warn("TextClassifier.save(tar=..., onnx=...) is deprecated and goes in the next release: "
                          "textfit.train(..., tar=True, onnx=...) writes the tarball and the ONNX graph, "
                          "TextClassifier.export_onnx adds a graph", DeprecationWarning, stacklevel=2)
        failed: list[str] = []

        def write(folder: Path) -> None:
            if onnx not in (None, "none"):
                failed.extend(self.write_graph(folder, onnx == "int8"))
            self.write_model(folder)

        tarball = artifact.tarball_path(output) if tar else None
        artifact.write_atomically(output, write, overwrite=overwrite, tarball=tarball)
        if tarball is not None:
            failed.extend(artifact.tarball_failures(output, tarball))
        if failed:
            raise ReportError(f"the model is saved in {output}, but {'; '.join(failed)}")
        return output

    def write_graph(self, folder: Path, quantize: bool = False) -> list[str]:
        """The ONNX graph a server starts from at once, into a model folder being written (before write_model,
        whose digests then cover it); an export that fails is named in the list returned (serving then exports
        at start: slower to start, the same answers)."""
        try:
            self.export_onnx(folder, quantize=quantize)
        except Exception as exc:  # the model is not lost to its graph
            shutil.rmtree(folder / export.ONNX_DIR, ignore_errors=True)
            return [f"the ONNX export failed ({type(exc).__name__}: {exc}); `serve` will export at start"]
        return []

    @classmethod
    def load(cls, path: str | Path, *, backend: str = "torch", quantized: bool = False,
             threads: int | None = None) -> TextClassifier:
        """Load an artifact folder or model.tar.gz written by `save` (weights from safetensors only).

        Args:
            backend: "torch", or "onnx" for ONNX Runtime (the artifact's onnx/ export, made on the fly if missing).
            quantized: with onnx, the int8 dynamically quantized model.
            threads: intra-op threads of the ONNX Runtime session (default: torch's thread count).

        Raises:
            ArtifactError: a file is missing, damaged or changed since it was saved; one message names each.
        """
        loaded = read_model(path, backend, quantized, threads)
        clf = cls(loaded.manifest.get("model_id"), loaded.manifest.get("hyperparameters"))
        clf._set_fitted(loaded.model, loaded.tokenizer, loaded.manifest, loaded.classes, loaded.values,
                        loaded.runner, loaded.backend, loaded.input_names)
        clf.validation_report_ = loaded.report
        return clf

    def export_onnx(self, folder: str | Path, *, quantize: bool = False) -> Path:
        """Write onnx/model.onnx (and with quantize, onnx/model.int8.onnx) into a saved artifact folder."""
        self._check_fitted()
        if self.model_ is None:
            raise ArtifactError("this model was loaded for ONNX inference only; load it with backend='torch' to "
                                "export it")
        folder = Path(folder)
        fp32 = export.export_onnx(self.model_, self.input_names_, export.onnx_path(folder, False))
        written = export.quantize_int8(fp32, export.onnx_path(folder, True)) if quantize else fp32
        if (folder / artifact.MANIFEST).is_file():  # a saved artifact: its digests now cover the graphs too
            artifact.refresh_digests(folder)
            ownership.add_entries(folder, [export.ONNX_DIR])
        return written


def _with_named_hyperparameters(init: Callable[..., None]) -> None:
    """scikit-learn reads an estimator's parameters from its constructor's signature: every hyperparameter is
    named there, keyword-only, None meaning not given (the model's default applies)."""
    signature = inspect.signature(init)
    named = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in FIELDS]
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    init.__signature__ = signature.replace(parameters=[*kept, *named])  # type: ignore[attr-defined]


_with_named_hyperparameters(TextClassifier.__init__)


def log_hyperparameters(hp: Hyperparameters, given: Collection[str]) -> None:
    """Every run logs its resolved configuration at start, marking what the user set (canonical names)."""
    user = set(given)
    log.info("Hyperparameters (* = given, others are defaults for this model):")
    for name, value in hp.to_strings().items():
        log.info("  %s%s = %s", "*" if name in user else " ", name, value)
