"""How good a classifier is: the one implementation of every reported quality number.

Accuracy, per-class and averaged precision/recall/F1, log loss, the confusion matrix, expected calibration error,
and ROC / precision-recall curves for binary tasks, from true class indices and predicted probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ECE_BINS = 15


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts[i, j]: rows of true class i predicted as class j."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-15)."""
    picked = np.clip(proba[np.arange(len(y_true)), y_true], 1e-15, 1.0)
    return float(-np.log(picked).mean())


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
    """(false positive rate, true positive rate, area) of the positive class (index 1)."""
    order = np.argsort(-score, kind="stable")
    positive = (y_true[order] == 1).astype(np.float64)
    tps = np.concatenate([[0.0], np.cumsum(positive)])
    fps = np.concatenate([[0.0], np.cumsum(1 - positive)])
    tpr = tps / max(tps[-1], 1.0)
    fpr = fps / max(fps[-1], 1.0)
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def precision_recall_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(recall, precision, average precision) of the positive class (index 1)."""
    order = np.argsort(-score, kind="stable")
    positive = (y_true[order] == 1).astype(np.float64)
    tps = np.cumsum(positive)
    precision = tps / np.arange(1, len(tps) + 1)
    recall = tps / max(tps[-1], 1.0)
    average = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return recall, precision, average


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
    confusion_matrix: list[list[int]]
    labels: list[str]
    rows: int
    roc_auc: float | None = None
    average_precision: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(y_true: np.ndarray | list[int], proba: np.ndarray, labels: list[str]) -> Report:
    """Every quality number of predictions `proba` (rows x classes) against true class indices."""
    y = np.asarray(y_true, dtype=np.int64)
    pred = proba.argmax(axis=1)
    matrix = confusion(y, pred, len(labels))
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _safe_div(tp, matrix.sum(axis=0).astype(np.float64))
    recall = _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    weights = support / max(support.sum(), 1)
    out = Report(
        accuracy=float(tp.sum() / max(len(y), 1)),
        macro_precision=float(precision.mean()), macro_recall=float(recall.mean()), macro_f1=float(f1.mean()),
        weighted_precision=float(precision @ weights), weighted_recall=float(recall @ weights),
        weighted_f1=float(f1 @ weights),
        log_loss=log_loss(y, proba), expected_calibration_error=expected_calibration_error(y, proba),
        per_class=[ClassReport(label, float(p), float(r), float(f), int(s))
                   for label, p, r, f, s in zip(labels, precision, recall, f1, support)],
        confusion_matrix=matrix.tolist(), labels=list(labels), rows=int(len(y)),
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
