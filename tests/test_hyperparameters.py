from __future__ import annotations

import logging
from dataclasses import fields

import pytest

from textfit.errors import HyperparameterError
from textfit.hyperparameters import Hyperparameters, parse_assignments, parse_hyperparameters, resolve

# README, Hyperparameters: the 19 names and their documented defaults
SAGEMAKER_DEFAULTS = {
    "batch_size": 32, "beta_1": 0.9, "beta_2": 0.999, "dropout_rate": 0.2, "early_stopping": False,
    "early_stopping_min_delta": 0.0, "early_stopping_patience": 5, "epochs": 10, "epsilon": 1e-7,
    "initial_accumulator_value": 0.0001, "learning_rate": 0.001, "momentum": 0.9, "optimizer": "adam",
    "regularizers_l2": 0.0001, "reinitialize_top_layer": "Auto", "rho": 0.95, "train_only_on_top_layer": False,
    "validation_split_ratio": 0.2, "warmup_steps_fraction": 0.1,
}


def test_the_19_sagemaker_hyperparameters_and_defaults() -> None:
    hp = Hyperparameters()
    assert len(SAGEMAKER_DEFAULTS) == 19
    for name, default in SAGEMAKER_DEFAULTS.items():
        assert getattr(hp, name) == default, name
    extras = {f.name for f in fields(Hyperparameters)} - set(SAGEMAKER_DEFAULTS)
    assert extras == {"max_seq_length", "seed", "precision", "class_weights", "calibrate", "multi_label",
                      "label_delimiter", "freeze_token_embeddings", "training_recipe", "long_texts"}
    assert hp.max_seq_length == 128
    assert hp.freeze_token_embeddings is True  # textfit keeps a pretrained token table (README: Speed)


def test_strings_as_sagemaker_sends_them() -> None:
    hp = Hyperparameters.from_strings({"learning_rate": "1e-5", "early_stopping": "True", "epochs": "3",
                                       "train_only_on_top_layer": "false", "reinitialize_top_layer": "auto",
                                       "optimizer": "AdamW", "batch_size": "64.0"})
    assert (hp.learning_rate, hp.early_stopping, hp.epochs) == (1e-5, True, 3)
    assert (hp.train_only_on_top_layer, hp.reinitialize_top_layer, hp.optimizer, hp.batch_size) == (
        False, "Auto", "adamw", 64)
    assert Hyperparameters.from_strings(hp.to_strings()) == hp


def test_aliases_and_v1_dashed_names() -> None:
    parsed = parse_hyperparameters({"train_only_top_layer": "True", "eps": "1e-8", "batch-size": "64",
                                    "adam-learning-rate": "1e-6", "reinitialize-top-layer": "False",
                                    "train-only-top-layer": "True"})
    assert parsed == {"train_only_on_top_layer": True, "epsilon": 1e-8, "batch_size": 64, "learning_rate": 1e-6,
                      "reinitialize_top_layer": "False"}


def test_unknown_names_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="textfit")
    parsed = parse_hyperparameters({"_tuning_objective_metric": "validation:accuracy", "learning_rte": "0.1",
                                    "sagemaker_program": "transfer_learning.py", "epochs": "2"})
    assert parsed == {"epochs": 2}
    assert "Ignoring hyperparameter _tuning_objective_metric" in caplog.text
    assert "Ignoring unrecognized hyperparameter learning_rte; did you mean learning_rate?" in caplog.text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": "2"}, "learning_rate=2.0 is out of range; valid values are in [0.0, 1.0]"),
        ({"epochs": "0"}, "epochs=0 is out of range"),
        ({"batch_size": "3.5"}, "batch_size='3.5' is not an integer"),
        ({"beta_1": "high"}, "beta_1='high' is not a number"),
        ({"early_stopping": "yes"}, 'early_stopping=\'yes\' is not a boolean; use "True" or "False"'),
        ({"optimizer": "lion"}, "optimizer='lion' is not valid; use one of adamw, adam, sgd"),
        ({"reinitialize_top_layer": "Maybe"}, "reinitialize_top_layer='Maybe' is not valid"),
        ({"eps": "1e-8", "epsilon": "1e-6"}, "epsilon is given twice with different values"),
        ({"beta_1": "1"}, "beta_1=1.0 is out of range; valid values are in [0.0, 1.0)"),
        ({"beta_2": "1.0"}, "beta_2=1.0 is out of range; valid values are in [0.0, 1.0)"),
    ],
)
def test_bad_values_name_the_value_and_the_fix(values: dict[str, str], message: str) -> None:
    with pytest.raises(HyperparameterError, match=None) as info:
        parse_hyperparameters(values)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(HyperparameterError) as info:
        parse_hyperparameters({"epochs": "-1", "dropout_rate": "1.5", "optimizer": "x"})
    text = str(info.value)
    assert "epochs" in text and "dropout_rate" in text and "optimizer" in text


def test_model_defaults_apply_to_full_fine_tuning_only() -> None:
    model = {"optimizer": "adamw", "learning_rate": 5e-5, "epochs": 3}  # typed, as the zoo holds them
    assert resolve({}, model).learning_rate == 5e-5
    assert resolve({"learning_rate": "1e-4"}, model).learning_rate == 1e-4
    assert resolve({"epochs": "7"}, model).optimizer == "adamw"
    frozen = resolve({"train_only_on_top_layer": "True"}, model)  # the algorithm-level defaults suit a frozen encoder
    assert (frozen.optimizer, frozen.learning_rate, frozen.epochs) == ("adam", 0.001, 10)


def test_command_line_assignments() -> None:
    assert parse_assignments(["epochs=3", " learning_rate = 1e-5 "]) == {"epochs": "3", "learning_rate": "1e-5"}
    with pytest.raises(HyperparameterError, match="not of the form name=value"):
        parse_assignments(["epochs"])
