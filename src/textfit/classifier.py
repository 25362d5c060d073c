"""TextClassifier: a pretrained encoder with a Dropout -> Dense head, in scikit-learn's shape.

`fit` trains (fresh from a zoo model, or incrementally from an earlier artifact), `predict_proba` returns
probabilities whose columns are `classes_`, `save`/`load` round-trip the artifact folder.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import platform
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textfit import artifact, batching, checkpoint, export, metrics, training
from textfit.channels import Channel, ClassSet, class_set, encode_labels, read_channel, stratified_split
from textfit.errors import ArtifactError, DataError, HyperparameterError, TextfitError
from textfit.hyperparameters import Hyperparameters, resolve
from textfit.zoo import defaults_for, resolve_model

log = logging.getLogger("textfit")


def _load_tokenizer(path: str, allow_network: bool) -> Any:
    return checkpoint.load_tokenizer(path, allow_network)


def _load_model(path: str, allow_network: bool, head: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    config = checkpoint.load_config(path, allow_network)
    for key, value in (head or {}).items():
        if key != "dropout" or not hasattr(config, "classifier_dropout_prob"):
            setattr(config, "classifier_dropout" if key == "dropout" else key, value)
        else:
            config.classifier_dropout_prob = value  # ALBERT's name for the head's dropout
    return checkpoint.load_classifier_model(path, config, allow_network, **kwargs)


def _head_config(classes: ClassSet, dropout: float) -> dict[str, Any]:
    return {
        "num_labels": len(classes.names),
        "id2label": dict(enumerate(classes.names)),
        "label2id": {name: i for i, name in enumerate(classes.names)},
        "dropout": dropout,  # the Dropout before the Dense layer
    }


def _reinitialize_head(model: nn.Module) -> None:
    """A new random head on a fine-tuned encoder (reinitialize_top_layer=True on an artifact)."""
    for name, module in model.named_modules():
        if not name.startswith(model.base_model_prefix) and isinstance(module, nn.Linear):
            model._init_weights(module)  # the architecture's own initialisation (normal, std 0.02 for BERT)


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    from textfit import __version__

    return {"textfit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version()}


def _data_summary(channel: Channel, labels: list[int], classes: ClassSet) -> dict[str, Any]:
    counts = Counter(labels)
    return {"file": str(channel.path), "sha256": channel.fingerprint, "rows": len(labels),
            "class_counts": {classes.names[i]: counts.get(i, 0) for i in range(len(classes.names))}}


class TextClassifier:
    """Fine-tune a pretrained encoder for text classification.

    Args:
        model_id: a zoo id, a Hugging Face repo id or a local checkpoint folder (default: the embedded model).
        hyperparameters: SageMaker-style values (strings are fine); unset ones take the model's defaults.
        init_model: an earlier textfit artifact (folder or model.tar.gz) to continue training from.
        allow_network: let transformers download a model missing from the local cache.

    >>> clf = TextClassifier(hyperparameters={"epochs": "2"}).fit("examples/sentiment")  # doctest: +SKIP
    >>> clf.predict(["a wonderful, moving film"])  # doctest: +SKIP
    ['positive']
    """

    def __init__(self, model_id: str | None = None, hyperparameters: Mapping[str, object] | None = None, *,
                 init_model: str | Path | None = None, allow_network: bool = False) -> None:
        self.model_id = model_id
        self.hyperparameters = dict(hyperparameters or {})
        self.init_model = init_model
        self.allow_network = allow_network

    # ------------------------------------------------------------------------------------------ fitting

    def _reinitialize(self, hp: Hyperparameters, source: Path | None, where: str) -> bool:
        """reinitialize_top_layer's matrix (spec §7.2): whether a new random head is built."""
        fine_tuned = source is not None and artifact.is_fine_tuned(source)
        reinit = {"Auto": not fine_tuned, "True": True, "False": False}[hp.reinitialize_top_layer]
        if not fine_tuned and not reinit:
            raise HyperparameterError(
                f"reinitialize_top_layer=False needs a fine-tuned textfit model, but {where} is a pretrained encoder "
                "without a classification layer; use reinitialize_top_layer=Auto or True"
            )
        return reinit

    def _split(self, train: Channel, validation: Channel | None, classes: ClassSet, hp: Hyperparameters
               ) -> tuple[list[str], list[int], list[str], list[int]]:
        """(train texts, train labels, validation texts, validation labels) as class indices."""
        origin = "the model being trained further" if self.init_model else f"the training data ({train.path})"
        y = encode_labels(train, classes, origin=origin)
        if validation is not None:
            return train.texts, y, validation.texts, encode_labels(validation, classes, origin=origin)
        if hp.validation_split_ratio == 0:
            if hp.early_stopping:
                raise HyperparameterError("early_stopping=True needs validation data; pass a validation channel "
                                          "or set validation_split_ratio above 0")
            return train.texts, y, [], []
        tr, va = stratified_split(y, hp.validation_split_ratio, hp.seed, path=train.path)
        return [train.texts[i] for i in tr], [y[i] for i in tr], [train.texts[i] for i in va], [y[i] for i in va]

    def _load(self, path: str, classes: ClassSet, hp: Hyperparameters, fine_tuned: bool, reinit: bool
              ) -> tuple[nn.Module, Any]:
        torch.manual_seed(hp.seed)  # the new head's initial weights
        if not reinit:
            model = _load_model(path, False)  # incremental training keeps the trained head and its dropout
        else:
            model = _load_model(path, self.allow_network and not fine_tuned, _head_config(classes, hp.dropout_rate),
                                ignore_mismatched_sizes=fine_tuned)
            if fine_tuned:
                _reinitialize_head(model)
        return model, _load_tokenizer(path, self.allow_network and not fine_tuned)

    def fit(self, train: str | Path | Channel, validation: str | Path | Channel | None = None, *,
            on_epoch: Callable[[int, training.EpochMetrics], None] | None = None) -> TextClassifier:
        """Train on a channel (a folder with data.csv, or a CSV file); returns self.

        Every check of data and hyperparameters runs before the model is loaded.

        Raises:
            DataError, HyperparameterError, ModelNotFoundError, ArtifactError: with what to fix.
        """
        train_ch = train if isinstance(train, Channel) else read_channel(train)
        val_ch = validation if isinstance(validation, Channel) or validation is None else read_channel(validation)
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(artifact.opened(self.init_model)) if self.init_model else None
            fine_tuned = source is not None and artifact.is_fine_tuned(source)
            manifest = artifact.check_intact(source) if source and fine_tuned else {}
            model_id = manifest.get("model_id") or self.model_id or (str(self.init_model) if self.init_model else None)
            resolved = None if source else resolve_model(self.model_id, allow_network=self.allow_network)
            hp = resolve(self.hyperparameters, defaults_for(resolved.model_id if resolved else model_id))
            reinit = self._reinitialize(hp, source, str(self.init_model or resolved.path))  # type: ignore[union-attr]
            if fine_tuned and not reinit:
                info = artifact.read_json(source / artifact.LABELS)  # type: ignore[operator]
                classes = ClassSet(values=list(info["label_values"]), names=list(info["labels"]))
            else:
                classes = class_set(train_ch)
            x_train, y_train, x_val, y_val = self._split(train_ch, val_ch, classes, hp)
            log_hyperparameters(hp, self.hyperparameters)
            model, tokenizer = self._load(str(source) if source else resolved.path, classes, hp,  # type: ignore[union-attr]
                                          fine_tuned, reinit)
        train_data = batching.encode(tokenizer, x_train, hp.max_seq_length, y_train)
        val_data = batching.encode(tokenizer, x_val, hp.max_seq_length, y_val) if x_val else None
        log.info("Classes (%d): %s", len(classes.names), ", ".join(classes.names))
        result = training.train(model, train_data, val_data, hp, on_epoch=on_epoch)

        self.model_, self.tokenizer_, self.hyperparameters_ = model.cpu().eval(), tokenizer, hp
        self.runner_, self.backend_ = export.TorchRunner(self.model_), "torch"
        self.classes_, self.label_values_ = list(classes.names), list(classes.values)
        self.model_id_ = resolved.model_id if resolved else model_id
        self.history_, self.best_epoch_ = [m.as_dict() for m in result.history], result.best_epoch
        self.manifest_ = {
            "model_id": self.model_id_,
            "base_model": manifest.get("base_model") or (resolved.path if resolved else str(self.init_model)),
            "initialized_from": str(self.init_model) if self.init_model else None,
            "fine_tuned": True,
            "hyperparameters": hp.to_strings(),
            "classes": {"labels": self.classes_, "label_values": self.label_values_},
            "epochs": self.history_,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "data": {"train": _data_summary(train_ch, y_train, classes),
                     "validation": _data_summary(val_ch or train_ch, y_val, classes) if y_val else None,
                     "validation_source": "channel" if val_ch else f"split {hp.validation_split_ratio}"},
            "versions": _versions(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        self.validation_report_ = self._validate(x_val, y_val) if x_val else None
        return self

    def _validate(self, texts: list[str], labels: list[int]) -> dict[str, Any]:
        """The final validation report of the kept model; with calibrate=True, a temperature fitted first."""
        logits = self.predict_logits(texts)
        before = metrics.report(labels, _softmax(logits), self.classes_)
        calibration = None
        if self.hyperparameters_.calibrate:
            temperature = metrics.fit_temperature(logits, np.asarray(labels))
            _scale_head(self.model_, 1.0 / temperature)  # stored in the weights: every engine applies it
            after = metrics.report(labels, _softmax(logits / temperature), self.classes_)
            calibration = {"temperature": temperature, "ece_before": before.expected_calibration_error,
                           "ece_after": after.expected_calibration_error, "log_loss_before": before.log_loss,
                           "log_loss_after": after.log_loss}
            log.info("Calibration: temperature %.3f, expected calibration error %.4f -> %.4f", temperature,
                     before.expected_calibration_error, after.expected_calibration_error)
            self.manifest_["calibration"] = calibration
            before = after
        self._validation_arrays = (np.asarray(labels), _softmax(logits / (calibration or {}).get("temperature", 1.0)))
        return {**before.as_dict(), "class_weights": self.hyperparameters_.class_weights, "calibration": calibration}

    # ------------------------------------------------------------------------------------------ predicting

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise TextfitError("this TextClassifier is not fitted yet; call fit() or TextClassifier.load()")

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Raw scores before the softmax, one row per text (truncated at max_seq_length tokens)."""
        return self._logits(texts, batch_size)  # type: ignore[return-value]

    def _logits(self, texts: Sequence[str], batch_size: int, overlap: int | None = None
                ) -> tuple[np.ndarray, batching.Encoded] | np.ndarray:
        self._check_fitted()
        if isinstance(texts, str):
            raise DataError("predict_proba takes a list of texts, not a single string; wrap it: [text]")
        data = batching.encode(self.tokenizer_, texts, self.hyperparameters_.max_seq_length, window_overlap=overlap)
        rows = np.zeros((len(data), len(self.classes_)), dtype=np.float32)
        for batch in batching.iterate(data, batch_size, shuffle=False):
            rows[batch.rows] = self.runner_(batch.inputs)
        return (rows, data) if overlap is not None else rows

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64, *, long_texts: str = "truncate"
                      ) -> np.ndarray:
        """Probabilities, one row per text, columns in the order of `classes_`.

        Args:
            texts: the texts; they are batched by length and padded per batch.
            long_texts: "truncate" (SageMaker's behaviour) cuts texts at max_seq_length tokens; "window"
                classifies overlapping windows of a longer text and averages their probabilities,
                weighted by window length.
        """
        self._check_fitted()
        if long_texts not in ("truncate", "window"):
            raise DataError(f"long_texts={long_texts!r} is not valid; use truncate or window")
        if not isinstance(texts, str) and len(texts) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        if long_texts == "truncate":
            return _softmax(self._logits(texts, batch_size))  # type: ignore[arg-type]
        logits, data = self._logits(texts, batch_size, overlap=self.hyperparameters_.max_seq_length // 4)  # type: ignore[misc]
        weights = np.array([len(ids) for ids in data.input_ids], dtype=np.float32)
        out = np.zeros((len(texts), len(self.classes_)), dtype=np.float32)
        np.add.at(out, data.owners, _softmax(logits) * weights[:, None])
        return out / out.sum(axis=1, keepdims=True)

    def classify(self, texts: Sequence[str], *, long_texts: str = "truncate") -> list[dict[str, Any]]:
        """Per text, SageMaker's verbose answer: probabilities over all classes, the labels, the predicted label.

        >>> textfit.load("model/").classify(["a lovely film"])  # doctest: +SKIP
        [{'probabilities': [0.02, 0.98], 'labels': ['negative', 'positive'], 'predicted_label': 'positive'}]
        """
        from textfit.inference import verbose_record

        return [verbose_record(row, self.classes_) for row in self.predict_proba(texts, long_texts=long_texts)]

    def class_index(self, label: object) -> int | None:
        """The column of a label given as in the training data (its value) or as a class name; None if unknown."""
        text = str(label).strip()
        for i, value in enumerate(self.label_values_):
            if text == str(value):
                return i
        return self.classes_.index(text) if text in self.classes_ else None

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable class of each text (its name where the data gave names)."""
        proba = self.predict_proba(texts)
        return [self.classes_[i] for i in proba.argmax(axis=1)]

    # ------------------------------------------------------------------------------------------ persistence

    def _write(self, folder: Path) -> None:
        from textfit import plots
        from textfit.card import model_card

        self.model_.save_pretrained(folder)  # safetensors, config.json with id2label / label2id
        self.tokenizer_.save_pretrained(folder)
        artifact.write_json(folder / artifact.LABELS, {"labels": self.classes_, "label_values": self.label_values_})
        self.manifest_[artifact.DIGESTS] = artifact.digests(folder)
        artifact.write_json(folder / artifact.MANIFEST, self.manifest_)
        report = getattr(self, "validation_report_", None)
        if self.history_:
            plots.training_curves(self.history_, folder / artifact.CURVES)
        if report is not None:
            artifact.write_json(folder / artifact.REPORT, report)
            if hasattr(self, "_validation_arrays"):
                plots.confusion_matrix(metrics.report(*self._validation_arrays, self.classes_),
                                       folder / artifact.CONFUSION)
        (folder / artifact.CARD).write_text(model_card(self.manifest_, report), encoding="utf-8")

    def save(self, path: str | Path, *, overwrite: bool = False, tar: bool = False) -> Path:
        """Write the artifact folder atomically; with tar=True also `<path>.tar.gz` (SageMaker's model.tar.gz)."""
        self._check_fitted()
        output = Path(path)
        artifact.write_atomically(output, self._write, overwrite=overwrite)
        if tar:
            artifact.write_tarball(output, output.with_name(output.name + ".tar.gz"))
        return output

    @classmethod
    def load(cls, path: str | Path, *, backend: str = "torch", quantized: bool = False,
             threads: int | None = None) -> TextClassifier:
        """Load an artifact folder or model.tar.gz written by `save` (weights from safetensors only).

        Args:
            backend: "torch", or "onnx" for ONNX Runtime (the artifact's onnx/ export, made on the fly if missing).
            quantized: with onnx, the int8 dynamically quantized model.
            threads: intra-op threads of the ONNX Runtime session (default: torch's thread count).
        """
        with artifact.opened(path) as folder:
            manifest = artifact.check_intact(folder)
            labels = artifact.read_labels(folder / artifact.LABELS)
            clf = cls(manifest.get("model_id"), manifest.get("hyperparameters"))
            clf.model_ = _load_model(str(folder), False).eval()
            if clf.model_.config.num_labels != len(labels["labels"]):
                raise ArtifactError(f"{folder}: config.json has {clf.model_.config.num_labels} outputs but "
                                    f"labels_info.json names {len(labels['labels'])} classes; the artifact is damaged")
            clf.tokenizer_ = _load_tokenizer(str(folder), False)
            clf.runner_ = export.runner(clf.model_, folder, backend, input_names(clf.tokenizer_), quantized, threads)
        clf.hyperparameters_ = Hyperparameters.from_strings(manifest.get("hyperparameters", {}))
        clf.classes_, clf.label_values_ = list(labels["labels"]), list(labels["label_values"])
        clf.model_id_, clf.manifest_ = manifest.get("model_id"), manifest
        clf.history_, clf.best_epoch_ = manifest.get("epochs", []), manifest.get("best_epoch", 0)
        clf.backend_ = backend
        report_file = Path(path) / artifact.REPORT if Path(path).is_dir() else None
        clf.validation_report_ = artifact.read_json(report_file) if report_file and report_file.is_file() else None
        return clf

    def export_onnx(self, folder: str | Path, *, quantize: bool = False) -> Path:
        """Write onnx/model.onnx (and with quantize, onnx/model.int8.onnx) into a saved artifact folder."""
        self._check_fitted()
        fp32 = export.export_onnx(self.model_, input_names(self.tokenizer_), export.onnx_path(Path(folder), False))
        return export.quantize_int8(fp32, export.onnx_path(Path(folder), True)) if quantize else fp32


def input_names(tokenizer: Any) -> list[str]:
    """The model inputs that batching.collate builds for this tokenizer."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names
                                              else [])


def _scale_head(model: nn.Module, factor: float) -> None:
    """Multiply the logits by `factor` by scaling the last layer of the head (temperature scaling)."""
    num_labels = model.config.num_labels
    last = [m for n, m in model.named_modules() if not n.startswith(model.base_model_prefix)
            and isinstance(m, nn.Linear) and m.out_features == num_labels][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def log_hyperparameters(hp: Hyperparameters, given: Mapping[str, object]) -> None:
    """Every run logs its resolved configuration at start, marking what the user set."""
    from textfit.hyperparameters import canonical_name

    user = {canonical_name(k) for k in given}
    log.info("Hyperparameters (* = given, others are defaults for this model):")
    for name, value in hp.to_strings().items():
        log.info("  %s%s = %s", "*" if name in user else " ", name, value)


def train(train: str | Path, validation: str | Path | None = None, *, model_id: str | None = None,
          hyperparameters: Mapping[str, object] | None = None, output: str | Path | None = None,
          model: str | Path | None = None, tar: bool = False, overwrite: bool = False,
          allow_network: bool = False, tensorboard: str | Path | None = None) -> TextClassifier:
    """Fine-tune and (with `output`) save: what `textfit train` does, from Python. Paths may be s3:// URIs.

    >>> clf = textfit.train("data/", model_id="textfit-tc-all-minilm-l6-v2", output="model/")  # doctest: +SKIP
    >>> textfit.load("model/").predict(["a lovely film"])  # doctest: +SKIP
    """
    from textfit import distributed, remote

    world = distributed.init_from_environment()  # under torchrun or --nproc-per-node: join the other workers
    try:
        if output is not None and not remote.is_remote(output) and world.is_main:
            artifact.check_output(Path(output), overwrite)  # before hours of training, not after
        with contextlib.ExitStack() as stack:
            local = lambda loc: None if loc is None else stack.enter_context(remote.local_copy(loc))  # noqa: E731
            clf = TextClassifier(model_id, hyperparameters, init_model=local(model), allow_network=allow_network)
            on_epoch = stack.enter_context(_tensorboard(tensorboard)) if tensorboard and world.is_main else None
            clf.fit(local(train), local(validation), on_epoch=on_epoch)  # type: ignore[arg-type]
            clf.init_model = model  # the manifest names where it came from, not the temporary copy
            if model is not None:
                clf.manifest_["initialized_from"] = str(model)
        clf.manifest_["workers"] = world.size
        if output is not None and world.is_main:  # one artifact, written by rank 0 alone
            _save(clf, output, tar, overwrite)
    finally:
        if world.active:
            distributed.shutdown()
    return clf


@contextlib.contextmanager
def _tensorboard(folder: str | Path) -> Any:
    """An epoch hook that writes TensorBoard scalars (loss, accuracy, val_loss, val_accuracy) to `folder`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TextfitError("--tensorboard needs the tensorboard package: pip install textfit[tensorboard]") from None
    writer = SummaryWriter(log_dir=str(folder))

    def write(epoch: int, m: training.EpochMetrics) -> None:
        for name, value in m.as_dict().items():
            if value is not None and name != "seconds":
                writer.add_scalar(name, value, epoch)
        writer.flush()

    try:
        yield write
    finally:
        writer.close()


def _save(clf: TextClassifier, output: str | Path, tar: bool, overwrite: bool) -> None:
    from textfit import remote

    if not remote.is_remote(output):
        clf.save(output, overwrite=overwrite, tar=tar)
        return
    with tempfile.TemporaryDirectory(prefix="textfit-out-") as tmp:
        folder = clf.save(Path(tmp) / "model", tar=tar)
        remote.upload(folder, str(output))
        if tar:
            remote.upload(folder.with_name("model.tar.gz"), str(output).rstrip("/") + ".tar.gz")


def load(path: str | Path, *, backend: str = "torch", quantized: bool = False,
         threads: int | None = None) -> TextClassifier:
    """Load a trained model (folder, model.tar.gz, or an s3:// URI of either); see TextClassifier.load."""
    from textfit import remote

    with remote.local_copy(path) as local:
        return TextClassifier.load(local, backend=backend, quantized=quantized, threads=threads)
