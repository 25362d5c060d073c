"""Every reported number against the library that owns it, called directly on the same inputs, and against the
values the hand-made implementations wrote before (recorded.json): metrics.json and validation_report.json keep
their values, to floating-point rounding (scikit-learn computes F1 as 2tp / (2tp + fp + fn), the old code as
2PR / (P + R): the last digit may differ)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
)
from sklearn.metrics import log_loss as sklearn_log_loss

from textfit.reports import metrics

RECORDED = json.loads((Path(__file__).parent / "recorded.json").read_text(encoding="utf-8"))["metrics"]

# binary, two rows tied at 0.5 (argmax picks class 0)
BINARY_Y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
_SCORE = np.array([0.2, 0.9, 0.4, 0.6, 0.5, 0.5, 0.1, 0.7])
BINARY_P = np.stack([1 - _SCORE, _SCORE], axis=1)

# 4 classes: c has rows but is never predicted, d has no rows and is never predicted; float32, as predict_proba
# returns, with one true class at probability 0 and one at 1e-20 (the log-loss clip)
MULTI_Y = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2])
MULTI_P = np.array([
    [0.7, 0.2, 0.1, 0.0],
    [0.4, 0.5, 0.1, 0.0],
    [0.1, 0.8, 0.1, 0.0],
    [0.6, 0.3, 0.1, 0.0],
    [0.5, 0.3, 0.2, 0.0],
    [0.2, 0.8, 0.0, 0.0],
    [1.0, 0.0, 0.0, 0.0],
    [0.3, 0.7, 0.0, 0.0],
    [0.9, 0.1, 1e-20, 0.0],
], dtype=np.float32)

# 3 classes, every row a tie between two or three of them
TIES_Y = np.array([0, 1, 2, 1, 2, 0])
TIES_P = np.array([
    [1 / 3, 1 / 3, 1 / 3],
    [0.5, 0.5, 0.0],
    [0.0, 0.5, 0.5],
    [0.25, 0.375, 0.375],
    [0.4, 0.2, 0.4],
    [0.5, 0.0, 0.5],
])

SINGLE = {"binary": (BINARY_Y, BINARY_P, ["neg", "pos"]), "multiclass": (MULTI_Y, MULTI_P, ["a", "b", "c", "d"]),
          "ties": (TIES_Y, TIES_P, ["x", "y", "z"])}

# multi-label, 4 labels: an all-zero row predicted empty and one predicted non-empty, label s without positives,
# scores equal to a threshold (not predicted: the rule is >), tied scores
ML_Y = np.array([
    [1, 0, 1, 0],
    [0, 0, 0, 0],
    [1, 1, 0, 0],
    [0, 0, 0, 0],
    [0, 1, 1, 0],
    [1, 0, 0, 0],
    [0, 1, 0, 0],
], dtype=np.int8)
ML_P = np.array([
    [0.9, 0.1, 0.5, 0.2],
    [0.2, 0.3, 0.1, 0.1],
    [0.5, 0.6, 0.3, 0.7],
    [0.6, 0.4, 0.3, 0.1],
    [0.5, 0.6, 0.3, 0.6],
    [0.8, 0.4, 0.2, 0.1],
    [0.3, 0.4, 0.6, 0.2],
], dtype=np.float32)
ML_THRESHOLDS = [0.5, 0.5, 0.3, 0.5]


def same(value: Any, recorded: Any) -> None:
    """Equal, floats to rounding."""
    if isinstance(recorded, dict):
        assert value.keys() == recorded.keys()
        for key in recorded:
            same(value[key], recorded[key])
    elif isinstance(recorded, list):
        assert len(value) == len(recorded)
        for v, r in zip(value, recorded):
            same(v, r)
    elif isinstance(recorded, float):
        assert value == pytest.approx(recorded, rel=1e-12, abs=1e-15)
    else:
        assert value == recorded


@pytest.mark.parametrize("case", SINGLE)
def test_the_report_is_scikit_learns_and_keeps_its_recorded_values(case: str) -> None:
    y, proba, labels = SINGLE[case]
    r = metrics.report(y, proba, labels)
    pred, classes = proba.argmax(axis=1), list(range(len(labels)))
    # zero_division=0 is the value textfit always wrote for a class never predicted or without rows
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    assert [c.precision for c in r.per_class] == pytest.approx(precision, rel=1e-15)
    assert [c.recall for c in r.per_class] == pytest.approx(recall, rel=1e-15)
    assert [c.f1 for c in r.per_class] == pytest.approx(f1, rel=1e-15)
    assert [c.support for c in r.per_class] == support.tolist()
    for average in ("macro", "weighted"):
        expected = precision_recall_fscore_support(y, pred, labels=classes, average=average, zero_division=0)
        assert [getattr(r, f"{average}_{name}") for name in ("precision", "recall", "f1")] == pytest.approx(
            expected[:3], rel=1e-15)
    assert r.accuracy == accuracy_score(y, pred)
    assert r.confusion_matrix == confusion_matrix(y, pred, labels=classes).tolist()
    same(r.as_dict(), RECORDED[f"report_{case}"])


def test_a_class_never_predicted_and_one_without_rows_score_zero() -> None:
    r = metrics.report(MULTI_Y, MULTI_P, ["a", "b", "c", "d"])
    c, d = r.per_class[2], r.per_class[3]
    assert (c.precision, c.recall, c.f1, c.support) == (0.0, 0.0, 0.0, 3)
    assert (d.precision, d.recall, d.f1, d.support) == (0.0, 0.0, 0.0, 0)
    assert r.macro_f1 == pytest.approx(RECORDED["report_multiclass"]["macro_f1"], rel=1e-12)  # d counts in the mean


def test_log_loss_is_scikit_learns_inside_its_clip_and_the_recorded_one_outside() -> None:
    for y, proba in ((BINARY_Y, BINARY_P), (TIES_Y, TIES_P)):  # float64, true classes well inside (0, 1)
        expected = sklearn_log_loss(y, proba, labels=list(range(proba.shape[1])))
        assert metrics.log_loss(y, proba) == pytest.approx(expected, rel=1e-12)
    ours = metrics.log_loss(MULTI_Y, MULTI_P)
    assert ours == pytest.approx(RECORDED["log_loss_multiclass"], rel=1e-7)
    # the reason it stays by hand: scikit-learn clips float32 at 1.2e-7, so p=0 costs 15.9 there, 34.5 here
    assert sklearn_log_loss(MULTI_Y, MULTI_P, labels=[0, 1, 2, 3]) < ours - 3


@pytest.mark.parametrize("name", ["thresholds", "half"])
def test_the_multi_label_report_is_scikit_learns_and_keeps_its_recorded_values(name: str) -> None:
    thresholds = ML_THRESHOLDS if name == "thresholds" else [0.5] * 4
    r = metrics.multi_label_report(ML_Y, ML_P, list("pqrs"), thresholds)
    truth, predicted = ML_Y.astype(bool), np.greater(ML_P, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    assert [(c.precision, c.recall, c.f1, c.support) for c in r.per_label] == [
        (pytest.approx(p, rel=1e-15), pytest.approx(q, rel=1e-15), pytest.approx(f, rel=1e-15), s)
        for p, q, f, s in zip(precision, recall, f1, support)]
    for average in ("micro", "macro", "weighted"):
        expected = precision_recall_fscore_support(truth, predicted, average=average, zero_division=0)
        assert [getattr(r, f"{average}_{n}") for n in ("precision", "recall", "f1")] == pytest.approx(expected[:3])
    # samples F1 takes 1 for a row with nothing to find and nothing found, as textfit always wrote it
    assert r.samples_f1 == pytest.approx(f1_score(truth, predicted, average="samples", zero_division=1))
    assert r.hamming_loss == hamming_loss(truth, predicted)
    assert r.subset_accuracy == accuracy_score(truth, predicted)
    counts = multilabel_confusion_matrix(truth, predicted)
    assert [[c.true_negatives, c.false_positives, c.false_negatives, c.true_positives] for c in r.per_label] == (
        counts.reshape(-1, 4).tolist())
    same(r.as_dict(), RECORDED[f"multi_label_{name}"])


def test_a_row_with_nothing_to_find_and_nothing_found_is_right() -> None:
    r = metrics.multi_label_report(np.zeros((1, 2), dtype=np.int8), np.full((1, 2), 0.1), ["p", "q"], [0.5, 0.5])
    assert r.samples_f1 == 1.0 and r.subset_accuracy == 1.0 and r.micro_f1 == 0.0 and r.macro_f1 == 0.0


def test_a_single_label_is_still_a_multi_label_target() -> None:
    """scikit-learn reads one column as a binary target; the report stays the multi-label one recorded."""
    r = metrics.multi_label_report(ML_Y[:, 1:2], ML_P[:, 1:2], ["q"], [0.5])
    same(r.as_dict(), RECORDED["multi_label_one_label"])


def test_best_thresholds_keep_their_recorded_values() -> None:
    assert metrics.best_thresholds(ML_Y, ML_P) == pytest.approx(RECORDED["best_thresholds"], rel=1e-7)
    assert metrics.best_thresholds(ML_Y[:, 1:2], ML_P[:, 1:2]) == pytest.approx(
        RECORDED["best_thresholds_one_label"], rel=1e-7)
