"""Scoring where the rows are: Spark (local[2]) and Ray (a local cluster) give the labels and probabilities that
`textfit predict` and the server give, on the embedded model and on a multi-label model; bad rows are reported per
row; each worker loads the model once. Run by `make test-engines` (which installs textfit[spark,ray]); Spark's
tests are skipped only where no Java runtime is found."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import build_tiny_bert, make_rows, write_csv

pytestmark = pytest.mark.engines

TEXTS = ["the film was good and great", "the plot was bad and awful", "Très bon film, j'ai adoré 😀",
         "a long text " + "that goes on and on with good and great moments " * 40, "bad", "good, really good"]
BAD: list[Any] = [None, 7, "", "   "]
ROWS = [*TEXTS, *BAD, *TEXTS]  # bad rows between good ones, and rows across several batches


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact of the embedded MiniLM, fine-tuned briefly (the small-data recipe on 40 rows)."""
    import textfit

    root = tmp_path_factory.mktemp("engines-embedded")
    data = write_csv(root / "train" / "data.csv", make_rows(40)).parent
    textfit.train(data, hyperparameters={"epochs": "1", "max_seq_length": "32"}, output=root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import textfit

    root = tmp_path_factory.mktemp("engines-multi")
    tiny = build_tiny_bert(root / "tiny")
    rows = [("good|great" if i % 3 == 0 else "good" if i % 3 == 1 else "bad", text)
            for i, (_, text) in enumerate(make_rows(60))]
    data = write_csv(root / "train" / "data.csv", rows).parent  # type: ignore[arg-type]
    textfit.train(data, model_id=str(tiny), hyperparameters={"epochs": "1", "multi_label": "True",
                                                              "training_recipe": "finetune"}, output=root / "model")
    return root / "model"


def _predict_cli(model: Path, texts: list[str]) -> list[dict[str, Any]]:
    args = [a for t in texts for a in ("--text", t)]
    done = subprocess.run([sys.executable, "-m", "textfit", "predict", "--model", str(model), "--backend", "onnx",
                           *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _served(model: Path, texts: list[str]) -> list[dict[str, Any]]:
    from starlette.testclient import TestClient

    from textfit.predictor import Predictor
    from textfit.serving.server import create_app

    with TestClient(create_app(Predictor.load(model))) as client:
        answer = client.post("/invocations", content=json.dumps(texts),
                             headers={"Content-Type": "application/json", "Accept": "application/json;verbose"})
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def _check(rows: list[dict[str, Any]], model: Path) -> None:
    """Rows in ROWS' order: the good ones as `textfit predict` and the server answer, the bad ones named."""
    good = [t for t in ROWS if isinstance(t, str) and t.strip()]
    for reference in (_predict_cli(model, good), _served(model, good)):
        expected = iter(reference)
        for text, row in zip(ROWS, rows, strict=True):
            if not (isinstance(text, str) and text.strip()):
                assert row["predicted_label"] is None and row["probabilities"] is None
                assert row["prediction_error"] in ("the text is null", "the text is a int, not a string",
                                                   "the text is empty"), row
                continue
            want = next(expected)
            assert row["prediction_error"] is None
            assert row["predicted_label"] == want["predicted_label"]
            np.testing.assert_allclose(row["probabilities"], want["probabilities"], atol=1e-5)
            if "predicted_labels" in want:
                assert list(row["predicted_labels"]) == want["predicted_labels"]


# ------------------------------------------------------------------------------------ Spark


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime: Spark needs one (Java 17)")
    from pyspark.sql import SparkSession

    loads = tmp_path_factory.mktemp("spark-loads") / "loads.txt"
    os.environ["TEXTFIT_LOAD_LOG"] = str(loads)  # inherited by the Python workers Spark starts
    # Spark's Python workers run `python3` from PATH unless PYSPARK_PYTHON says otherwise: this interpreter, which
    # has textfit (the variable, read when the context starts, is what every PySpark version honours)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("textfit-test")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "3")  # several batches a partition
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    session.loads_file = loads
    yield session
    session.stop()
    for name in ("TEXTFIT_LOAD_LOG", "PYSPARK_PYTHON"):
        os.environ.pop(name, None)


def _frame(spark: Any) -> Any:
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    rows = [(i, t if isinstance(t, str) or t is None else str(t)) for i, t in enumerate(ROWS)]
    rows[ROWS.index(7)] = (ROWS.index(7), None)  # Spark's string column: the non-string row is tested on Ray
    return spark.createDataFrame(rows, StructType([StructField("id", LongType()), StructField("text", StringType())])
                                 ).repartition(4)


@pytest.mark.parametrize("which", ["embedded", "multi_label"])
def test_spark_predict_answers_as_textfit_predict(spark: Any, which: str, request: pytest.FixtureRequest) -> None:
    import textfit.spark

    model = request.getfixturevalue(which)
    spark.loads_file.write_text("")
    scored = textfit.spark.predict(_frame(spark), model=str(model), text_col="text")
    assert scored.columns[:2] == ["id", "text"]  # other columns kept
    assert ("predicted_labels" in scored.columns) == (which == "multi_label")
    rows = sorted((r.asDict() for r in scored.collect()), key=lambda r: r["id"])
    _check(rows, model)  # (the int row goes to Spark's string column as a null; Ray's test sends it as an int)
    loads = spark.loads_file.read_text().split()
    assert 1 <= len(loads) <= 2 and len(set(loads)) == len(loads)  # once per Python worker, 4 partitions


def test_spark_sql_function(spark: Any, embedded: Path) -> None:
    import textfit.spark

    textfit.spark.register(spark, model=str(embedded))
    _frame(spark).createOrReplaceTempView("texts")
    rows = spark.sql("SELECT id, textfit_predict(text) AS p FROM texts ORDER BY id").collect()
    _check([r["p"].asDict() for r in rows], embedded)


# ------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import ray

    loads = tmp_path_factory.mktemp("ray-loads") / "loads.txt"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TEXTFIT_LOAD_LOG": str(loads)}})
    yield loads
    ray.shutdown()


@pytest.mark.parametrize("which", ["embedded", "multi_label"])
def test_ray_predict_answers_as_textfit_predict(ray_cluster: Path, which: str, request: pytest.FixtureRequest
                                                ) -> None:
    import ray

    import textfit.ray

    model = request.getfixturevalue(which)
    ray_cluster.write_text("")
    # Arrow gives a column one type: the non-string row goes as a null here (scoring's own test sends it as is)
    ds = ray.data.from_items([{"id": i, "text": None if t == 7 else t} for i, t in enumerate(ROWS)],
                             override_num_blocks=4)
    rows = sorted(textfit.ray.predict(ds, model=str(model), concurrency=2, batch_size=3).take_all(),
                  key=lambda r: r["id"])
    _check(rows, model)
    assert len(ray_cluster.read_text().split()) <= 2  # one load per actor, whatever the batches


def test_ray_numpy_batches_through_the_callable_class(ray_cluster: Path, embedded: Path) -> None:
    import ray

    import textfit.ray

    ds = ray.data.from_items([{"id": i, "text": None if t == 7 else t} for i, t in enumerate(ROWS)])
    scored = ds.map_batches(textfit.ray.Predictor, fn_constructor_kwargs={"model": str(embedded)}, concurrency=1,
                            batch_size=4, batch_format="numpy")
    _check(sorted(scored.take_all(), key=lambda r: r["id"]), embedded)


def test_the_ray_engine_of_textfit_predict(ray_cluster: Path, embedded: Path, tmp_path: Path) -> None:
    """`textfit predict --engine ray` over a glob of files, on the cluster running here (RAY_ADDRESS)."""
    import ray

    good = [t for t in ROWS if isinstance(t, str) and t.strip()]
    write_csv(tmp_path / "in" / "a.csv", [(0, t) for t in good[:4]])
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in good[4:]))
    from textfit.cli import main

    address = ray.get_runtime_context().gcs_address
    assert main(["predict", "--engine", "ray", "--ray-address", address, "--model", str(embedded), "--input",
                 f"{tmp_path / 'in'}/*", "--output", str(tmp_path / "out")]) == 0
    rows = [json.loads(line) for f in sorted((tmp_path / "out").glob("*.json*")) for line in f.read_text().splitlines()]
    rows.sort(key=lambda r: (Path(r["file"]).name, r["line"]))
    expected = _predict_cli(embedded, good)
    assert len(rows) == len(good)
    for row, want in zip(rows, expected):
        assert row["predicted_label"] == want["predicted_label"] and row["prediction_error"] is None
        np.testing.assert_allclose(row["probabilities"], want["probabilities"], atol=1e-5)


def test_scoring_names_each_bad_row_and_scores_the_rest(embedded: Path) -> None:
    """What both engines do with a batch: values of any type, each bad one named in its row."""
    from textfit.jobs import scoring
    from textfit.predictor import Predictor

    predictor = Predictor.load(embedded)
    rows: list[Any] = ["good film", None, float("nan"), 7, b"bytes", "", " \n", "bad \ud800 text", "bad plot"]
    scored = scoring.score(predictor, rows)
    assert scored.prediction_error == [
        None, "the text is null", "the text is null", "the text is a int, not a string",
        "the text is a bytes, not a string", "the text is empty", "the text is empty",
        "the text holds an invalid Unicode character (U+D800)", None]
    expected = predictor.predict_proba(["good film", "bad plot"])
    np.testing.assert_allclose([scored.probabilities[0], scored.probabilities[-1]], expected, atol=1e-6)
    assert scored.predicted_labels is None and scored.predicted_label[1] is None
