from __future__ import annotations

import math

import numpy as np
import pytest

from textfit.reports import metrics

# Hand-computed case: 3 classes, predictions [0, 0, 1, 1, 2, 2] for truth [0, 0, 0, 1, 1, 2], each prediction
# with probability 0.8 and the other two classes 0.1.
Y = np.array([0, 0, 0, 1, 1, 2])
PRED = [0, 0, 1, 1, 2, 2]
PROBA = np.full((6, 3), 0.1)
PROBA[np.arange(6), PRED] = 0.8


def test_a_hand_computed_report() -> None:
    r = metrics.report(Y, PROBA, ["a", "b", "c"])
    assert r.confusion_matrix == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r.accuracy == pytest.approx(4 / 6)
    assert [c.precision for c in r.per_class] == pytest.approx([1.0, 0.5, 0.5])
    assert [c.recall for c in r.per_class] == pytest.approx([2 / 3, 0.5, 1.0])
    assert [c.f1 for c in r.per_class] == pytest.approx([0.8, 0.5, 2 / 3])
    assert [c.support for c in r.per_class] == [3, 2, 1]
    assert r.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r.weighted_f1 == pytest.approx((0.8 * 3 + 0.5 * 2 + 2 / 3) / 6)
    assert r.macro_precision == pytest.approx(2 / 3) and r.weighted_recall == pytest.approx(4 / 6)
    assert r.log_loss == pytest.approx(-(4 * math.log(0.8) + 2 * math.log(0.1)) / 6)
    assert r.expected_calibration_error == pytest.approx(0.8 - 4 / 6)  # one bin: confidence 0.8, accuracy 2/3
    assert r.roc_auc is None  # not a binary task


def test_binary_curves() -> None:
    y = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8])
    fpr, tpr, auc = metrics.roc_curve(y, score)
    assert auc == pytest.approx(0.75)  # the classic example: one of four pairs ranked wrongly
    assert fpr[0] == 0 and tpr[-1] == 1
    recall, precision, ap = metrics.precision_recall_curve(y, score)
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    r = metrics.report(y, np.stack([1 - score, score], axis=1), ["neg", "pos"])
    assert r.roc_auc == pytest.approx(0.75)


def test_temperature_scaling_lowers_ece_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=2000)
    right = rng.random(2000) < 0.7  # 70% accurate ...
    predicted = np.where(right, y, (y + 1) % 3)
    logits = np.zeros((2000, 3))
    logits[np.arange(2000), predicted] = 6.0  # ... but about 99% confident
    before = metrics.expected_calibration_error(y, metrics_softmax(logits))
    t = metrics.fit_temperature(logits, y)
    after = metrics.expected_calibration_error(y, metrics_softmax(logits / t))
    assert t > 1.5 and before > 0.25 and after < 0.05


def metrics_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_printed_tables() -> None:
    text = metrics.format_report(metrics.report(Y, PROBA, ["a", "b", "c"]))
    assert "macro avg" in text and "weighted avg" in text and "confusion matrix" in text
    assert "accuracy 0.6667" in text


def test_tied_scores_do_not_depend_on_row_order() -> None:
    """All scores equal: ROC AUC is 0.5 and average precision the positive share, in any row order."""
    score = np.full(6, 0.5)
    for y in (np.array([1, 1, 1, 0, 0, 0]), np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 0, 1])):
        assert metrics.roc_curve(y, score)[2] == pytest.approx(0.5)
        assert metrics.precision_recall_curve(y, score)[2] == pytest.approx(0.5)


def test_many_classes_give_top_confusions_not_a_matrix() -> None:
    n, rows = 10_000, 30_000
    rng = np.random.default_rng(0)
    y = rng.integers(0, n, size=rows)
    pred = np.where(rng.random(rows) < 0.9, y, (y + 1) % n)
    y[:100], pred[:100] = 3, 7  # the most frequent mistake: class 3 taken for class 7, 100 times
    proba = np.zeros((rows, n), dtype=np.float32)
    proba[np.arange(rows), pred] = 1.0
    r = metrics.report(y, proba, [f"c{i}" for i in range(n)])
    assert r.confusion_matrix is None and r.accuracy == pytest.approx(float((pred == y).mean()))
    assert r.top_confusions is not None and len(r.top_confusions) == metrics.TOP_CONFUSIONS
    first = r.top_confusions[0]
    assert (first["true"], first["predicted"], first["count"]) == ("c3", "c7", 100)
    assert "most frequent confusions (of 10000 classes)" in metrics.format_report(r)
