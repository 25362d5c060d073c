"""A prediction as SageMaker's endpoint answers it, the one form that `classify`, `predict --output`, the server
and batch transform all write: the probabilities, and with verbose the labels and the predicted label(s)."""

from __future__ import annotations

from typing import Any

import numpy as np


def verbose_record(probabilities: np.ndarray, classes: list[str], thresholds: list[float] | None = None
                   ) -> dict[str, Any]:
    """SageMaker's `application/json;verbose` response for one text. A multi-label model (`thresholds` given)
    adds `predicted_labels`, every label whose independent probability is above its threshold;
    `predicted_label` stays the most probable one, so single-label clients keep working."""
    probs = [float(p) for p in probabilities]
    out: dict[str, Any] = {"probabilities": probs, "labels": list(classes),
                           "predicted_label": classes[int(np.argmax(probs))]}
    if thresholds is not None:
        out["predicted_labels"] = [c for c, p, t in zip(classes, probs, thresholds) if p > t]
    return out


def record(probabilities: np.ndarray, classes: list[str], verbose: bool, thresholds: list[float] | None = None
           ) -> dict[str, Any]:
    if verbose:
        return verbose_record(probabilities, classes, thresholds)
    return {"probabilities": [float(p) for p in probabilities]}
