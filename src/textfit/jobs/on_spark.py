"""Prediction over a Spark DataFrame, where the rows already are (`pip install textfit[spark]`).

    import textfit.spark
    scored = textfit.spark.predict(df, model="s3://bucket/model.tar.gz", text_col="text")
    textfit.spark.register(spark, model="s3://bucket/model.tar.gz")   # SQL: SELECT textfit_predict(text) ...

Built on `mapInPandas`: each Python worker of an executor loads the artifact once (scoring.loaded) and scores the
Arrow batches Spark hands it, on the ONNX back end by default, with as many ONNX Runtime threads as the task has
cores (`spark.task.cpus`); texts longer than the model's window are read as `textfit predict` reads them. The
driver reads only the model's labels, to state the output's schema: no rows pass through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textfit.errors import DataError
from textfit.jobs import remote, scoring
from textfit.model import artifact

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructField


def _multi_label(model: str | Path) -> bool:
    """Whether the model is multi-label, from its manifest alone (the driver loads no weights)."""
    with remote.local_copy(model) as local, artifact.opened(local) as folder:
        hyperparameters = artifact.read_json(folder / artifact.MANIFEST).get("hyperparameters", {})
    return str(hyperparameters.get("multi_label", False)).strip().lower() == "true"


def _fields(multi_label: bool) -> list[StructField]:
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField

    fields = [StructField(scoring.LABEL, StringType()), StructField(scoring.PROBABILITIES, ArrayType(DoubleType()))]
    if multi_label:
        fields.append(StructField(scoring.LABELS, ArrayType(StringType())))
    return [*fields, StructField(scoring.ERROR, StringType())]


def _task_threads() -> int:
    """The cores Spark gave this task (spark.task.cpus), which ONNX Runtime may use; 1 outside a task."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, int(context.cpus())) if context is not None else 1


def predict(df: DataFrame, model: str | Path, text_col: str = "text", *, batch_size: int = 64,
            backend: str = "onnx", quantized: bool = False, long_texts: str | None = None) -> DataFrame:
    """`df` with the predictions of `model` for its `text_col` added: `predicted_label`, `probabilities` (an array
    in the order of the model's labels), `predicted_labels` for a multi-label model, and `prediction_error`
    (null, or why the row was not scored: a null, a non-string, an empty text). Every other column is kept.

    Args:
        model: a model folder or model.tar.gz, local to the executors or an s3:// URI of either.
        batch_size: texts per forward pass; Spark's Arrow batches (spark.sql.execution.arrow.maxRecordsPerBatch)
            are cut into these.
        backend: onnx (default, the served engine) or torch; quantized: the int8 graph.
        long_texts: truncate, head_tail or window; None: the model's own choice, as `textfit predict`.
    """
    from pyspark.sql.types import StructType

    fields = _fields(_multi_label(model))
    taken = {f.name for f in fields} & set(df.columns)
    if taken:
        raise DataError(f"the DataFrame already has column(s) {sorted(taken)}; rename them before predicting")
    if text_col not in df.columns:
        raise DataError(f"the DataFrame has no column {text_col!r}; pass text_col= one of {df.columns}")
    schema = StructType([*df.schema.fields, *fields])
    where = str(model)

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        predictor = scoring.loaded(where, backend, quantized, _task_threads())
        for batch in batches:
            scored = scoring.score(predictor, batch[text_col].tolist(), batch_size=batch_size, long_texts=long_texts)
            yield batch.assign(**scored.columns())

    return df.mapInPandas(score_batches, schema)


def register(spark: SparkSession, model: str | Path, name: str = "textfit_predict", *, batch_size: int = 64,
             backend: str = "onnx", quantized: bool = False, long_texts: str | None = None) -> Any:
    """Register `name` as a SQL function of a text returning a struct of the predict columns:

        SELECT t.id, textfit_predict(t.text).predicted_label FROM tickets t
    """
    import pandas as pd
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import StructType

    schema = StructType(_fields(_multi_label(model)))
    where = str(model)

    def textfit_predict(texts: pd.Series) -> pd.DataFrame:
        predictor = scoring.loaded(where, backend, quantized, _task_threads())
        scored = scoring.score(predictor, texts.tolist(), batch_size=batch_size, long_texts=long_texts)
        return pd.DataFrame(scored.columns())

    # pandas_udf reads the kind of function from its annotations, as objects: this module's are strings
    textfit_predict.__annotations__ = {"texts": pd.Series, "return": pd.DataFrame}
    return spark.udf.register(name, pandas_udf(textfit_predict, schema))
