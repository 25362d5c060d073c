"""The inference contract's output shapes (spec §8), shared by `textfit predict` and the server."""

from __future__ import annotations

from typing import Any

import numpy as np


def verbose_record(probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """SageMaker's `application/json;verbose` response for one text."""
    probs = [float(p) for p in probabilities]
    return {"probabilities": probs, "labels": list(classes), "predicted_label": classes[int(np.argmax(probs))]}
