"""`textfit evaluate`: score a trained model on labelled data, as tables, metrics.json and pictures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from textfit.classifier import TextClassifier
from textfit.core import ownership
from textfit.data.channels import Channel, read_channel
from textfit.errors import DataError
from textfit.model import artifact
from textfit.reports import metrics, page, plots

log = logging.getLogger("textfit")


def true_classes(channel: Channel, clf: TextClassifier) -> list[int]:
    """Class indices of a channel's labels: label values as in the training data, or class names."""
    indices = [clf.class_index(label) for label in channel.labels]
    unknown = [(line, label) for line, label, i in zip(channel.lines, channel.labels, indices) if i is None]
    if unknown:
        line, label = unknown[0]
        raise DataError(f"{channel.path}, line {line}: label {label!r} is not a class of this model "
                        f"({', '.join(map(str, clf.label_values_))}); {len(unknown)} row(s) have unknown labels")
    return [i for i in indices if i is not None]  # every one, by now


def _true_label_matrix(channel: Channel, clf: TextClassifier) -> np.ndarray:
    """The 0/1 label matrix of a multi-label channel, by label value or name; an unknown label is an error."""
    rows: list[list[int]] = []
    for line, labels in zip(channel.lines, channel.labels):
        indices = [clf.class_index(label) for label in labels]
        if None in indices:
            label = labels[indices.index(None)]
            raise DataError(f"{channel.path}, line {line}: label {label!r} is not a label of this model "
                            f"({', '.join(clf.classes_)})")
        rows.append([i for i in indices if i is not None])  # every one, by now
    return metrics.label_matrix(rows, len(clf.classes_))


def evaluate_multi_label(clf: TextClassifier, data: str | Path, output: str | Path | None = None, *,
                         long_texts: str | None = None, counts: dict[str, int] | None = None, explain: int = 0,
                         explain_method: str | None = None) -> metrics.MultiLabelReport:
    """Every quality number of a multi-label model on a labelled channel, at the model's thresholds; with
    `explain` (and `output`), the page of explained errors and correct predictions (see `evaluate`)."""
    _check_output(output)
    _check_explain(explain, output)
    channel = read_channel(data, multi_label=True, delimiter=clf.label_delimiter_)
    truth = _true_label_matrix(channel, clf)
    proba = clf.predict_proba(channel.texts, long_texts=long_texts, counts=counts)
    thresholds = np.asarray(clf.thresholds_ or [0.5] * len(clf.classes_))
    result = metrics.multi_label_report(truth, proba, clf.classes_, list(thresholds))
    if output is not None:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {}
        if explain:
            predicted = proba > thresholds[None, :]
            wrong = (predicted != truth.astype(bool)).any(axis=1)
            confidence = np.abs(proba - thresholds[None, :]).max(axis=1)
            extra = _explanation_page(clf, channel, folder, wrong, confidence, explain, explain_method, long_texts,
                                      lambda i: [clf.classes_[j] for j in np.flatnonzero(truth[i])],
                                      lambda i: [clf.classes_[j] for j in np.flatnonzero(predicted[i])], proba)
        artifact.write_json(folder / "metrics.json", {**result.as_dict(), "data": str(channel.path),
                                                      "data_sha256": channel.fingerprint, **extra})
        log.info("Wrote %s", plots.per_label_outcomes(result, folder / "per_label.png"))
        ownership.mark(folder, ownership.EVALUATION)
    return result


def evaluate(clf: TextClassifier, data: str | Path, output: str | Path | None = None, *,
             long_texts: str | None = None, counts: dict[str, int] | None = None, explain: int = 0,
             explain_method: str | None = None) -> metrics.Report:
    """Every quality number of `clf` on a labelled channel; with `output`, metrics.json and PNG plots there.

    With `explain` N, also explanations.html there (named in metrics.json): the N most confident errors and N
    correct predictions (across the range of confidence), each text's words shaded by their attribution to the
    predicted label and, for an error, to the given one (Predicting.explain, by `explain_method`).

    Raises:
        DataError: the data breaks a rule of the channel format, or holds a label the model does not know.
    """
    _check_output(output)
    _check_explain(explain, output)
    channel = read_channel(data)
    y = np.asarray(true_classes(channel, clf))
    proba = clf.predict_proba(channel.texts, long_texts=long_texts, counts=counts)
    result = metrics.report(y, proba, clf.classes_)
    if output is not None:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {}
        if explain:
            extra = _explanation_page(clf, channel, folder, proba.argmax(axis=1) != y, proba.max(axis=1), explain,
                                      explain_method, long_texts, lambda i: [clf.classes_[y[i]]],
                                      lambda i: [clf.classes_[int(proba[i].argmax())]], proba)
        artifact.write_json(folder / "metrics.json", {**result.as_dict(), "data": str(channel.path),
                                                      "data_sha256": channel.fingerprint, **extra})
        for path in plots.report_figures(result, y, proba, folder):
            log.info("Wrote %s", path)
        ownership.mark(folder, ownership.EVALUATION)
    return result


