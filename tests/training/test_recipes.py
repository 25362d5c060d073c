"""The small-data recipe: chosen (and logged) on small data and not on large, forced either way, and its artifact
works everywhere an artifact does, for every encoder family."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tests.conftest import FAMILIES, FAST, build_tiny_family, make_rows, write_csv
from tests.test_multilabel import make_multi_rows, write
from textfit import TextClassifier
from textfit.data import batching
from textfit.data.channels import ClassSet, read_channel
from textfit.hyperparameters import Hyperparameters
from textfit.jobs.train import save_artifact
from textfit.model import architectures
from textfit.predictor import load_torch_model as _load_model
from textfit.training import recipes

# The tiny random encoders learn from scratch: a large learning rate, as FAST has, for the fine-tuning steps.
FEWSHOT = {**FAST, "training_recipe": "fewshot"}
AUTO = {k: v for k, v in FAST.items() if k != "training_recipe"}


def _channel(folder: Path, n: int, seed: int = 0) -> Path:
    write_csv(folder / "data.csv", make_rows(n, seed))
    return folder


# ------------------------------------------------------------------------------------------ the choice


def test_auto_rule_counts_rows_per_class() -> None:
    hp = Hyperparameters()
    small = recipes.choose(hp, set(), 40, 5, validation=False, new_head=True)
    assert small.name == "fewshot" and "8 a class" in small.reason
    assert not small.hold_out
    # the step budget sets the epochs: 40 rows in batches of 16 are 3 steps an epoch
    assert small.hp.epochs == -(-recipes.FEWSHOT_STEPS // 3)
    assert (small.hp.optimizer, small.hp.learning_rate, small.hp.batch_size) == ("adamw", 3e-5, 16)
    assert recipes.FEWSHOT_BELOW_ROWS_PER_CLASS == 200
    edge = recipes.choose(hp, set(), 200 * 5 - 1, 5, validation=False, new_head=True)
    assert edge.name == "fewshot"
    large = recipes.choose(hp, set(), 200 * 5, 5, validation=False, new_head=True)
    assert large.name == "finetune" and large.hp == hp and large.hold_out


def test_what_the_user_gives_is_kept_and_asking_for_validation_holds_rows_out() -> None:
    hp = Hyperparameters(epochs=3, learning_rate=1e-4, validation_split_ratio=0.25)
    given = {"epochs", "learning_rate", "validation_split_ratio"}
    chosen = recipes.choose(hp, given, 40, 2, validation=False, new_head=True)
    assert (chosen.hp.epochs, chosen.hp.learning_rate, chosen.hp.validation_split_ratio) == (3, 1e-4, 0.25)
    assert chosen.hold_out
    assert recipes.choose(Hyperparameters(), set(), 40, 2, validation=True, new_head=True).hold_out
    forced = recipes.choose(Hyperparameters(training_recipe="finetune"), {"training_recipe"}, 40, 2,
                            validation=False, new_head=True)
    assert forced.name == "finetune" and forced.hp.epochs == 10
    forced = recipes.choose(Hyperparameters(training_recipe="fewshot"), {"training_recipe"}, 10_000, 2,
                            validation=False, new_head=True)
    assert forced.name == "fewshot" and forced.hp.epochs == 1  # 10,000 rows: 625 steps, over the budget in one


def test_auto_chooses_fewshot_on_a_small_channel_and_says_why(tiny_bert: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="textfit"):
        clf = TextClassifier(str(tiny_bert), {**AUTO, "epochs": "2"}).fit(read_channel(_channel(tmp_path / "small", 40)))
    assert ("Training recipe: fewshot (auto: 40 labelled rows for 2 classes (20 a class, fewer than 200)); 40 rows "
            "trained\n") in caplog.text
    assert "Not used by the small-data recipe: dropout_rate" in caplog.text
    assert "Linear probe on the frozen encoder's features" in caplog.text
    assert clf.manifest_["training_recipe"]["name"] == "fewshot"
    assert clf.manifest_["data"]["train"]["rows"] == 40 and clf.manifest_["data"]["validation"] is None
    assert [m["val_accuracy"] for m in clf.history_] == [None, None]
    assert isinstance(clf.model_, architectures.MeanPooled)


def test_sagemakers_tuner_gets_its_validation_metric_from_the_small_data_recipe(tiny_bert: Path, tmp_path: Path,
                                                                                 caplog: pytest.LogCaptureFixture
                                                                                 ) -> None:
    hp = {**AUTO, "epochs": "1", "_tuning_objective_metric": "validation:accuracy"}
    with caplog.at_level(logging.INFO, logger="textfit"):
        clf = TextClassifier(str(tiny_bert), hp).fit(read_channel(_channel(tmp_path / "small", 40)))
    assert clf.manifest_["training_recipe"]["name"] == "fewshot"
    assert clf.manifest_["data"]["validation"]["rows"] == 8
    assert "; 32 rows trained, 8 held out for validation" in caplog.text
    assert re.search(r"val_accuracy=[0-9.]+", caplog.text)


def test_auto_chooses_finetune_on_a_large_channel(tiny_bert: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="textfit"):
        clf = TextClassifier(str(tiny_bert), {**AUTO, "epochs": "1"}).fit(read_channel(_channel(tmp_path / "large", 400)))
    # the choice is drawn on the labelled rows, and the line says how many of them train (the rest validate)
    assert ("Training recipe: finetune (auto: 400 labelled rows for 2 classes (200 a class, 200 or more)); 320 rows "
            "trained, 80 held out for validation") in caplog.text
    assert "small-data" not in caplog.text
    assert clf.manifest_["training_recipe"]["name"] == "finetune"
    assert clf.manifest_["data"]["train"]["rows"] == 320  # the 20% split, as SageMaker holds out
    assert not isinstance(clf.model_, architectures.MeanPooled)
    assert "textfit_pooling" not in clf.model_.config.to_dict()


def test_forcing_finetune_on_small_data_and_fewshot_on_large(tiny_bert: Path, tmp_path: Path) -> None:
    small = TextClassifier(str(tiny_bert), {**FAST, "epochs": "1"}).fit(read_channel(_channel(tmp_path / "small", 40)))
    assert small.manifest_["training_recipe"]["name"] == "finetune" and small.history_[0]["val_accuracy"] is not None
    large = TextClassifier(str(tiny_bert), {**FEWSHOT, "epochs": "1"}).fit(read_channel(_channel(tmp_path / "large", 240)))
    assert large.manifest_["training_recipe"]["name"] == "fewshot"
    assert large.manifest_["data"]["train"]["rows"] == 240


# ------------------------------------------------------------------------------------------ the probe


def test_the_probe_is_scikit_learns_logistic_regression_in_the_model(tiny_bert: Path) -> None:
    """The head starts as the L2-regularised logistic regression of the frozen features (C from
    regularizers_l2), and the model computes exactly it."""
    from transformers import AutoTokenizer

    classes = ClassSet(values=[0, 1], names=["0", "1"])
    model = _load_model(str(tiny_bert), False, classes, mean_pooled=True)
    assert isinstance(model, architectures.MeanPooled)
    rows = make_rows(40)
    data = batching.encode(AutoTokenizer.from_pretrained(tiny_bert), [t for _, t in rows], 32, [y for y, _ in rows])
    hp = Hyperparameters(precision="fp32", regularizers_l2=0.01)
    accuracy = recipes.fit_probe(model, data, hp)
    inputs = batching.collate(data, list(range(len(data)))).inputs
    model.eval()
    with torch.inference_mode():
        logits = model(**inputs).logits
        feats = architectures.features(model, inputs).numpy()
    reference = LogisticRegression(C=1 / (2 * 0.01 * len(rows)), max_iter=2000).fit(feats, [y for y, _ in rows])
    np.testing.assert_allclose((logits[:, 1] - logits[:, 0]).numpy(), reference.decision_function(feats), atol=1e-3)
    truth = torch.tensor([y for y, _ in rows])
    assert accuracy == pytest.approx(float(((logits[:, 1] > logits[:, 0]).long() == truth).float().mean()))
    assert accuracy >= 0.9


def _clusters(n_classes: int, per_class: int, dim: int = 16, draw: int = 0) -> tuple[np.ndarray, list[int]]:
    """L2-normalised features around one random direction a class (the same directions for every `draw`), as
    a sentence encoder's."""
    centres = np.random.default_rng(0).normal(size=(n_classes, dim))
    labels = [c for c in range(n_classes) for _ in range(per_class)]
    feats = centres[labels] + 0.5 * np.random.default_rng(draw + 1).normal(size=(len(labels), dim))
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), labels


