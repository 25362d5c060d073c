"""How good a classifier is: the one implementation of every reported quality number.

Accuracy, per-class and averaged precision/recall/F1, log loss, the confusion matrix, expected calibration error,
and ROC / precision-recall curves for binary tasks, from true class indices and predicted probabilities. scikit-learn
computes those it owns; where one of those is computed here instead, a comment says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ECE_BINS = 15


# Kept by hand, not sklearn.metrics.log_loss: scikit-learn clips at the machine epsilon of the probabilities'
# dtype, 1.2e-7 for the float32 ones predict_proba returns, so a confident mistake costs at most 15.9 there against
# 34.5 here (two rows, one at p=0 of the true class: 7.97 against 17.27, and 18.02 cast to float64); cast to
# float64, 80% of float32 softmax rows (2,000 rows of 10 classes) miss its sum-to-one tolerance of 1.5e-8 and it
# warns. Either way the log loss in validation_report.json would change. On probabilities inside that clip they
# agree (tests/reports/test_metrics_sources.py).
def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-15)."""
    picked = np.clip(proba[np.arange(len(y_true)), y_true], 1e-15, 1.0)
    return float(-np.log(picked).mean())


# scikit-learn has no expected calibration error: calibration_curve bins one class's probabilities, not the
# confidence of the predicted class over all classes.
def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins weighted by their size."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rate, true positive rate, area) of the positive class (index 1), by scikit-learn: tied
    scores make one step of the curve, whatever the order of the rows."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as curve

    fpr, tpr, _ = curve(y_true == 1, score)
    return fpr, tpr, float(roc_auc_score(y_true == 1, score))


def precision_recall_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision, average precision) of the positive class (index 1), by scikit-learn."""
    from sklearn.metrics import average_precision_score
    from sklearn.metrics import precision_recall_curve as curve

    precision, recall, _ = curve(y_true == 1, score)
    return recall, precision, float(average_precision_score(y_true == 1, score))


MAX_MATRIX_CLASSES = 50
"""Past this many classes the report lists the most frequent confusions instead of the full matrix, whose
size grows with the square of the classes (10,000 classes: 100 million cells)."""
TOP_CONFUSIONS = 20


@dataclass
class ClassReport:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Report:
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    log_loss: float
    expected_calibration_error: float
    per_class: list[ClassReport]
    confusion_matrix: list[list[int]] | None
    """Counts[true][predicted]; None past MAX_MATRIX_CLASSES classes (see top_confusions)."""
    labels: list[str]
    rows: int
    roc_auc: float | None = None
    average_precision: float | None = None
    top_confusions: list[dict[str, Any]] | None = None
    """The most frequent mistakes, {"true", "predicted", "count"}, most frequent first."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top_confusions(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    wrong = y != pred
    pairs, counts = np.unique(np.stack([y[wrong], pred[wrong]]), axis=1, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:TOP_CONFUSIONS]
    return [{"true": labels[pairs[0, i]], "predicted": labels[pairs[1, i]], "count": int(counts[i])} for i in order]


