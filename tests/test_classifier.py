from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST, make_rows, write_csv
from textfit import TextClassifier
from textfit.data.channels import read_channel
from textfit.errors import DataError, HyperparameterError, TextfitError
from textfit.jobs.train import save_artifact, train


@pytest.fixture
def fitted(tiny_bert: Path, channel: Path) -> TextClassifier:
    return TextClassifier(str(tiny_bert), {**FAST, "epochs": "6"}).fit(read_channel(channel))


def test_fit_predict_and_classes_order(fitted: TextClassifier) -> None:
    texts = ["the film was good and great", "the film was bad and awful", "lovely superb acting"]
    proba = fitted.predict_proba(texts)
    assert proba.shape == (3, 2) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert fitted.classes_ == ["0", "1"]
    assert fitted.predict(texts) == [fitted.classes_[i] for i in proba.argmax(axis=1)]
    assert fitted.predict(texts) == ["1", "0", "1"]


def test_predict_keeps_input_order_across_length_sorted_batches(fitted: TextClassifier) -> None:
    texts = [t for _, t in make_rows(20, seed=5)]
    texts[3] = texts[3] + " very very very really quite"  # lengths differ: batches are sorted by length
    proba = fitted.predict_proba(texts)
    one_by_one = np.vstack([fitted.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(proba, one_by_one, atol=1e-5)


def test_save_load_round_trip(fitted: TextClassifier, tmp_path: Path) -> None:
    texts = ["good film", "awful plot"]
    save_artifact(fitted, tmp_path / "model", tar=True)
    for source in (tmp_path / "model", tmp_path / "model.tar.gz"):
        loaded = TextClassifier.load(source)
        np.testing.assert_allclose(loaded.predict_proba(texts), fitted.predict_proba(texts), atol=1e-6)
        assert loaded.classes_ == fitted.classes_ and loaded.best_epoch_ == fitted.best_epoch_


def test_manifest_records_the_run(fitted: TextClassifier, tiny_bert: Path, tmp_path: Path, channel: Path) -> None:
    fitted.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "textfit.json").read_text())
    assert manifest["fine_tuned"] is True
    assert manifest["hyperparameters"]["epochs"] == 6 and manifest["hyperparameters"]["optimizer"] == "adam"
    assert len(manifest["epochs"]) == 6 and 1 <= manifest["best_epoch"] <= 6
    assert manifest["data"]["train"]["rows"] + manifest["data"]["validation"]["rows"] == 48
    assert manifest["data"]["train"]["class_counts"] == {"0": 19, "1": 19}
    # where the data came from, which versions trained it and when: the job's to record, not the estimator's
    assert "sha256" not in manifest["data"]["train"] and "versions" not in manifest
    job = train(channel, model_id=str(tiny_bert), hyperparameters={**FAST, "epochs": "1"}, output=tmp_path / "job")
    recorded = json.loads((tmp_path / "job" / "textfit.json").read_text())
    assert recorded["data"]["train"]["sha256"] == read_channel(channel).fingerprint
    assert recorded["data"]["train"]["file"] == str(channel / "data.csv")
    assert recorded["data"]["validation"]["sha256"] == recorded["data"]["train"]["sha256"]  # a split of it
    assert {"torch", "transformers", "textfit"} <= set(recorded["versions"]) and recorded["created"]
    assert job.manifest_["versions"] == recorded["versions"]


def test_fit_from_a_path_or_a_tarball_still_works_deprecated(fitted: TextClassifier, tmp_path: Path,
                                                              channel: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"fit\(path\) is deprecated"):
        clf = TextClassifier(fitted.manifest_["base_model"], {**FAST, "epochs": "1"}).fit(channel)
    assert clf.manifest_["data"]["train"]["rows"] == 38
    save_artifact(fitted, tmp_path / "first", tar=True)
    with pytest.warns(DeprecationWarning, match=r"init_model=<tarball>\) is deprecated"):
        more = TextClassifier(hyperparameters={**FAST, "epochs": "1"},
                              init_model=tmp_path / "first.tar.gz").fit(read_channel(channel))
    assert more.classes_ == fitted.classes_
    with pytest.warns(DeprecationWarning, match=r"save\(tar=..., onnx=...\) is deprecated"):
        fitted.save(tmp_path / "with-graph", onnx="fp32")
    assert (tmp_path / "with-graph" / "onnx" / "model.onnx").is_file()
    assert "onnx/model.onnx" in json.loads((tmp_path / "with-graph" / "textfit.json").read_text())["files"]
    fitted.save(tmp_path / "plain")  # the estimator's own: the model alone
    assert not (tmp_path / "plain" / "onnx").exists() and not (tmp_path / "plain" / "README.md").exists()


def test_hugging_face_pipeline_loads_the_artifact(fitted: TextClassifier, tmp_path: Path) -> None:
    from transformers import pipeline

    fitted.save(tmp_path / "model")
    pipe = pipeline("text-classification", model=str(tmp_path / "model"))
    out = pipe(["the film was good and great"])
    assert out[0]["label"] == fitted.predict(["the film was good and great"])[0]
    assert out[0]["score"] == pytest.approx(float(fitted.predict_proba(["the film was good and great"]).max()), abs=1e-4)


def test_names_and_one_to_n_labels_carry_into_predictions(tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "d" / "data.csv", make_rows(48, labels=(1, 2)))
    (tmp_path / "d" / "labels_info.json").write_text('{"1": "negative", "2": "positive"}')
    clf = TextClassifier(str(tiny_bert), {**FAST, "epochs": "6"}).fit(read_channel(tmp_path / "d"))
    assert clf.classes_ == ["negative", "positive"] and clf.label_values_ == [1, 2]
    assert clf.predict(["good great lovely film"]) == ["positive"]
    assert clf.model_.config.id2label == {0: "negative", 1: "positive"}


