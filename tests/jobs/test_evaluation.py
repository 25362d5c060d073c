from __future__ import annotations

import csv
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST, make_rows, write_csv
from textfit import TextClassifier, train
from textfit.cli import main
from textfit.data.channels import read_channel
from textfit.jobs.evaluation import evaluate
from textfit.jobs.train import save_artifact

SAMPLE = Path(__file__).parents[2] / "examples" / "reviews" / "data.csv"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def test_evaluate_writes_metrics_and_plots(tiny_artifact: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "test" / "data.csv", make_rows(40, seed=11))
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--model", str(tiny_artifact), "--data", str(data), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weighted avg" in printed and "confusion matrix" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows"] == 40 and sum(map(sum, report["confusion_matrix"])) == 40
    assert {"accuracy", "macro_f1", "weighted_f1", "log_loss", "roc_auc", "per_class"} <= set(report)
    clf = TextClassifier.load(tiny_artifact)
    expected = float(np.mean([p == str(y) for p, (y, _) in zip(clf.predict([t for _, t in make_rows(40, seed=11)]),
                                                                  make_rows(40, seed=11))]))
    assert report["accuracy"] == pytest.approx(expected)
    for name in ("confusion_matrix.png", "roc_curve.png", "precision_recall_curve.png"):
        width, height = png_size(out / name)
        assert width >= 400 and height >= 400, name


def test_evaluate_refuses_labels_the_model_does_not_know(tiny_artifact: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "test" / "data.csv", [(0, "good film"), (1, "bad film"), (7, "plot")])
    assert main(["evaluate", "--model", str(tiny_artifact), "--data", str(data), "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"{data}, line 3: label 7 is not a class of this model" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_training_writes_curves_report_and_a_model_card(tiny_artifact: Path) -> None:
    width, height = png_size(tiny_artifact / "training_curves.png")
    assert width >= 800 and height >= 300
    png_size(tiny_artifact / "confusion_matrix.png")
    report = json.loads((tiny_artifact / "validation_report.json").read_text())
    manifest = json.loads((tiny_artifact / "textfit.json").read_text())
    assert report["accuracy"] == pytest.approx(manifest["epochs"][manifest["best_epoch"] - 1]["val_accuracy"])
    card = (tiny_artifact / "README.md").read_text()
    assert f"accuracy **{report['accuracy']:.4f}**" in card
    counts = manifest["data"]["train"]["class_counts"]
    assert ", ".join(f"{k} ({v})" for k, v in counts.items()) in card
    assert manifest["data"]["train"]["sha256"][:16] in card
    assert 'pipeline("text-classification"' in card and "textfit.load" in card


def test_calibration_fits_a_temperature_into_the_weights(tiny_bert: Path, channel: Path, tmp_path: Path) -> None:
    plain = TextClassifier(str(tiny_bert), {**FAST, "epochs": "8"}).fit(read_channel(channel))
    clf = TextClassifier(str(tiny_bert), {**FAST, "epochs": "8", "calibrate": "True"}).fit(read_channel(channel))
    cal = clf.manifest_["calibration"]
    texts = ["good great film", "awful plot", "the film was quite bad"]
    # the same training (same seed), then the logits divided by the temperature: folded into the last layer
    np.testing.assert_allclose(clf.predict_logits(texts), plain.predict_logits(texts) / cal["temperature"],
                               rtol=1e-4, atol=1e-5)
    assert clf.validation_report_["calibration"] == cal  # type: ignore[index]
    save_artifact(clf, tmp_path / "m")
    np.testing.assert_allclose(TextClassifier.load(tmp_path / "m").predict_proba(texts), clf.predict_proba(texts),
                               atol=1e-6)  # the temperature travels in the weights
    assert "Probabilities are calibrated" in (tmp_path / "m" / "README.md").read_text()


def test_the_calibration_after_figure_is_measured_on_held_out_rows() -> None:
    """Each half of the validation rows is scaled by the temperature fitted on the other half."""
    from textfit.classifier import _cross_fitted_temperature
    from textfit.predictor import softmax as _softmax
    from textfit.reports import metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3)) + 4.0 * np.eye(3)[np.where(rng.random(200) < 0.7, y, (y + 1) % 3)]
    temperature, held_out = _cross_fitted_temperature(logits, y, seed=7)
    assert temperature == pytest.approx(metrics.fit_temperature(logits, y))
    order = np.random.default_rng(7).permutation(200)
    a, b = order[:100], order[100:]
    np.testing.assert_allclose(held_out[b], _softmax(logits[b] / metrics.fit_temperature(logits[a], y[a])), atol=1e-9)
    np.testing.assert_allclose(held_out[a], _softmax(logits[a] / metrics.fit_temperature(logits[b], y[b])), atol=1e-9)