def test_the_class_mean_head_separates_classes_and_keeps_their_priors() -> None:
    feats, labels = _clusters(6, 10)
    weight, bias = recipes._centroid_weights(feats, labels, 7, False)  # class 6 has no rows
    held_out, truth = _clusters(6, 10, draw=1)
    assert np.mean((held_out @ weight.T + bias).argmax(1) == np.array(truth)) >= 0.95
    np.testing.assert_allclose(np.linalg.norm(weight[:6], axis=1), recipes.CENTROID_SCALE, rtol=1e-5)
    assert not weight[6].any() and bias[6] < bias[0]  # a class without rows: no direction, a lower prior
    # imbalance moves the priors; balanced class weights put them back level
    skewed = labels + [0] * 30
    feats2 = np.vstack([feats, feats[:1].repeat(30, axis=0)])
    _, b = recipes._centroid_weights(feats2, skewed, 6, False)
    assert b[0] > b[1] + 1.0
    counts = np.bincount(skewed)
    _, level = recipes._centroid_weights(feats2, skewed, 6, False, class_weights=len(skewed) / (6 * counts))
    np.testing.assert_allclose(level, level[0], atol=1e-6)


def test_the_class_mean_head_for_multi_label_data_puts_zero_between_positives_and_negatives() -> None:
    feats, single = _clusters(4, 12)
    labels = [[c] if c != 3 else [2, 3] for c in single]
    weight, bias = recipes._centroid_weights(feats, labels, 5, True)  # label 4: never on
    logits = feats @ weight.T + bias
    truth = np.zeros_like(logits, dtype=bool)
    for i, row in enumerate(labels):
        truth[i, row] = True
    assert ((logits[:, :4] > 0) == truth[:, :4]).mean() >= 0.95
    assert not weight[4].any() and bias[4] < -3  # a label never on: its prior, no weights


