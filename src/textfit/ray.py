"""textfit on Ray Data: `Predictor` for `Dataset.map_batches`, and `predict(ds, model=...)`.
See textfit.jobs.on_ray; needs `pip install textfit[ray]`."""

from __future__ import annotations

from textfit.jobs.on_ray import Predictor, predict, predict_files

__all__ = ["Predictor", "predict", "predict_files"]
