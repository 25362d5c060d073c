"""Prediction over a Ray Dataset, on whatever cluster Ray is connected to (`pip install textfit[ray]`).

    import ray, textfit.ray
    ds = ray.data.read_parquet("s3://bucket/tickets/")
    scored = ds.map_batches(textfit.ray.Predictor, fn_constructor_kwargs={"model": "s3://bucket/model.tar.gz"},
                            concurrency=4, batch_size=256, batch_format="pandas")
    scored = textfit.ray.predict(ds, model="s3://bucket/model.tar.gz", concurrency=4)    # the same

`Predictor` is a callable class for `Dataset.map_batches`: each actor of the pool loads the artifact once and
scores the batches it is given, with as many ONNX Runtime threads as the CPUs Ray reserved for it. Rows keep
their other columns and gain the columns of `textfit.spark.predict`.

`textfit predict --engine ray --input 's3://bucket/texts/*.csv' --output s3://bucket/scored/` reads the files
as `textfit predict` does (CSV, JSON Lines or plain lines), scores them on the cluster `ray.init` connects to
(RAY_ADDRESS or --ray-address; a local one where there is none) and writes JSON Lines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textfit.errors import DataError
from textfit.jobs import scoring

log = logging.getLogger("textfit")

if TYPE_CHECKING:
    import pandas as pd
    from ray.data import Dataset


def _actor_threads() -> int:
    """The CPUs Ray reserved for this actor or task; 1 outside Ray."""
    import ray

    if not ray.is_initialized():
        return 1
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


class Predictor:
    """A model's predictions for `Dataset.map_batches` (batch_format "pandas" or "numpy"): loaded once per actor."""

    def __init__(self, model: str | Path, text_col: str = "text", *, batch_size: int = 64, backend: str = "onnx",
                 quantized: bool = False, long_texts: str | None = None) -> None:
        self.text_col, self.batch_size, self.long_texts = text_col, batch_size, long_texts
        self.predictor = scoring.loaded(str(model), backend, quantized, _actor_threads())

    def __call__(self, batch: pd.DataFrame | dict[str, Any]) -> pd.DataFrame | dict[str, Any]:
        import numpy as np
        import pandas as pd

        if self.text_col not in batch:
            raise DataError(f"the rows have no column {self.text_col!r}; pass text_col= one of {list(batch)}")
        texts = batch[self.text_col]
        scored = scoring.score(self.predictor, list(texts), batch_size=self.batch_size,
                               long_texts=self.long_texts).columns()
        if isinstance(batch, pd.DataFrame):
            return batch.assign(**scored)
        out = dict(batch)
        for name, values in scored.items():  # ragged lists (arrays with nulls) as object arrays, as Ray keeps them
            column = np.empty(len(values), dtype=object)
            column[:] = values
            out[name] = column
        return out


def predict(ds: Dataset, model: str | Path, text_col: str = "text", *, concurrency: int = 2, batch_size: int = 256,
            num_cpus: float = 1, backend: str = "onnx", quantized: bool = False, long_texts: str | None = None
            ) -> Dataset:
    """`ds` with the predictions added, by a pool of `concurrency` actors of `num_cpus` CPUs each.

    A pool that would take every CPU of the cluster leaves the tasks that read the rows none, and Ray's
    executor then waits for ever: such a pool's actors share all but one CPU (their ONNX Runtime threads
    follow), and a line says so."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0
    if cpus >= 2 and concurrency * num_cpus > cpus - 1:
        num_cpus = (cpus - 1) / concurrency
        log.info("%d scoring actors on a cluster of %g CPUs: %.2f CPU each, one CPU left for reading the rows",
                 concurrency, cpus, num_cpus)
    return ds.map_batches(Predictor, fn_constructor_kwargs={"model": str(model), "text_col": text_col,
                                                            "backend": backend, "quantized": quantized,
                                                            "long_texts": long_texts},
                          concurrency=concurrency, batch_size=batch_size, batch_format="pandas", num_cpus=num_cpus)


def _records(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A file's records as `textfit predict --input` reads them (the format from the file's suffix)."""
    import tempfile

    from textfit.jobs.prediction import read_records

    name = Path(str(row["path"])).name
    with tempfile.TemporaryDirectory(prefix="textfit-ray-") as tmp:
        local = Path(tmp) / name
        local.write_bytes(row["bytes"])
        return [{"file": str(row["path"]), "line": r.line, "text": r.text, "label": r.label}
                for r in read_records(local)]


def _expanded(inputs: str) -> str | list[str]:
    """A glob (local or remote) as the files it matches, which Ray's readers take as a list; anything else as
    it is (a file, a folder, a prefix)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(inputs)
    if not any(c in path for c in "*?["):
        return inputs
    found = sorted(fs.glob(path))
    if not found:
        raise DataError(f"{inputs}: no file matches; check the pattern")
    return [fs.unstrip_protocol(f) if "://" in inputs else f for f in found]


def predict_files(inputs: str, output: str, model: str | Path, *, address: str | None = None, concurrency: int = 2,
                  batch_size: int = 256, backend: str = "onnx", quantized: bool = False,
                  long_texts: str | None = None) -> None:
    """`textfit predict --engine ray`: the files matching `inputs` (a path, a glob or a prefix, local or s3://)
    scored on the Ray cluster at `address` (or RAY_ADDRESS; a local one where neither is set), written to the
    folder `output` as JSON Lines, a record's file and line beside its predictions (as `textfit predict`, the
    text is not repeated)."""
    import ray

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
             logging_level=logging.ERROR, include_dashboard=False)
    files = ray.data.read_binary_files(_expanded(inputs), include_paths=True)
    rows = files.flat_map(_records)
    scored = predict(rows, model, concurrency=concurrency, batch_size=batch_size, backend=backend,
                     quantized=quantized, long_texts=long_texts)
    scored.drop_columns(["text"]).write_json(output)