def test_calibration_without_validation_data_is_an_error(tiny_bert: Path, channel: Path) -> None:
    from textfit.errors import HyperparameterError

    with pytest.raises(HyperparameterError, match="calibrate=True needs validation data"):
        TextClassifier(str(tiny_bert), {**FAST, "calibrate": "True", "validation_split_ratio": "0"}).fit(read_channel(channel))


def test_tensorboard_event_files(tiny_bert: Path, channel: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    train(channel, model_id=str(tiny_bert), hyperparameters=FAST, output=tmp_path / "m", tensorboard=tmp_path / "tb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("val_accuracy")) == int(FAST["epochs"])


@pytest.mark.slow
def test_balanced_class_weights_raise_minority_recall(tmp_path: Path) -> None:
    """MiniLM's frozen features, 150 negative reviews against 8 positive ones, judged on a balanced set."""
    with SAMPLE.open(encoding="utf-8", newline="") as f:
        rows = [(int(label), text) for label, text in csv.reader(f)]
    random.Random(0).shuffle(rows)
    neg, pos = [r for r in rows if r[0] == 0], [r for r in rows if r[0] == 1]
    write_csv(tmp_path / "train" / "data.csv", neg[:150] + pos[:8])
    write_csv(tmp_path / "val" / "data.csv", neg[150:190] + pos[100:140])
    recall = {}
    for weights in ("none", "balanced"):
        clf = TextClassifier(hyperparameters={"train_only_on_top_layer": "True", "epochs": "40",
                                              "learning_rate": "0.01", "class_weights": weights})
        clf.fit(read_channel(tmp_path / "train"), validation=read_channel(tmp_path / "val"))
        recall[weights] = evaluate(clf, tmp_path / "val").per_class[1].recall
    assert recall["balanced"] >= recall["none"] + 0.1, recall


def test_quantization_report_compares_engines_on_labelled_data(tiny_artifact: Path, tmp_path: Path) -> None:
    import shutil

    from textfit.jobs.evaluation import quantization_report

    model = Path(shutil.copytree(tiny_artifact, tmp_path / "m"))
    TextClassifier.load(model).export_onnx(model, quantize=True)
    data = write_csv(tmp_path / "test" / "data.csv", make_rows(30, seed=4))
    report = quantization_report(model, data)
    assert report["texts"] == 30 and report["onnx_fp32"]["max_abs_probability_diff"] < 1e-4
    assert report["onnx_fp32"]["accuracy"] == report["torch"]["accuracy"]
    texts, truth = [t for _, t in make_rows(30, seed=4)], np.array([y for y, _ in make_rows(30, seed=4)])
    reference = TextClassifier.load(model).predict_proba(texts)
    int8 = TextClassifier.load(model, backend="onnx", quantized=True).predict_proba(texts)
    assert report["onnx_int8"]["agreement"] == pytest.approx(float((reference.argmax(1) == int8.argmax(1)).mean()))
    assert report["onnx_int8"]["accuracy"] == pytest.approx(float((int8.argmax(1) == truth).mean()))
