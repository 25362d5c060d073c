"""Pictures of a model's quality: training curves, the confusion matrix, ROC and precision-recall curves (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from textfit.reports import metrics


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side."""
    plt = _pyplot()
    epochs = list(range(1, len(history) + 1))
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [h[key] for h in history], marker="o", label=f"train {title}")
        if history and history[0].get(f"val_{key}") is not None:
            ax.plot(epochs, [h[f"val_{key}"] for h in history], marker="o", label=f"validation {title}")
        ax.set(xlabel="epoch", ylabel=title, title=title)
        ax.set_xticks(epochs)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


MAX_PLOTTED_CLASSES = 50
"""Past this many classes a confusion matrix picture is unreadable (and its memory grows with the square)."""


def confusion_matrix(matrix: list[list[int]], labels: list[str], accuracy: float, path: Path) -> Path | None:
    """The confusion matrix normalised by true class (each row sums to 1), with the class names; None (no
    picture) past MAX_PLOTTED_CLASSES classes, where the report's numbers are what a reader can use."""
    n = len(labels)
    if n > MAX_PLOTTED_CLASSES:
        return None
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (accuracy {accuracy:.3f})")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                color = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, f"{normalised[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center",
                        color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def binary_curves(y_true: np.ndarray, proba: np.ndarray, labels: list[str], folder: Path) -> list[Path]:
    """ROC and precision-recall curves of the second class against the first."""
    plt = _pyplot()
    paths = []
    fpr, tpr, auc = metrics.roc_curve(y_true, proba[:, 1])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({labels[1]} vs {labels[0]})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(folder / "roc_curve.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    recall, precision, average = metrics.precision_recall_curve(y_true, proba[:, 1])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(recall, precision, label=f"average precision {average:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall ({labels[1]})", ylim=(0, 1.05))
    ax.legend(loc="lower left")
    fig.tight_layout()
    paths.append(folder / "precision_recall_curve.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def report_figures(report: metrics.Report, y_true: np.ndarray, proba: np.ndarray, folder: Path) -> list[Path]:
    """The confusion matrix, and for a binary task the ROC and precision-recall curves."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = None
    if report.confusion_matrix is not None:
        matrix = confusion_matrix(report.confusion_matrix, report.labels, report.accuracy,
                                  folder / "confusion_matrix.png")
    paths = [matrix] if matrix is not None else []
    if report.roc_auc is not None:
        paths += binary_curves(y_true, proba, report.labels, folder)
    return paths


def per_label_outcomes(report: metrics.MultiLabelReport, path: Path) -> Path:
    """A multi-label model's confusion per label: true positives, false negatives and false positives as
    stacked bars, one bar per label, with its F1 and threshold."""
    plt = _pyplot()
    rows = report.per_label[:MAX_PLOTTED_CLASSES]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) + 2), 4.5))
    x = np.arange(len(rows))
    tp = np.array([r.true_positives for r in rows])
    fn = np.array([r.false_negatives for r in rows])
    fp = np.array([r.false_positives for r in rows])
    ax.bar(x, tp, color="tab:green", label="true positives")
    ax.bar(x, fn, bottom=tp, color="tab:orange", label="false negatives (missed)")
    ax.bar(x, fp, bottom=tp + fn, color="tab:red", label="false positives")
    ax.set_xticks(x, [f"{r.label}\nF1 {r.f1:.2f} @ {r.threshold:.2f}" for r in rows], rotation=45, ha="right",
                  fontsize=8)
    ax.set(ylabel="rows", title=f"per-label outcomes (micro-F1 {report.micro_f1:.3f}, subset accuracy "
                                f"{report.subset_accuracy:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def label_quality(scores: np.ndarray, flagged: np.ndarray, pairs: list[tuple[str, str]], path: Path,
                  top: int = 20) -> Path:
    """Left: the label quality score of every training row, the rows flagged as likely label errors apart; right:
    given against suggested label among the flagged rows (the `top` most frequent labels)."""
    plt = _pyplot()
    fig, (hist_ax, pair_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(0.0, 1.0, 41)
    hist_ax.hist(scores[~flagged], bins=bins, color="#4c72b0", label=f"not flagged ({int((~flagged).sum())})")
    hist_ax.hist(scores[flagged], bins=bins, color="#dd5555", label=f"likely label errors ({int(flagged.sum())})")
    hist_ax.set(xlabel="label quality (cleanlab's score of the given label)", ylabel="training rows",
                title="label quality of every training row")
    hist_ax.legend()
    given = [g for g, _ in pairs]
    suggested = [s for _, s in pairs]
    names = [name for name, _ in sorted(((n, given.count(n) + suggested.count(n)) for n in set(given + suggested)),
                                        key=lambda kv: (-kv[1], kv[0]))[:top]]
    counts = np.zeros((len(names), len(names)), dtype=int)
    for g, s in pairs:
        if g in names and s in names:
            counts[names.index(g), names.index(s)] += 1
    pair_ax.imshow(counts if names else np.zeros((1, 1)), cmap="Reds")
    pair_ax.set(xlabel="suggested label", ylabel="given label", title="flagged rows: given against suggested")
    pair_ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    pair_ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if counts[i, j]:
                pair_ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
