"""A trained model ready to predict: its tokenizer, its forward pass (ONNX Runtime's or PyTorch's), its classes.

`Predicting` holds the prediction methods (predict_proba and what is built on it) once, for the two objects that
predict: the scikit-learn estimator (classifier.TextClassifier, after fit or load) and `Predictor`, what a
server loads. A Predictor on the ONNX back end imports neither torch nor scikit-learn nor transformers: a server
process starts in well under a second (docs/benchmarks.md), which is what serverless and autoscaled endpoints pay
at every scale-out.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from textfit import explain as explanations
from textfit.core.shapes import check_model_files, check_tokenizer_config
from textfit.data import batching
from textfit.data.channels import ClassSet
from textfit.errors import ArtifactError, DataError, HyperparameterError
from textfit.hyperparameters import READS, Hyperparameters, parse_hyperparameters
from textfit.model import artifact, export
from textfit.reports.records import verbose_record

if TYPE_CHECKING:
    from torch import nn

    from textfit.model.architectures import Model

log = logging.getLogger("textfit")


def saved_hyperparameters(folder: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters in a saved model's manifest, parsed; a value not as textfit writes it names the file."""
    try:
        return parse_hyperparameters(manifest.get("hyperparameters", {}))
    except HyperparameterError as exc:
        raise ArtifactError(f"{folder / artifact.MANIFEST}: field 'hyperparameters': {' '.join(str(exc).split())}; "
                            f"{artifact.DAMAGED}") from None