def test_string_labels(tiny_bert: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", make_rows(48, labels=("neg", "pos")))
    clf = TextClassifier(str(tiny_bert), FAST).fit(read_channel(tmp_path / "data.csv"))
    assert clf.classes_ == ["neg", "pos"]


def test_validation_channel_is_used_whole(tiny_bert: Path, channel: Path, tmp_path: Path) -> None:
    val = write_csv(tmp_path / "val" / "data.csv", make_rows(10, seed=9))
    clf = TextClassifier(str(tiny_bert), FAST).fit(read_channel(channel), validation=read_channel(val.parent))
    assert clf.manifest_["data"]["train"]["rows"] == 48 and clf.manifest_["data"]["validation"]["rows"] == 10


def test_incremental_training_keeps_the_head(fitted: TextClassifier, tmp_path: Path, channel: Path) -> None:
    save_artifact(fitted, tmp_path / "first", tar=True)
    first_proba = fitted.predict_proba(["good film"])
    more = train(channel, hyperparameters={**FAST, "epochs": "1", "learning_rate": "1e-6"},
                 model=tmp_path / "first.tar.gz")
    # Auto keeps the trained head: one tiny step cannot move a well-trained model far
    np.testing.assert_allclose(more.predict_proba(["good film"]), first_proba, atol=0.05)
    assert more.manifest_["initialized_from"].endswith("first.tar.gz")
    assert more.model_id_ == fitted.model_id_


def test_incremental_training_with_new_classes_is_refused(fitted: TextClassifier, tmp_path: Path) -> None:
    fitted.save(tmp_path / "first")
    write_csv(tmp_path / "new" / "data.csv", make_rows(20, labels=(0, 5)))
    with pytest.raises(DataError, match="label 5 is not among the classes of the model being trained further"):
        TextClassifier(hyperparameters=FAST, init_model=tmp_path / "first").fit(read_channel(tmp_path / "new"))


def test_reinitialized_head_accepts_new_classes(fitted: TextClassifier, tmp_path: Path) -> None:
    fitted.save(tmp_path / "first")
    write_csv(tmp_path / "new" / "data.csv", make_rows(30, labels=("a", "b")))
    clf = TextClassifier(hyperparameters={**FAST, "reinitialize_top_layer": "True"},
                         init_model=tmp_path / "first").fit(read_channel(tmp_path / "new"))
    assert clf.classes_ == ["a", "b"]


def test_keeping_a_head_that_a_pretrained_encoder_lacks_is_an_error(tiny_bert: Path, channel: Path) -> None:
    with pytest.raises(HyperparameterError, match="reinitialize_top_layer=False needs a fine-tuned textfit model"):
        TextClassifier(str(tiny_bert), {**FAST, "reinitialize_top_layer": "False"}).fit(read_channel(channel))


def test_unfitted_and_wrong_input() -> None:
    with pytest.raises(TextfitError, match="not fitted yet"):
        TextClassifier().predict(["x"])


def test_single_string_is_refused(fitted: TextClassifier) -> None:
    with pytest.raises(DataError, match="wrap it"):
        fitted.predict_proba("the film")  # type: ignore[arg-type]


def test_fit_on_texts_and_labels_in_memory(tiny_bert: Path, tmp_path: Path) -> None:
    rows = make_rows(48)
    texts, labels = [t for _, t in rows], ["pos" if y else "neg" for y, _ in rows]
    clf = TextClassifier(str(tiny_bert), {**FAST, "epochs": "8"}).fit(texts, labels)
    assert clf.classes_ == ["neg", "pos"]
    assert clf.predict(["good great film", "bad awful plot"]) == ["pos", "neg"]
    assert clf.manifest_["data"]["train"]["rows"] == 38  # 20% held out for validation
    val = make_rows(10, seed=5)
    with_val = TextClassifier(str(tiny_bert), {**FAST, "epochs": "1"}).fit(
        texts, labels, validation=([t for _, t in val], ["pos" if y else "neg" for y, _ in val]))
    assert with_val.manifest_["data"]["validation"]["rows"] == 10


@pytest.mark.parametrize(("texts", "labels", "message"), [
    (["good", "bad"], ["a"], "2 texts but 1 labels"),
    (["good", ""], ["a", "b"], "row 2: the text is empty"),
    (["good", 3], ["a", "b"], "row 2: the text is not a string"),
    (["good", "bad"], ["a", 1.5], "row 2: label 1.5 is neither an integer nor a string"),
])
def test_fit_in_memory_checks_its_input(tiny_bert: Path, texts: list[object], labels: list[object],
                                        message: str) -> None:
    with pytest.raises(DataError, match=message):
        TextClassifier(str(tiny_bert), FAST).fit(texts, labels)  # type: ignore[arg-type]


def test_a_channel_with_labels_is_refused(tiny_bert: Path, channel: Path) -> None:
    with pytest.raises(DataError, match="labels come with texts in memory"):
        TextClassifier(str(tiny_bert), FAST).fit(read_channel(channel), ["a", "b"])


def test_load_then_save_keeps_every_file(tiny_artifact: Path, tmp_path: Path) -> None:
    save_artifact(TextClassifier.load(tiny_artifact), tmp_path / "again")  # the job's artifact: reports too
    assert {p.name for p in (tmp_path / "again").iterdir()} == {p.name for p in tiny_artifact.iterdir()}
    assert TextClassifier.load(tmp_path / "again").validation_report_ == TextClassifier.load(
        tiny_artifact).validation_report_