def test_the_probe_is_not_left_empty_by_a_thousand_classes() -> None:
    """Sentence embeddings share one direction and differ a little by class; with a thousand classes of four
    rows, scikit-learn's default tolerance is met at the zero start, and its probe predicts one class for all.
    textfit's tolerance scales with the classes."""
    rng = np.random.default_rng(0)
    n_classes, dim = 1000, 384
    labels = [c for c in range(n_classes) for _ in range(4)]
    feats = rng.normal(size=dim) + 0.3 * rng.normal(size=(n_classes, dim))[labels] + 0.15 * rng.normal(
        size=(len(labels), dim))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)
    c = 1 / (2 * 1e-4 * len(labels))
    assert not LogisticRegression(C=c, max_iter=2000).fit(feats, labels).coef_.any()  # the trap is there
    weight, bias = recipes._probe_weights(feats, labels, n_classes, False, 1e-4, None, 0)
    assert np.mean((feats @ weight.T + bias).argmax(1) == np.array(labels)) >= 0.99


def test_a_probe_that_fits_worse_than_the_class_means_gives_way_to_them(tiny_bert: Path,
                                                                       caplog: pytest.LogCaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever start gets more training rows right is kept: here a probe of zeros (what scikit-learn returns
    when it stops at its start) against the class means of the same features."""
    from transformers import AutoTokenizer

    monkeypatch.setattr(recipes, "_probe_weights", lambda feats, labels, n, *_: (
        np.zeros((n, feats.shape[1]), dtype=np.float32), np.zeros(n, dtype=np.float32)))
    caplog.set_level(logging.INFO, logger="textfit")
    model = _load_model(str(tiny_bert), False, ClassSet(values=[0, 1], names=["0", "1"]), mean_pooled=True)
    rows = make_rows(40)
    data = batching.encode(AutoTokenizer.from_pretrained(tiny_bert), [t for _, t in rows], 32, [y for y, _ in rows])
    accuracy = recipes.fit_probe(model, data, Hyperparameters(precision="fp32"))
    assert accuracy >= 0.9
    assert "Head started from the class means" in caplog.text and "got 0.5000 of the training rows right" in caplog.text
    head = architectures.adapter_for(model).last_layer(model)
    np.testing.assert_allclose(head.weight.norm(dim=1).detach().numpy(), recipes.CENTROID_SCALE, rtol=1e-4)


def test_past_the_probes_budget_the_head_starts_from_the_class_means(tiny_bert: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Many classes: the logistic regression would build rows x classes matrices at every iteration; the
    class means cost one pass. Trained end to end with the real recipe on a channel past the budget."""
    monkeypatch.setattr(recipes, "PROBE_MAX_CELLS", 100)
    caplog.set_level(logging.INFO, logger="textfit")
    clf = TextClassifier(str(tiny_bert), {"epochs": "1", "precision": "fp32"}).fit(read_channel(_channel(tmp_path / "t", 80)))
    assert "Head started from the class means of the frozen encoder's features (80 rows x 2 classes" in caplog.text
    assert "Linear probe" not in caplog.text
    assert clf.manifest_["training_recipe"]["name"] == "fewshot"
    rows = make_rows(40, seed=4)
    assert np.mean([str(p) == str(y) for p, (y, _) in zip(clf.predict([t for _, t in rows]), rows)]) >= 0.75


def test_mean_pooled_model_has_the_wrapped_models_parameters_and_freezes_what_it_does_not_use(
        tmp_path: Path) -> None:
    folder = build_tiny_family("roberta", tmp_path / "roberta")
    classes = ClassSet(values=[0, 1], names=["0", "1"])
    plain = _load_model(str(folder), False, classes)
    pooled = _load_model(str(folder), False, classes, mean_pooled=True)
    assert list(pooled.state_dict()) == list(plain.state_dict())
    trainable = {n for n, p in pooled.named_parameters() if p.requires_grad}
    assert "classifier.out_proj.weight" in trainable and "classifier.dense.weight" not in trainable
    assert {n for n in trainable if not n.startswith("roberta.")} == {"classifier.out_proj.weight",
                                                                        "classifier.out_proj.bias"}


# ------------------------------------------------------------------------------------------ the artifact


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fewshot_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[str, TextClassifier, Path]:
    name = request.param
    root = tmp_path_factory.mktemp(f"fewshot-{name}")
    folder = build_tiny_family(name, root / "encoder")
    # the recipe's own learning rate: the probe on the random encoder's features does the learning here
    clf = TextClassifier(str(folder), {"epochs": "3", "precision": "fp32"}).fit(read_channel(_channel(root / "train", 32)))
    return name, clf, save_artifact(clf, root / "model", onnx="int8")


def test_fewshot_artifact_reloads_exports_and_evaluates_the_same_predictions(
        fewshot_model: tuple[str, TextClassifier, Path]) -> None:
    name, clf, folder = fewshot_model
    assert json.loads((folder / "config.json").read_text())["textfit_pooling"] == "mean"
    assert clf.manifest_["training_recipe"]["name"] == "fewshot"
    texts = [t for _, t in make_rows(24, seed=5)] + ["good", "the film was very very bad and awful"]
    expected = clf.predict_proba(texts)
    reloaded = TextClassifier.load(folder)
    assert isinstance(reloaded.model_, architectures.MeanPooled)
    np.testing.assert_allclose(reloaded.predict_proba(texts), expected, atol=1e-6)
    np.testing.assert_allclose(TextClassifier.load(folder, backend="onnx").predict_proba(texts), expected, atol=1e-4)
    quantized = TextClassifier.load(folder, backend="onnx", quantized=True).predict_proba(texts)
    assert quantized.shape == expected.shape and np.isfinite(quantized).all()
    # the head starts from a probe of these sentiment words: it must tell the held-out rows apart
    truth = [y for y, _ in make_rows(24, seed=5)]
    assert np.mean(expected[:24].argmax(1) == np.array(truth)) >= 0.75, name

    from textfit.jobs.evaluation import evaluate

    report = evaluate(reloaded, write_csv(folder.parent / "heldout" / "data.csv", make_rows(24, seed=5)).parent)
    assert report.accuracy == pytest.approx(np.mean(expected[:24].argmax(1) == np.array(truth)))
    # Serving adds nothing a family changes: the server answers what its classifier's predict_proba does, on ONNX
    # Runtime as on torch (tests/serving/test_onnx_backend.py); each family's mean-pooled graph is checked above.


def test_fewshot_trains_further_keeps_its_head_kind_and_a_new_finetune_head_drops_it(tiny_bert: Path,
                                                                                    tmp_path: Path) -> None:
    first = TextClassifier(str(tiny_bert), {"epochs": "2", "precision": "fp32"}).fit(read_channel(_channel(tmp_path / "t", 32)))
    folder = first.save(tmp_path / "first")
    more = _channel(tmp_path / "more", 24, seed=3)
    further = TextClassifier(hyperparameters={**AUTO, "epochs": "1"}, init_model=folder).fit(read_channel(more))
    assert isinstance(further.model_, architectures.MeanPooled)
    assert further.manifest_["training_recipe"] == {"name": "fewshot", "reason": "auto: 24 labelled rows for 2 "
                                                    "classes (12 a class, fewer than 200)", "head": "mean of the token vectors"}
    own = TextClassifier(hyperparameters={**FAST, "epochs": "1", "reinitialize_top_layer": "True"},
                         init_model=folder).fit(read_channel(more))
    assert not isinstance(own.model_, architectures.MeanPooled)
    saved = own.save(tmp_path / "own")
    assert "textfit_pooling" not in json.loads((saved / "config.json").read_text())


def test_fewshot_calibrates_and_evaluates_on_a_validation_channel(tiny_bert: Path, tmp_path: Path) -> None:
    clf = TextClassifier(str(tiny_bert), {**AUTO, "epochs": "2", "calibrate": "True"}).fit(
        read_channel(_channel(tmp_path / "train", 40)), validation=read_channel(_channel(tmp_path / "val", 20, seed=9)))
    assert clf.manifest_["training_recipe"]["name"] == "fewshot"
    assert all(m["val_accuracy"] is not None for m in clf.history_)
    assert clf.validation_report_ is not None and clf.validation_report_["rows"] == 20
    # The temperature is folded into the mean-pooled head, and it is the one that fits the validation rows best:
    # the served logits sit at the minimum of the validation log loss (neither hotter nor cooler fits better), the
    # unscaled logits (served x temperature) are what the manifest measured before, and the log loss fell.
    rows = make_rows(20, seed=9)
    y = torch.tensor([clf.classes_.index(str(label)) for label, _ in rows])
    served = torch.from_numpy(clf.predict_logits([text for _, text in rows])).double()

    def log_loss(scale: float) -> float:
        return float(torch.nn.functional.cross_entropy(served * scale, y))

    calibration = clf.manifest_["calibration"]
    assert log_loss(1.0) < min(log_loss(1.1), log_loss(1 / 1.1))
    assert log_loss(calibration["temperature"]) == pytest.approx(calibration["log_loss_before"], rel=1e-4)
    assert clf.validation_report_["log_loss"] == pytest.approx(log_loss(1.0), rel=1e-4)
    assert log_loss(1.0) < log_loss(calibration["temperature"]) - 0.005


def test_fewshot_multi_label(tiny_bert: Path, tmp_path: Path) -> None:
    data = write(tmp_path / "train" / "data.csv", make_multi_rows(48))
    hp = {"epochs": "20", "batch_size": "8", "learning_rate": "0.002", "precision": "fp32", "multi_label": "True"}
    clf = TextClassifier(str(tiny_bert), hp).fit(read_channel(data, multi_label=True))
    assert clf.manifest_["training_recipe"]["name"] == "fewshot"
    assert clf.thresholds_ == [0.5, 0.5, 0.5]  # no rows held out to choose them on
    held_out = make_multi_rows(60, seed=11)
    predicted = clf.predict([t for _, t in held_out])
    right = [set(p) == set(filter(None, y.split("|"))) for p, (y, _) in zip(predicted, held_out)]
    assert np.mean(right) >= 0.6


def test_fewshot_multi_label_past_the_label_budget_starts_from_the_class_means(
        tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """One regression a label costs about 0.3 s: with thousands of tags the class means start, and learn."""
    monkeypatch.setattr(recipes, "PROBE_MAX_LABELS", 2)
    caplog.set_level(logging.INFO, logger="textfit")
    data = write(tmp_path / "train" / "data.csv", make_multi_rows(48))
    hp = {"epochs": "20", "batch_size": "8", "learning_rate": "0.002", "precision": "fp32", "multi_label": "True"}
    clf = TextClassifier(str(tiny_bert), hp).fit(read_channel(data, multi_label=True))
    assert "(3 labels: past the 2 the linear probe is fitted on)" in caplog.text
    held_out = make_multi_rows(60, seed=11)
    predicted = clf.predict([t for _, t in held_out])
    right = [set(p) == set(filter(None, y.split("|"))) for p, (y, _) in zip(predicted, held_out)]
    # the most frequent label set holds 8 rows in 30; the tiny random encoder's features are nearly parallel,
    # so class means start it weaker than the probe does (0.6 and more there)
    assert np.mean(right) >= 0.45


def test_tuning_on_small_data_scores_every_trial_on_held_out_rows(tiny_bert: Path, tmp_path: Path) -> None:
    from textfit.jobs.tuning import tune

    _channel(tmp_path / "train", 40)
    result = tune(tmp_path / "train", model_id=str(tiny_bert), output=tmp_path / "t", max_jobs=2,
                  hyperparameters={"epochs": "2", "batch_size": "8", "precision": "fp32"},
                  ranges={"ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.001",
                                                         "MaxValue": "0.01", "ScalingType": "Logarithmic"}]})
    assert [r["state"] for r in result.trials] == ["complete", "complete"]
    best = TextClassifier.load(tmp_path / "t" / "best")
    assert best.manifest_["training_recipe"]["name"] == "fewshot"
    assert best.manifest_["data"]["validation"]["rows"] == 8  # 20% of 40, held out for the score


def test_multi_label_fine_tuning_weighs_positives_and_trains_longer_unless_told_otherwise() -> None:
    hp = Hyperparameters(multi_label=True)
    chosen = recipes.choose(hp, {"multi_label"}, 2000, 10, validation=False, new_head=True)
    assert chosen.name == "finetune" and "multi-label" in chosen.reason
    assert (chosen.hp.class_weights, chosen.hp.epochs) == ("balanced", hp.epochs * recipes.MULTI_LABEL_EPOCHS_FACTOR)
    given = Hyperparameters(multi_label=True, epochs=3, class_weights="none", training_recipe="finetune")
    kept = recipes.choose(given, {"multi_label", "epochs", "class_weights", "training_recipe"}, 40, 10,
                          validation=False, new_head=True)
    assert (kept.hp.class_weights, kept.hp.epochs) == ("none", 3) and "multi-label" not in kept.reason
    single = recipes.choose(Hyperparameters(), set(), 2000, 10, validation=False, new_head=True)
    assert (single.hp.class_weights, single.hp.epochs) == ("none", Hyperparameters().epochs)