# Texts to compare engines on when no labelled data is given: varied length and topic, no signal intended.
PROBE_TEXTS = [
    "The results were announced this morning.", "I would not recommend it to anyone.",
    "An absolute delight from start to finish, with a superb cast.", "Prices rose sharply in the third quarter.",
    "The team won the final after extra time.", "It stopped working after a week and support never answered.",
    "A new study links sleep to memory.", "Fine.", "The software update adds several features and fixes bugs.",
    "The minister resigned after the vote.",
]


def quantization_report(folder: Path, data: str | Path | None) -> dict[str, Any]:
    """How far the ONNX engines of a model folder are from PyTorch: the largest probability change, agreement
    and, with labelled data, each engine's accuracy."""
    from textfit.model import export

    engines = [("torch", "torch", False)] + [(name, "onnx", q) for name, q in (("onnx_fp32", False),
                                                                                 ("onnx_int8", True))
                                               if export.onnx_path(folder, q).is_file()]
    reference = TextClassifier.load(folder)
    channel = read_channel(data) if data is not None else None
    texts = channel.texts if channel is not None else PROBE_TEXTS
    truth = np.asarray(true_classes(channel, reference)) if channel is not None else None
    out: dict[str, Any] = {"texts": len(texts)}
    torch_probs = reference.predict_proba(texts)
    for name, backend, quantized in engines:
        probs = torch_probs if backend == "torch" else TextClassifier.load(
            folder, backend=backend, quantized=quantized).predict_proba(texts)
        out[name] = {"max_abs_probability_diff": float(np.abs(torch_probs - probs).max()),
                     "agreement": float((torch_probs.argmax(1) == probs.argmax(1)).mean())}
        if truth is not None:
            out[name]["accuracy"] = metrics.report(truth, probs, reference.classes_).accuracy
    if truth is None:
        log.info("Pass --data with labelled rows to measure the accuracy cost; probe texts compare engines only")
    return out


PAGE = "explanations.html"


def _check_explain(explain: int, output: str | Path | None) -> None:
    if explain < 0:
        raise DataError(f"--explain {explain}: give the number of errors (and of correct predictions) to explain")
    if explain and output is None:
        raise DataError("--explain writes explanations.html into --output: give --output FOLDER")


def _explanation_page(clf: TextClassifier, channel: Channel, folder: Path, wrong: np.ndarray,
                      confidence: np.ndarray, n: int, method: str | None, long_texts: str | None,
                      given: Callable[[int], list[str]], predicted: Callable[[int], list[str]], proba: np.ndarray
                      ) -> dict[str, Any]:
    """Write the page of the `n` most confident errors and `n` correct predictions; metrics.json's entry for it."""
    errors = [int(i) for i in np.argsort(-confidence, kind="stable") if wrong[i]][:n]
    right = [int(i) for i in np.argsort(confidence, kind="stable") if not wrong[i]]
    if len(right) > n:  # across the range of confidence, the least and the most confident included
        right = [right[int(round(k))] for k in np.linspace(0, len(right) - 1, n)]
    chosen = errors + right
    records = clf.explain([channel.texts[i] for i in chosen], method=method, all_labels=True,
                          long_texts=long_texts) if chosen else []
    items = []
    for i, rec in zip(chosen, records):
        labels = predicted(i) + [label for label in given(i) if label not in predicted(i)]
        rows = [page.Row(f"toward {label!r} ({'predicted' if label in predicted(i) else 'given'}"
                         f"{', given' if label in predicted(i) and label in given(i) else ''})",
                         rec["explanations"][label]) for label in labels]
        items.append(page.Item(channel.texts[i], " | ".join(given(i)) or "(none)",
                               " | ".join(predicted(i)) or "(none)", not wrong[i],
                               dict(zip(clf.classes_, map(float, proba[i]))), rows))
    note = f"{channel.path}: {len(errors)} most confident errors, {len(right)} correct predictions."
    html = page.render(f"Why these labels: {channel.path.name}", [
        ("Most confident errors", items[:len(errors)]), ("Correct predictions", items[len(errors):])], note)
    path = folder / PAGE
    path.write_text(html, encoding="utf-8")
    log.info("Wrote %s", path)
    return {"explanations_page": PAGE}


def _check_output(output: str | Path | None) -> None:
    """The --output folder is new, empty or an earlier evaluation's: metrics.json and the plots never replace a
    user's files of the same names."""
    if output is not None:
        ownership.check_writable(Path(output), ownership.EVALUATION, "--output")