def load_torch_model(path: str, allow_network: bool, classes: ClassSet | None = None, dropout: float | None = None,
                     multi_label: bool = False, mean_pooled: bool = False, **kwargs: Any) -> nn.Module:
    """The checkpoint with a sequence-classification head: its own, or (given `classes`) a new one, reading the
    mean of the token vectors when `mean_pooled`. A saved mean-pooled model comes back mean-pooled."""
    from textfit.model import architectures, pretrained

    config = pretrained.load_config(path, allow_network)
    if classes is not None:
        if mean_pooled:
            config.update({architectures.POOLING_KEY: "mean"})
        elif hasattr(config, architectures.POOLING_KEY):  # a new head of the model's own kind
            delattr(config, architectures.POOLING_KEY)
        config.num_labels = len(classes.names)
        config.id2label = dict(enumerate(classes.names))
        config.label2id = {name: i for i, name in enumerate(classes.names)}
        # a plain transformers pipeline then applies a sigmoid per label (with top_k=None)
        config.problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    if dropout is not None:
        architectures.set_dropout(config, dropout)  # the Dropout before the Dense layer, by this family's name
    model = pretrained.load_classifier_model(path, config, allow_network, **kwargs)
    if not architectures.is_mean_pooled(config):
        return model
    if not architectures.can_mean_pool(model):  # only a new head can be asked for: an artifact's was checked
        log.info("%s has no head layer that reads the encoder's hidden vectors: the small-data recipe keeps the "
                 "architecture's own head", architectures.describe(model))
        delattr(model.config, architectures.POOLING_KEY)
        return model
    return architectures.MeanPooled(model)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Predicting:
    """The prediction methods of a fitted model, over the state `_set_fitted` gives it (the estimator's fitted
    attributes, by scikit-learn's naming)."""

    model_: Model | None
    tokenizer_: Any
    manifest_: dict[str, Any]
    hyperparameters_: Hyperparameters
    classes_: list[str]
    label_values_: list[object]
    model_id_: str | None
    history_: list[dict[str, Any]]
    best_epoch_: int
    input_names_: list[str]
    runner_: export.Runner
    backend_: str
    validation_report_: dict[str, Any] | None
    multi_label_: bool
    label_delimiter_: str
    long_texts_: str
    thresholds_: list[float] | None

    def _set_fitted(self, model: Model | None, tokenizer: Any, manifest: dict[str, Any],
                    classes: Sequence[str], values: Sequence[object], runner: export.Runner | None = None,
                    backend: str = "torch", input_names: list[str] | None = None, *,
                    hp: Hyperparameters | None = None) -> None:
        """The one place fitted state is set, from `fit` and from `load` alike (`model` is None when an ONNX
        graph alone serves the predictions)."""
        self.model_, self.tokenizer_, self.manifest_ = model, tokenizer, manifest
        # a fit hands its typed values down; a load reads the manifest (typed, or strings before 0.2)
        self.hyperparameters_ = hp or Hyperparameters.from_strings(manifest.get("hyperparameters", {}))
        self.manifest_["hyperparameters"] = self.hyperparameters_.to_json()  # one form in memory, and when saved
        self.classes_, self.label_values_ = list(classes), list(values)
        self.model_id_ = manifest.get("model_id")
        self.history_, self.best_epoch_ = list(manifest.get("epochs", [])), int(manifest.get("best_epoch", 0))
        if model is None:  # the ONNX graph alone: its runner and its input names come with it
            assert runner is not None and input_names
            self.input_names_, self.runner_ = input_names, runner
        else:
            from textfit.model import architectures

            self.input_names_ = input_names or architectures.input_names(model, tokenizer)
            self.runner_ = runner or export.TorchRunner(model)
        self.backend_ = backend
        self.validation_report_ = None
        self.multi_label_ = self.hyperparameters_.multi_label
        self.label_delimiter_ = self.hyperparameters_.label_delimiter
        # An artifact from before long_texts (its hyperparameters lack it, so it parses as auto) truncated.
        self.long_texts_ = "truncate" if self.hyperparameters_.long_texts == "auto" else self.hyperparameters_.long_texts
        stored = manifest.get("thresholds") or {}
        self.thresholds_ = [float(stored.get(c, 0.5)) for c in self.classes_] if self.multi_label_ else None

    def _check_fitted(self) -> None:
        """Nothing to check for a loaded Predictor; the estimator raises before fit."""

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64, *, long_texts: str | None = None
                       ) -> np.ndarray:
        """Raw scores before the softmax, one row per text: of its first max_seq_length tokens, or of its head
        and tail where `long_texts` (None: the model's) is head_tail."""
        return self._logits(texts, batch_size, head_tail=self.resolve_long_texts(long_texts) == "head_tail")[0]

    def _logits(self, texts: Sequence[str], batch_size: int, overlap: int | None = None, count: bool = False,
                head_tail: bool = False) -> tuple[np.ndarray, batching.Encoded]:
        """Logits of each row (a text, or with `overlap` a window of one) and the encoded rows (with `count`,
        knowing how many texts were truncated). Rows that fit in one batch are one forward pass in the order
        given (the server's queue forms its batches so); more are grouped by length into batches."""
        self._check_fitted()
        data = batching.encode(self.tokenizer_, texts, self.hyperparameters_.max_seq_length, window_overlap=overlap,
                               token_types="token_type_ids" in self.input_names_, count_truncated=count,
                               head_tail=head_tail)
        if 0 < len(data) <= batch_size:
            return self.runner_(batching.pad(data, range(len(data)))), data
        rows = np.zeros((len(data), len(self.classes_)), dtype=np.float32)
        for group in batching.plan_batches([len(ids) for ids in data.input_ids], batch_size, shuffle=False):
            rows[group] = self.runner_(batching.pad(data, group))
        return rows, data

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64, *, long_texts: str | None = None,
                      counts: dict[str, int] | None = None) -> np.ndarray:
        """Probabilities, one row per text, columns in the order of `classes_`.

        Args:
            texts: the texts; they are batched by length and padded per batch (up to `batch_size` of them: one
                batch, as given).
            long_texts: "truncate" cuts texts at max_seq_length tokens; "head_tail" reads a longer text's first
                quarter of them and its last tokens for the rest; "window" classifies overlapping windows of a
                longer text (up to 64) and averages their probabilities, weighted by window length (for a
                multi-label model, the most confident window per label); None: the model's `long_texts_`, chosen
                in training (hyperparameter long_texts).
            counts: if given, "truncated" is increased by the number of texts cut at max_seq_length tokens.
        """
        self._check_fitted()
        long_texts = self.resolve_long_texts(long_texts)
        if not isinstance(texts, str) and len(texts) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        if long_texts != "window":
            logits, data = self._logits(texts, batch_size, count=counts is not None, head_tail=long_texts == "head_tail")
            if counts is not None:
                counts["truncated"] = counts.get("truncated", 0) + data.truncated
            return sigmoid(logits) if self.multi_label_ else softmax(logits)
        logits, data = self._logits(texts, batch_size, overlap=self.hyperparameters_.max_seq_length // 4)
        assert data.owners is not None  # windows: each row names the text it is part of
        if self.multi_label_:  # a label is in a text when it is in any part of it: the most confident window
            out = np.zeros((len(texts), len(self.classes_)), dtype=np.float32)
            np.maximum.at(out, data.owners, sigmoid(logits))
            return out
        weights = np.array([len(ids) for ids in data.input_ids], dtype=np.float32)
        out = np.zeros((len(texts), len(self.classes_)), dtype=np.float32)
        np.add.at(out, data.owners, softmax(logits) * weights[:, None])
        return out / out.sum(axis=1, keepdims=True)

    def classify(self, texts: Sequence[str], *, long_texts: str | None = None) -> list[dict[str, Any]]:
        """Per text, SageMaker's verbose answer: probabilities over all classes, the labels, the predicted label.

        >>> textfit.load("model/").classify(["a lovely film"])  # doctest: +SKIP
        [{'probabilities': [0.02, 0.98], 'labels': ['negative', 'positive'], 'predicted_label': 'positive'}]
        """
        return [verbose_record(row, self.classes_, self.thresholds_)
                for row in self.predict_proba(texts, long_texts=long_texts)]

    def log_scores(self, texts: Sequence[str], batch_size: int = 64, *, long_texts: str | None = None
                   ) -> np.ndarray:
        """Each label's log-probability (a multi-label model's log-odds), float64, one row per text: what
        explanations attribute, from the logits where texts are truncated (probabilities saturate at 1.0 in
        float32, and a word's part in a confident answer would read as nothing). `probabilities` turns them into
        predict_proba's rows."""
        if self.resolve_long_texts(long_texts) == "window":  # windows are combined as probabilities
            p = self.predict_proba(texts, batch_size, long_texts="window").astype(np.float64)
            p = np.clip(p, 1e-30, 1.0)
            return np.log(p) - np.log1p(-np.clip(p, 0.0, 1 - 1e-16)) if self.multi_label_ else np.log(p)
        return self._log_scores_of(self.predict_logits(texts, batch_size, long_texts=long_texts))

    def _log_scores_of(self, logits: np.ndarray) -> np.ndarray:
        """Logits as log scores: log-softmax, or for a multi-label model the logits (log-odds) themselves."""
        logits = logits.astype(np.float64)
        return logits if self.multi_label_ else logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

    def probabilities(self, log_scores: np.ndarray) -> np.ndarray:
        """predict_proba's rows (float32) from `log_scores`' rows."""
        return (1.0 / (1.0 + np.exp(-log_scores)) if self.multi_label_ else np.exp(log_scores)).astype(np.float32)

    def resolve_long_texts(self, long_texts: str | None) -> str:
        """truncate, head_tail or window: `long_texts`, or the model's when None."""
        long_texts = self.long_texts_ if long_texts is None else long_texts
        if long_texts not in READS:
            raise DataError(f"long_texts={long_texts!r} is not valid; use {', '.join(READS[:-1])} or {READS[-1]}")
        return long_texts

    def explain(self, texts: Sequence[str], *, method: str | None = None, all_labels: bool = False,
                max_words: int = explanations.MAX_WORDS, long_texts: str | None = None,
                steps: int = explanations.IG_STEPS) -> list[dict[str, Any]]:
        """Per text, the verbose record (as `classify`) and `explanation`: its words with their attributions
        to the predicted label, `[{"word", "start", "end", "score"}, ...]` in the text's order (`text[start:end]
        == word`; positive pushes toward the label). A multi-label model's `explanation` maps each predicted
        label to such a list. `all_labels`: also `explanations`, every label's list. Only the words the model
        reads are listed (its first max_seq_length tokens, or its windows).

        Args:
            method: None, the default: "gradient" where the model's PyTorch weights are loaded, "occlusion" on
                ONNX Runtime (which has no gradients). "gradient": the gradient of the label's log-probability
                (log-odds) at the midpoint between a baseline and the text, times their difference, on the token
                embeddings (Integrated Gradients' one-point estimate, Captum's): measured the most faithful of the
                four compared over two sets, at under 10x a prediction's cost (docs/benchmarks.md). "integrated_gradients":
                the path integral itself, `steps` points. "occlusion": how much the label's log-probability
                drops when the word is left out, forward passes only (any back end), at most `max_words` + 1
                texts of inference a text. See explain.py.
            max_words: occlusion leaves out at most this many words or contiguous groups of words a text.
            steps: integrated_gradients' points along the path.

        >>> textfit.load("model/").explain(["a lovely film"])[0]["explanation"]  # doctest: +SKIP
        [{'word': 'a', 'start': 0, 'end': 1, 'score': 0.01}, {'word': 'lovely', ...}, ...]
        """
        texts = batching.check_texts(texts)
        if method is None:
            method = "occlusion" if self.model_ is None else "gradient"
        explanations.check_method(method)
        long_texts = self.resolve_long_texts(long_texts)
        texts, read, extents = self.explanation_inputs(texts, long_texts)
        results: list[tuple[list[explanations.Word], np.ndarray, np.ndarray]]
        if method == "occlusion":
            results = explanations.occlusion(lambda v: self.log_scores(v, long_texts=long_texts), texts, extents,
                                             max_words=max_words)
        else:
            explanations.check_max_words(max_words)
            results = self._integrated_gradients(texts, read, extents, long_texts, all_labels,
                                                 1 if method == "gradient" else steps)
        return [self.explanation_record(*result, all_labels=all_labels) for result in results]

    def explanation_inputs(self, texts: list[str], long_texts: str
                           ) -> tuple[list[str], Any, list[explanations.Reach]]:
        """The texts cut to what the model can read, their tokens (batching.spans) and the parts of each the
        model reads (None where the tokenizer cannot say)."""
        windows, head_tail = long_texts == "window", long_texts == "head_tail"
        limit = self.hyperparameters_.max_seq_length
        if not head_tail:  # the model reads no further; a head and tail model reads to the end
            texts = [t[:batching.reads(limit, windows)] for t in texts]
        read = batching.spans(self.tokenizer_, texts, limit, limit // 4 if windows else None, head_tail=head_tail)
        reach: list[explanations.Reach] = [None] * len(texts) if read is None else [
            _reach(text, parts) for text, parts in zip(texts, read)]
        return texts, read, reach

    def explanation_record(self, words: list[explanations.Word], scores: np.ndarray, full: np.ndarray, *,
                           all_labels: bool = False) -> dict[str, Any]:
        """The verbose record of a text's own row of log scores, with its `explanation` (and `explanations`)."""
        record = verbose_record(self.probabilities(full[None, :])[0], self.classes_, self.thresholds_)
        if self.multi_label_:
            record["explanation"] = {label: explanations.as_records(words, scores, self.classes_.index(label))
                                     for label in record["predicted_labels"]}
        else:
            record["explanation"] = explanations.as_records(words, scores, self.classes_.index(
                record["predicted_label"]))
        if all_labels:
            record["explanations"] = {label: explanations.as_records(words, scores, i)
                                      for i, label in enumerate(self.classes_)}
        return record

    def _integrated_gradients(self, texts: list[str], read: list[Any] | None, extents: list[explanations.Reach],
                              long_texts: str, all_labels: bool, steps: int
                              ) -> list[tuple[list[explanations.Word], np.ndarray, np.ndarray]]:
        """Each text's words, Integrated Gradients scores (words x labels; the labels not explained 0) and its
        own row of log scores."""
        if self.model_ is None:
            raise DataError("explaining by integrated gradients needs the model's PyTorch weights: load it with "
                            "backend='torch' (--backend torch), or use the occlusion method")
        if read is None:
            raise DataError("explaining by integrated gradients needs a tokenizer that gives token offsets (a fast "
                            "tokenizer, with tokenizer.json); use the occlusion method")
        import torch

        model = self.model_
        model.eval()
        multi = self.multi_label_
        token_types = "token_type_ids" in self.input_names_
        pad_id = explanations.baseline_token(model, self.tokenizer_)

        def log_score(logits: torch.Tensor) -> torch.Tensor:
            return logits if multi else torch.log_softmax(logits, dim=-1)

        fulls = self.log_scores(texts, long_texts=long_texts)  # one batched pass
        out = []
        for text, parts, extent, full in zip(texts, read, extents, fulls):
            found = explanations.words(text, extent)
            own = self.probabilities(full[None, :])[0]
            if all_labels:
                columns = list(range(len(self.classes_)))
            elif multi:
                columns = [i for i, p in enumerate(own) if p > (self.thresholds_ or [0.5] * len(own))[i]]
            else:
                columns = [int(np.argmax(own))]
            # each window's share of the text's score: its own log scores, combined as predict_proba combines them
            weights = self._window_weights(parts, columns)
            scores = np.zeros((len(found), len(self.classes_)))
            if columns and found:
                scores[:, columns] = explanations.integrated_gradients(
                    model, [explanations.Window(*p) for p in parts], found, weights, columns, log_score,
                    pad_id=pad_id, token_types=token_types, steps=steps)
            out.append((found, scores, full))
        return out

    def _window_log_scores(self, parts: list[Any]) -> np.ndarray:
        """Each window's log scores, read on its own (as predict_proba reads windows)."""
        data = batching.Encoded([list(ids) for ids, _, _ in parts], None,
                                self.tokenizer_.pad_token_id if self.tokenizer_.pad_token_id is not None else 0,
                                "token_type_ids" in self.input_names_)
        return self._log_scores_of(self.runner_(batching.pad(data, range(len(data)))))

    def _window_weights(self, parts: list[Any], columns: list[int]) -> np.ndarray:
        """(windows x columns): the part of the text's score each window's carries. The text's probability is
        the length-weighted mean of its windows' (d log P = sum_k w_k p_k d log p_k / sum_k w_k p_k); a
        multi-label model's is its most confident window's."""
        if len(parts) == 1:
            return np.ones((1, len(columns)))
        picked = self._window_log_scores(parts)[:, columns]
        if self.multi_label_:
            weights = np.zeros_like(picked)
            weights[np.argmax(picked, axis=0), np.arange(len(columns))] = 1.0
            return weights
        lengths = np.array([len(ids) for ids, _, _ in parts], dtype=np.float64)[:, None]
        mass = lengths * np.exp(picked)
        return mass / mass.sum(axis=0, keepdims=True)

    def class_index(self, label: object) -> int | None:
        """The column of a label given as in the training data (its value) or as a class name; None if unknown."""
        text = str(label).strip()
        for i, value in enumerate(self.label_values_):
            if text == str(value):
                return i
        return self.classes_.index(text) if text in self.classes_ else None

    def predict(self, texts: Sequence[str], *, long_texts: str | None = None) -> list[Any]:
        """The most probable class of each text (its name where the data gave names); for a multi-label model,
        the list of labels each text has (each label's probability above its threshold). `long_texts`: as in
        predict_proba."""
        proba = self.predict_proba(texts, long_texts=long_texts)
        if self.multi_label_:
            chosen = proba > np.asarray(self.thresholds_)[None, :]
            return [[c for c, on in zip(self.classes_, row) if on] for row in chosen]
        return [self.classes_[i] for i in proba.argmax(axis=1)]


@dataclass
class Loaded:
    """What `load` reads from a model folder, for `_set_fitted`."""

    model: Model | None
    tokenizer: Any
    manifest: dict[str, Any]
    classes: list[str]
    values: list[object]
    runner: export.Runner
    backend: str
    input_names: list[str]
    report: dict[str, Any] | None


def read_model(path: str | Path, backend: str = "torch", quantized: bool = False,
               threads: int | None = None) -> Loaded:
    """A model folder (or model.tar.gz) as saved, checked against its manifest's digests, for `backend`.

    On the ONNX back end with a saved graph, only what a prediction there reads is read and checked (the graph,
    the tokenizer, the labels and the manifest: the PyTorch weights stay on disk), and the graph's digest is
    computed while ONNX Runtime builds its session from the same bytes, which are used only if it matches.

    Raises:
        ArtifactError: a file is missing, damaged or changed since it was saved; one message names each.
    """
    with artifact.opened(path) as folder:
        graph = export.onnx_path(folder, quantized)
        graph_alone = backend == "onnx" and graph.is_file()
        # on the graph alone, what it reads is checked first; the weights, which a damaged artifact is known by
        # too, are checked on another thread while ONNX Runtime builds its session
        manifest = artifact.check_intact(folder, only=artifact.graph_files(folder) if graph_alone else None)
        labels = artifact.read_labels(folder / artifact.LABELS)
        saved_hyperparameters(folder, manifest)
        runner: export.Runner
        if graph_alone:  # neither torch nor its weights in memory
            if (folder / "tokenizer_config.json").is_file():  # config.json is for the weights: unread here
                check_tokenizer_config(folder / "tokenizer_config.json")
            model = None
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="textfit-verify") as pool:
                weights = pool.submit(artifact.verify, folder, manifest, (artifact.CONFIG, artifact.WEIGHTS))
                runner = export.OnnxRunner(graph, threads, digest=artifact.recorded_digest(manifest, folder, graph))
                tokenizer = export.load_tokenizer(folder)
                weights.result()
            if runner.outputs not in (None, len(labels["labels"])):
                raise ArtifactError(f"{graph}: the graph has {runner.outputs} outputs but labels_info.json names "
                                    f"{len(labels['labels'])} classes; the artifact is damaged")
            names = runner.input_names
        else:
            from textfit.model import architectures, pretrained

            check_model_files(folder)
            config = pretrained.load_config(str(folder))
            if config.num_labels != len(labels["labels"]):
                raise ArtifactError(f"{folder}: config.json has {config.num_labels} outputs but labels_info.json "
                                    f"names {len(labels['labels'])} classes; the artifact is damaged")
            tokenizer = pretrained.load_tokenizer(str(folder))
            model = load_torch_model(str(folder), False).eval()
            names = architectures.input_names(model, tokenizer)
            runner = export.runner(model, folder, backend, names, quantized, threads)
        report_file = folder / artifact.REPORT
        report = artifact.read_json(report_file) if report_file.is_file() else None
    return Loaded(model, tokenizer, manifest, labels["labels"], labels["label_values"], runner, backend, names, report)


class Predictor(Predicting):
    """A saved model loaded for prediction alone: what `textfit serve` and the SageMaker endpoint load.

    >>> Predictor.load("model/", backend="onnx").predict(["a lovely film"])  # doctest: +SKIP
    ['positive']
    """

    @classmethod
    def load(cls, path: str | Path, *, backend: str = "onnx", quantized: bool = False,
             threads: int | None = None) -> Predictor:
        """As TextClassifier.load, for prediction only; on the ONNX back end by default."""
        loaded = read_model(path, backend, quantized, threads)
        predictor = cls()
        predictor._set_fitted(loaded.model, loaded.tokenizer, loaded.manifest, loaded.classes, loaded.values,
                              loaded.runner, loaded.backend, loaded.input_names)
        predictor.validation_report_ = loaded.report
        return predictor


def _reach(text: str, parts: list[tuple[list[int], list[tuple[int, int]], list[bool]]]) -> explanations.Reach:
    """The character ranges of `text` its tokens (batching.spans' windows) cover: tokens with only whitespace
    between them are one range; text that no token covers (the middle a head and tail skips) separates two."""
    spans = sorted((a, b) for _, offsets, special in parts for (a, b), s in zip(offsets, special) if not s and b > a)
    ranges: list[tuple[int, int]] = []
    for a, b in spans:
        if ranges and (a <= ranges[-1][1] or not text[ranges[-1][1]:a].strip()):
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], b))
        else:
            ranges.append((a, b))
    return tuple(ranges)
