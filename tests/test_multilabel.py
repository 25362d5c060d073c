"""Multi-label classification end to end: texts with any number of labels, from data.csv to the server."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE
from textfit import TextClassifier
from textfit.data.channels import read_channel
from textfit.errors import DataError, HyperparameterError
from textfit.jobs.train import save_artifact, train

HP = {"epochs": "40", "batch_size": "8", "learning_rate": "0.002", "optimizer": "adamw", "precision": "fp32",
      "multi_label": "True", "training_recipe": "finetune", "freeze_token_embeddings": "False",
      "class_weights": "none"}  # conftest.FAST; unweighted, as the tests of what a label decides were written for
PLAIN = [w for w in NEUTRAL if w != "plot"]


def make_multi_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Labels given by the words a text holds: "good" (a positive word), "bad" (a negative word), "plot" (the
    word plot); some rows have two or three labels, some none."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [name for name, on in (("good", i % 2 == 0), ("bad", i % 3 == 0), ("plot", i % 5 == 0)) if on]
        words = rng.sample(PLAIN, 4)
        words += rng.sample(POSITIVE, 1) if "good" in labels else []
        words += rng.sample(NEGATIVE, 1) if "bad" in labels else []
        words += ["plot"] if "plot" in labels else []
        rng.shuffle(words)
        rows.append(("|".join(labels), " ".join(words)))
    return rows


def write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path.parent


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TextClassifier, Path]:
    root = tmp_path_factory.mktemp("multi")
    clf = TextClassifier(str(tiny_bert), HP).fit(read_channel(write(root / "train" / "data.csv", make_multi_rows(400)), multi_label=True))
    return clf, save_artifact(clf, root / "model")


# ------------------------------------------------------------------------------------ data


def test_label_fields_are_sets(tmp_path: Path) -> None:
    data = write(tmp_path / "d" / "data.csv", [("bug | billing", "a"), ("", "b"), ("bug|bug", "c"), ("3|10", "d")])
    channel = read_channel(data, multi_label=True)
    assert channel.labels == [("bug", "billing"), (), ("bug",), ("3", "10")]


@pytest.mark.parametrize(("rows", "message"), [
    ([("a||b", "x"), ("a", "y")], "line 1: the label field 'a||b' has an empty label name"),
    ([("a|", "x"), ("a", "y")], "line 1: the label field 'a|' has an empty label name"),
    ([("labels", "text"), ("a", "y")], "line 1: this looks like a header row"),
])
def test_bad_label_fields_name_the_line(tmp_path: Path, rows: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_channel(write(tmp_path / "d" / "data.csv", rows), multi_label=True)


def test_a_delimiter_in_single_label_data_suggests_multi_label(tiny_bert: Path, tmp_path: Path) -> None:
    data = write(tmp_path / "d" / "data.csv", make_multi_rows(20))
    with pytest.raises(DataError, match=r"line 1: label 'good\|bad\|plot' holds '\|'; for several labels per text "
                                        "set multi_label=True"):
        train(data, model_id=str(tiny_bert), hyperparameters={k: v for k, v in HP.items() if k != "multi_label"})


def test_a_validation_label_unseen_in_training_is_an_error(tiny_bert: Path, tmp_path: Path) -> None:
    train_file = write(tmp_path / "t" / "data.csv", make_multi_rows(30))
    val = write(tmp_path / "v" / "data.csv", [("good|surprise", "good film"), ("bad", "bad film")])
    with pytest.raises(DataError, match=r"v/data.csv, line 1: label 'surprise' is not among the labels"):
        TextClassifier(str(tiny_bert), HP).fit(read_channel(train_file, multi_label=True),
                                               validation=read_channel(val, multi_label=True))


def test_another_delimiter(tmp_path: Path) -> None:
    data = write(tmp_path / "d" / "data.csv", [("a;b", "x"), ("b", "y")])
    assert read_channel(data, multi_label=True, delimiter=";").labels == [("a", "b"), ("b",)]


# ------------------------------------------------------------------------------------ training and predictions


def test_training_learns_the_labels_and_chooses_thresholds(trained: tuple[TextClassifier, Path]) -> None:
    clf, folder = trained
    assert clf.classes_ == ["bad", "good", "plot"]
    report = clf.validation_report_
    # A constant answer scores at most 0.51 here (every label on); this random 2-layer encoder reaches 0.78-0.96
    # over seeds, as dropout's draws vary: the bound holds for any seed, not for a lucky one.
    assert report is not None and report["micro_f1"] >= 0.75, report
    thresholds = json.loads((folder / "textfit.json").read_text())["thresholds"]
    assert set(thresholds) == {"bad", "good", "plot"} and thresholds == dict(zip(clf.classes_, clf.thresholds_))
    assert json.loads((folder / "config.json").read_text())["problem_type"] == "multi_label_classification"
    held_out = make_multi_rows(90, seed=7)
    texts, truth = [t for _, t in held_out], [sorted(lab.split("|")) if lab else [] for lab, _ in held_out]
    predicted = [sorted(labels) for labels in clf.predict(texts)]
    # Exact sets, on rows never seen. The most frequent set (none) is 8 rows in 30, so a constant answer scores
    # at most 0.27; the random encoder learns all three labels on some seeds (0.78-1.0) and two of them on
    # others (0.5-0.6: 3 of 6 seeds of a throwaway sweep; 80 epochs still left 1 of 12), so the bound is what
    # any seed reaches.
    assert np.mean([p == t for p, t in zip(predicted, truth)]) >= 0.45
    proba = clf.predict_proba(texts)
    assert proba.shape == (90, 3) and not np.allclose(proba.sum(axis=1), 1.0)  # independent sigmoids
    record = clf.classify(texts[:1])[0]
    expected = [c for c, p, t in zip(clf.classes_, record["probabilities"], clf.thresholds_) if p > t]
    assert record["predicted_labels"] == expected
    assert record["predicted_label"] == clf.classes_[int(np.argmax(record["probabilities"]))]


def test_thresholds_are_applied_not_0_5(trained: tuple[TextClassifier, Path]) -> None:
    clf, _ = trained
    text = ["the film was good"]
    proba = clf.predict_proba(text)[0]
    clf_copy = TextClassifier.load(trained[1])
    clf_copy.thresholds_ = [float(p) + 1e-6 for p in proba]  # just above each probability: nothing predicted
    assert clf_copy.predict(text) == [[]]
    clf_copy.thresholds_ = [float(p) - 1e-6 for p in proba]  # just below: everything
    assert sorted(clf_copy.predict(text)[0]) == ["bad", "good", "plot"]


def test_the_saved_model_round_trips_and_onnx_agrees(trained: tuple[TextClassifier, Path]) -> None:
    clf, folder = trained
    texts = [text for _, text in make_multi_rows(20, seed=9)]
    loaded = TextClassifier.load(folder)
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-6)
    onnx = TextClassifier.load(folder, backend="onnx")
    np.testing.assert_allclose(onnx.predict_proba(texts), clf.predict_proba(texts), atol=1e-4)
    assert onnx.predict(texts) == clf.predict(texts)


def test_every_response_shape(trained: tuple[TextClassifier, Path]) -> None:
    clf, _ = trained
    texts = ["the good film and the plot", "a bad film"]
    expected = clf.classify(texts)
    with TestClient(create_app(clf)) as client:
        one = client.post("/invocations", content=texts[0], headers={"Accept": "application/json;verbose"}).json()
        assert one["predicted_labels"] == expected[0]["predicted_labels"] and set(one) == {
            "probabilities", "labels", "predicted_label", "predicted_labels"}
        np.testing.assert_allclose(one["probabilities"], expected[0]["probabilities"], atol=1e-6)
        csv_body = client.post("/invocations", content=json.dumps(texts),
                               headers={"Content-Type": "application/json", "Accept": "text/csv;verbose"}).text
        lines = csv_body.strip().splitlines()
        assert [line.split(",")[0] for line in lines] == ["|".join(e["predicted_labels"]) for e in expected]
        plain = client.post("/invocations", content="a bad film").json()
        assert set(plain) == {"probabilities"} and len(plain["probabilities"]) == 3
        lines_out = client.post("/invocations", content="\n".join(texts), headers={
            "Content-Type": "text/csv", "Accept": "application/jsonlines;verbose"}).text.strip().splitlines()
        assert [json.loads(x)["predicted_labels"] for x in lines_out] == [e["predicted_labels"] for e in expected]


def test_predict_and_evaluate_files(trained: tuple[TextClassifier, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from textfit.cli import main

    _, folder = trained
    data = write(tmp_path / "test" / "data.csv", make_multi_rows(60, seed=5))
    assert main(["predict", "--model", str(folder), "--input", str(data / "data.csv"), "--output",
                 str(tmp_path / "out.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    exact = np.mean([sorted(r["predicted_labels"]) == r["labels_true"] for r in records])
    assert len(records) == 60 and exact >= 0.45  # see test_training_learns_the_labels_and_chooses_thresholds
    assert main(["evaluate", "--model", str(folder), "--data", str(data), "--output", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "micro avg" in printed and "samples avg" in printed and "Hamming loss" in printed
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["subset_accuracy"] == pytest.approx(exact)
    assert (tmp_path / "report" / "per_label.png").is_file()


def test_incremental_training_keeps_the_labels_and_refuses_new_ones(trained: tuple[TextClassifier, Path],
                                                                     tmp_path: Path) -> None:
    _, folder = trained
    data = write(tmp_path / "more" / "data.csv", make_multi_rows(40, seed=3))
    further = TextClassifier(hyperparameters={**HP, "epochs": "1"}, init_model=folder).fit(read_channel(data, multi_label=True))
    assert further.classes_ == ["bad", "good", "plot"] and further.multi_label_
    other = write(tmp_path / "other" / "data.csv", [("good|twist", "good film twist"), ("bad", "bad film")] * 10)
    with pytest.raises(DataError, match="label 'twist' is not among the labels of the model being trained further"):
        TextClassifier(hyperparameters={**HP, "epochs": "1"}, init_model=folder).fit(read_channel(other, multi_label=True))
    with pytest.raises(HyperparameterError, match="is a multi-label model; train it further with multi_label=True"):
        train(write(tmp_path / "single" / "data.csv", [("good", "good film"), ("bad", "bad film")] * 10),
              hyperparameters={"multi_label": "False"}, model=folder)


def test_top_layer_training_with_cached_features(tiny_bert: Path, tmp_path: Path) -> None:
    data = write(tmp_path / "d" / "data.csv", make_multi_rows(120))
    clf = TextClassifier(str(tiny_bert), {**HP, "train_only_on_top_layer": "True", "epochs": "3"}).fit(read_channel(data, multi_label=True))
    assert clf.history_[-1]["val_f1_micro"] is not None and clf.multi_label_


def test_epoch_lines_carry_f1_in_both_forms(tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    import re

    TextClassifier(str(tiny_bert), {**HP, "epochs": "2"}).fit(read_channel(write(tmp_path / "d" / "data.csv",
                                                                    make_multi_rows(60)), multi_label=True))
    assert re.search(r"val_f1_micro: [0-9.]+ - val_f1_macro: [0-9.]+", caplog.text)
    assert re.search(r"epoch=2 val_loss=[0-9.]+ val_accuracy=[0-9.]+ val_f1_micro=[0-9.]+ val_f1_macro=[0-9.]+",
                     caplog.text)
    assert "Setting weights to model with maximum val_f1_micro at epoch" in caplog.text


def test_fit_from_memory_with_label_lists(tiny_bert: Path) -> None:
    rows = make_multi_rows(60)
    texts, labels = [t for _, t in rows], [lab.split("|") if lab else [] for lab, _ in rows]
    clf = TextClassifier(str(tiny_bert), {**HP, "epochs": "2"}).fit(texts, labels)
    assert clf.classes_ == ["bad", "good", "plot"]


from textfit.serving.server import create_app  # noqa: E402 - after the fixtures that do not need it


def test_tuning_maximises_micro_f1(tiny_bert: Path, tmp_path: Path) -> None:
    from textfit.jobs.tuning import tune

    data = write(tmp_path / "d" / "data.csv", make_multi_rows(80))
    ranges = {"CategoricalParameterRanges": [{"Name": "learning_rate", "Values": ["0.002", "0.005"]}]}
    fixed = {k: v for k, v in HP.items() if k != "learning_rate"}
    result = tune(data, model_id=str(tiny_bert), output=tmp_path / "t", max_jobs=2, ranges=ranges, strategy="grid",
                  hyperparameters={**fixed, "epochs": "3"}, objective="val_f1_micro")
    best = json.loads((tmp_path / "t" / "best" / "textfit.json").read_text())
    kept = best["epochs"][best["best_epoch"] - 1]
    assert result.best_val_accuracy == pytest.approx(kept["val_f1_micro"])
    assert max(float(r["val_f1_micro"]) for r in result.trials) == pytest.approx(result.best_val_accuracy)
    with pytest.raises(HyperparameterError, match="is a multi-label metric"):
        tune(data, model_id=str(tiny_bert), output=tmp_path / "u", ranges=ranges, objective="val_f1_micro",
             hyperparameters={"epochs": "1"})


def test_two_workers_match_one_process(tmp_path: Path) -> None:
    from tests.conftest import build_tiny_bert, finish, free_port, start_textfit

    model = build_tiny_bert(tmp_path / "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = write(tmp_path / "d" / "data.csv", make_multi_rows(52))
    args = ["train", "--train", str(data), "--model-id", str(model),
            *[a for k, v in {**HP, "epochs": "3", "batch_size": "10", "dropout_rate": "0"}.items()
              for a in ("--hp", f"{k}={v}")]]
    two = ["--nproc-per-node", "2", "--master-port", str(free_port())]
    runs = [finish(p) for p in [start_textfit(*args, "--output", str(tmp_path / name), *workers)
                                for name, workers in (("one", []), ("two", two))]]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    a = json.loads((tmp_path / "one" / "textfit.json").read_text())
    b = json.loads((tmp_path / "two" / "textfit.json").read_text())
    for x, y in zip(a["epochs"], b["epochs"], strict=True):
        assert y["val_f1_micro"] == pytest.approx(x["val_f1_micro"], abs=1e-9)
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4)
    assert a["thresholds"] == pytest.approx(b["thresholds"], abs=1e-3)


def test_the_folder_loads_in_a_plain_transformers_pipeline(trained: tuple[TextClassifier, Path]) -> None:
    from transformers import pipeline

    clf, folder = trained
    texts = ["the good film and the plot", "a bad film"]
    scores = pipeline("text-classification", model=str(folder), top_k=None)(texts)
    for text_scores, ours in zip(scores, clf.predict_proba(texts)):
        by_label = {s["label"]: s["score"] for s in text_scores}
        np.testing.assert_allclose([by_label[c] for c in clf.classes_], ours, atol=1e-5)  # sigmoid per label
    card = (folder / "README.md").read_text()
    assert "| label | threshold |" in card and f"{clf.thresholds_[0]:.3f}" in card


def test_balanced_class_weights_become_positive_weights_per_label() -> None:
    import torch

    from textfit.training.loop import batch_loss, class_weights

    rows = [[0], [0, 1], [], [0], [2]]  # label 0 on 3 of 5 rows, label 1 on 1, label 2 on 1
    weights = class_weights("balanced", rows, 3, multi_label=True)
    assert weights is not None
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 4.0, 4.0]))  # negatives / positives
    logits, labels = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    plain, _ = batch_loss(logits, labels)
    weighted, _ = batch_loss(logits, labels, weights)
    ln2 = float(torch.log(torch.tensor(2.0)))
    assert float(plain) == pytest.approx(2 * ln2)  # every BCE term is ln 2 at logit 0: 3 labels, mean, 2 rows
    assert float(weighted) == pytest.approx(ln2 * ((2 / 3 + 1 + 4) / 3 + 1))  # positives scaled by their weight


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_each_predicted_label_is_explained_by_its_own_words(trained: tuple[TextClassifier, Path], method: str
                                                            ) -> None:
    clf, _ = trained
    record = clf.explain(["the film superb awful plot was quite"], method=method)[0]
    assert set(record["explanation"]) == set(record["predicted_labels"]) == {"good", "bad", "plot"}
    if method == "occlusion":  # gradients on this tiny model, trained hard, are too steep to rank by (test_explain)
        # "plot" is the one label its word alone decides: in make_multi_rows a row's word count tells the others too
        plot = max(record["explanation"]["plot"], key=lambda w: w["score"])
        assert plot["word"] == "plot" and plot["score"] > 1, record["explanation"]["plot"]
    for label, words in record["explanation"].items():
        assert [w["word"] for w in words] == ["the", "film", "superb", "awful", "plot", "was", "quite"], label
        assert all(np.isfinite(w["score"]) for w in words) and any(w["score"] != 0 for w in words), label
    every = clf.explain(["a very quite movie"], method=method, all_labels=True)[0]
    assert every["predicted_labels"] == [] and every["explanation"] == {}
    assert set(every["explanations"]) == {"good", "bad", "plot"}


def test_the_endpoint_explains_every_predicted_label(trained: tuple[TextClassifier, Path]) -> None:
    from textfit.predictor import Predictor

    _, folder = trained
    with TestClient(create_app(Predictor.load(folder))) as c:
        answer = c.post("/invocations", content=b"the film superb awful plot was quite",
                        headers={"Accept": "application/json;verbose;explain"}).json()
    assert set(answer["explanation"]) == {"good", "bad", "plot"}
    assert max(answer["explanation"]["plot"], key=lambda w: w["score"])["word"] == "plot"