def report(y_true: np.ndarray | list[int], proba: np.ndarray, labels: list[str]) -> Report:
    """Every quality number of predictions `proba` (rows x classes) against true class indices, by scikit-learn.

    zero_division=0: a class never predicted (or without rows) scores 0, as textfit has always reported it.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y = np.asarray(y_true, dtype=np.int64)
    pred = proba.argmax(axis=1)
    classes = np.arange(len(labels))  # every class, those without rows or predictions too

    def averaged(average: str | None) -> Any:
        return precision_recall_fscore_support(y, pred, labels=classes, average=average, zero_division=0)

    precision, recall, f1, support = averaged(None)
    macro, weighted = averaged("macro"), averaged("weighted")
    small = len(labels) <= MAX_MATRIX_CLASSES
    out = Report(
        accuracy=float(accuracy_score(y, pred)),
        macro_precision=float(macro[0]), macro_recall=float(macro[1]), macro_f1=float(macro[2]),
        weighted_precision=float(weighted[0]), weighted_recall=float(weighted[1]), weighted_f1=float(weighted[2]),
        log_loss=log_loss(y, proba), expected_calibration_error=expected_calibration_error(y, proba),
        per_class=[ClassReport(label, float(p), float(r), float(f), int(s))
                   for label, p, r, f, s in zip(labels, precision, recall, f1, support)],
        confusion_matrix=confusion_matrix(y, pred, labels=classes).tolist() if small else None,
        labels=list(labels), rows=int(len(y)), top_confusions=None if small else _top_confusions(y, pred, labels),
    )
    if len(labels) == 2 and 0 < y.sum() < len(y):
        out.roc_auc = roc_curve(y, proba[:, 1])[2]
        out.average_precision = precision_recall_curve(y, proba[:, 1])[2]
    return out


def format_report(r: Report) -> str:
    """The report as the tables `textfit evaluate` prints."""
    width = max(12, *(len(c.label) for c in r.per_class))
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    lines += [f"{c.label:<{width}} {c.precision:>9.4f} {c.recall:>7.4f} {c.f1:>7.4f} {c.support:>8}" for c in r.per_class]
    lines.append(f"{'macro avg':<{width}} {r.macro_precision:>9.4f} {r.macro_recall:>7.4f} {r.macro_f1:>7.4f} {r.rows:>8}")
    lines.append(f"{'weighted avg':<{width}} {r.weighted_precision:>9.4f} {r.weighted_recall:>7.4f} "
                 f"{r.weighted_f1:>7.4f} {r.rows:>8}")
    lines.append("")
    lines.append(f"accuracy {r.accuracy:.4f}   log loss {r.log_loss:.4f}   "
                 f"expected calibration error {r.expected_calibration_error:.4f}")
    if r.roc_auc is not None:
        lines.append(f"ROC AUC {r.roc_auc:.4f}   average precision {r.average_precision:.4f}")
    lines.append("")
    if r.confusion_matrix is None:
        lines.append(f"most frequent confusions (of {len(r.labels)} classes)")
        lines += [f"{c['true']:<{width}} -> {c['predicted']:<{width}} {c['count']:>8}" for c in r.top_confusions or []]
        return "\n".join(lines)
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * width + " " + " ".join(f"{label[:8]:>8}" for label in r.labels))
    for label, row in zip(r.labels, r.confusion_matrix):
        lines.append(f"{label:<{width}} " + " ".join(f"{n:>8}" for n in row))
    return "\n".join(lines)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature T that minimises the negative log-likelihood of softmax(logits / T) (Guo et al., 2017)."""
    import torch

    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(y_true, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


# ---------------------------------------------------------------------------------------------- multi-label


def label_matrix(rows: list[list[int]], n_labels: int) -> np.ndarray:
    """Rows of label indices as a 0/1 matrix (rows x labels)."""
    out = np.zeros((len(rows), n_labels), dtype=np.int8)
    for i, row in enumerate(rows):
        out[i, row] = 1
    return out


# Kept by hand, not from sklearn.metrics.precision_recall_curve: its thresholds split the rows the same way, but
# F1 from its precision and recall (2PR / (P + R)) rounds equal fractions differently, and thresholds that tie on
# F1 (common on small validation sets) then break by rounding: on 1,989 random one-label sets of 6-39 rows with
# scores in tenths, 304 saved thresholds would change for that alone. 2tp / (predicted + positives) here is one
# correctly rounded division, so equal fractions stay equal and the lowest threshold wins.
def best_thresholds(y: np.ndarray, proba: np.ndarray) -> list[float]:
    """Per label, the decision threshold that maximises that label's F1 on these rows: a candidate between
    each pair of neighbouring scores (the midpoint), 0.5 for a label without positive rows."""
    thresholds = []
    for k in range(y.shape[1]):
        truth, score = y[:, k].astype(bool), proba[:, k]
        if not truth.any():
            thresholds.append(0.5)
            continue
        unique = np.unique(score)
        candidates = np.concatenate([[unique[0] / 2], (unique[:-1] + unique[1:]) / 2, [(unique[-1] + 1) / 2]])
        predicted = score[None, :] > candidates[:, None]
        tp = (predicted & truth).sum(1)
        f1 = 2 * tp / np.maximum(predicted.sum(1) + truth.sum(), 1)
        thresholds.append(float(candidates[int(np.argmax(f1))]))  # the lowest of equally good thresholds
    return thresholds


@dataclass
class LabelReport:
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int


@dataclass
class MultiLabelReport:
    subset_accuracy: float
    """Rows whose every label is right (what val_accuracy means for multi-label data)."""
    hamming_loss: float
    micro_precision: float
    micro_recall: float
    micro_f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    samples_f1: float
    per_label: list[LabelReport]
    labels: list[str]
    rows: int
    multi_label: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _multi_label_target(matrix: np.ndarray) -> np.ndarray:
    """scikit-learn reads a one-column matrix as a binary target, not a multi-label one: a second column that is
    never set keeps it multi-label, and `labels=` leaves that column out of every number."""
    return matrix if matrix.shape[1] > 1 else np.hstack([matrix, np.zeros_like(matrix)])


def multi_label_report(y: np.ndarray, proba: np.ndarray, labels: list[str], thresholds: list[float]
                       ) -> MultiLabelReport:
    """Every quality number of multi-label predictions, by scikit-learn: `proba` (rows x labels) against the 0/1
    matrix `y`, each label decided at its threshold.

    zero_division=0: a label never predicted (or without positives) scores 0; samples F1 alone takes 1, since a row
    with nothing to find and nothing found is right. Both as textfit has always reported them.
    """
    from sklearn.metrics import accuracy_score, hamming_loss, multilabel_confusion_matrix
    from sklearn.metrics import precision_recall_fscore_support as scores

    truth, predicted = y.astype(bool), proba > np.asarray(thresholds)[None, :]
    columns = np.arange(len(labels))
    y_true, y_pred = _multi_label_target(truth), _multi_label_target(predicted)

    def averaged(average: str | None, zero_division: float = 0.0) -> Any:
        return scores(y_true, y_pred, labels=columns, average=average, zero_division=zero_division)

    precision, recall, f1, support = averaged(None)
    micro, macro, weighted = averaged("micro"), averaged("macro"), averaged("weighted")
    counts = multilabel_confusion_matrix(y_true, y_pred, labels=columns)  # per label [[tn, fp], [fn, tp]]
    return MultiLabelReport(
        subset_accuracy=float(accuracy_score(truth, predicted)), hamming_loss=float(hamming_loss(truth, predicted)),
        micro_precision=float(micro[0]), micro_recall=float(micro[1]), micro_f1=float(micro[2]),
        macro_precision=float(macro[0]), macro_recall=float(macro[1]), macro_f1=float(macro[2]),
        weighted_precision=float(weighted[0]), weighted_recall=float(weighted[1]), weighted_f1=float(weighted[2]),
        samples_f1=float(averaged("samples", zero_division=1.0)[2]),
        per_label=[LabelReport(label, float(p), float(r), float(f), int(s), float(t), int(c[1, 1]), int(c[0, 1]),
                               int(c[1, 0]), int(c[0, 0]))
                   for label, p, r, f, s, t, c in zip(labels, precision, recall, f1, support, thresholds, counts)],
        labels=list(labels), rows=int(len(y)),
    )


def format_multi_label_report(r: MultiLabelReport) -> str:
    """The multi-label report as the tables `textfit evaluate` prints."""
    width = max(12, *(len(c.label) for c in r.per_label))
    lines = [f"{'label':<{width}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8} {'threshold':>9}"]
    lines += [f"{c.label:<{width}} {c.precision:>9.4f} {c.recall:>7.4f} {c.f1:>7.4f} {c.support:>8} {c.threshold:>9.3f}"
              for c in r.per_label]
    for name in ("micro", "macro", "weighted"):
        lines.append(f"{name + ' avg':<{width}} {getattr(r, name + '_precision'):>9.4f} "
                     f"{getattr(r, name + '_recall'):>7.4f} {getattr(r, name + '_f1'):>7.4f} {r.rows:>8}")
    lines.append(f"{'samples avg':<{width}} {'':>9} {'':>7} {r.samples_f1:>7.4f} {r.rows:>8}")
    lines.append("")
    lines.append(f"subset accuracy {r.subset_accuracy:.4f}   Hamming loss {r.hamming_loss:.4f}")
    return "\n".join(lines)
