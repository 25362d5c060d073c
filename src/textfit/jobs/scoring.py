"""Scoring rows where they live (Spark, Ray): what both engines share.

An engine runs many Python worker processes, each handed batch after batch of rows. `loaded` gives each process
its model once (keyed by where it comes from and how it runs), never once per batch; `score` turns a batch of
texts into the output columns, a bad row (a null, a value that is no string, an empty or invalid text) reported
in its own `prediction_error` rather than failing the batch, and so the job.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textfit.errors import TextfitError
from textfit.jobs import remote
from textfit.predictor import Predictor
from textfit.reports.records import verbose_record

log = logging.getLogger("textfit")

LABEL, PROBABILITIES, LABELS, ERROR = "predicted_label", "probabilities", "predicted_labels", "prediction_error"
"""The output columns; `predicted_labels` for a multi-label model only."""

_LOADED: dict[tuple[str, str, bool, int | None], Predictor] = {}
_LOCK = threading.Lock()
LOAD_LOG = "TEXTFIT_LOAD_LOG"
"""A file each model load of a process appends a line to, where this variable names one (tests count loads)."""


def loaded(model: str | Path, backend: str = "onnx", quantized: bool = False, threads: int | None = None
           ) -> Predictor:
    """The model for this process: loaded (from a folder, a model.tar.gz or an s3:// URI of either) the first time
    it is asked for, then the same object."""
    key = (str(model), backend, quantized, threads)
    with _LOCK:
        if key not in _LOADED:
            with remote.local_copy(model) as local:
                _LOADED[key] = Predictor.load(local, backend=backend, quantized=quantized, threads=threads)
            if os.environ.get(LOAD_LOG):
                with open(os.environ[LOAD_LOG], "a", encoding="utf-8") as f:
                    f.write(f"{os.getpid()}\n")
        return _LOADED[key]


@dataclass
class Scored:
    """A batch's output columns, one value a row; None where the row could not be scored."""

    predicted_label: list[str | None]
    probabilities: list[list[float] | None]
    predicted_labels: list[list[str] | None] | None
    """A multi-label model's labels above their thresholds; None for a single-label model."""
    prediction_error: list[str | None]

    def columns(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {LABEL: self.predicted_label, PROBABILITIES: self.probabilities}
        if self.predicted_labels is not None:
            out[LABELS] = self.predicted_labels
        out[ERROR] = self.prediction_error
        return out


def _problem(value: object) -> str | None:
    """Why a value is no text to classify; None if it is one."""
    # None, NaN, and pandas' own missing values (pd.NA in a string column, NaT), known by name: no pandas import
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ in ("NAType",
                                                                                                      "NaTType"):
        return "the text is null"
    if not isinstance(value, str):
        return f"the text is a {type(value).__name__}, not a string"
    if not value.strip():
        return "the text is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"the text holds an invalid Unicode character (U+{ord(value[exc.start]):04X})"
    return None


def score(predictor: Predictor, texts: Sequence[object], *, batch_size: int = 64, long_texts: str | None = None
          ) -> Scored:
    """The output columns for a batch of texts, rows in order; `long_texts` as in predict (None: the model's)."""
    problems = [_problem(t) for t in texts]
    good = [i for i, p in enumerate(problems) if p is None]
    probs = np.zeros((0, len(predictor.classes_)), dtype=np.float32)
    if good:
        try:
            probs = predictor.predict_proba([str(texts[i]) for i in good], batch_size=batch_size,
                                            long_texts=long_texts)
        except TextfitError as exc:  # a text textfit refuses that the checks above let through: name it per row
            problems = [p if p is not None else str(exc) for p in problems]
            good, probs = [], probs
    n = len(texts)
    label: list[str | None] = [None] * n
    rows: list[list[float] | None] = [None] * n
    chosen: list[list[str] | None] | None = [None] * n if predictor.multi_label_ else None
    for i, row in zip(good, probs):  # the record `textfit predict` and the endpoint write, as columns
        record = verbose_record(row, predictor.classes_, predictor.thresholds_)
        rows[i], label[i] = record["probabilities"], record["predicted_label"]
        if chosen is not None:
            chosen[i] = record["predicted_labels"]
    return Scored(label, rows, chosen, problems)
