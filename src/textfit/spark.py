"""textfit on Spark: `predict(df, model=..., text_col="text")` and `register(spark, model=...)` for SQL.
See textfit.jobs.on_spark; needs `pip install textfit[spark]`."""

from __future__ import annotations

from textfit.jobs.on_spark import predict, register

__all__ = ["predict", "register"]
