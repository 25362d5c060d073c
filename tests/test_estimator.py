"""TextClassifier is a scikit-learn estimator: parameters by keyword, get_params/set_params/clone, and the
model-selection tools (cross_val_score, GridSearchCV, Pipeline) work on it as on any classifier."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.conftest import FAST, make_rows
from textfit import TextClassifier
from textfit.hyperparameters import FIELDS

# The tiny BERT learns these sentences in a few epochs at this rate (conftest.tiny_artifact says why 0.002).
FIT = {**FAST, "epochs": "6", "learning_rate": "0.002", "max_seq_length": "16"}


@pytest.fixture(scope="module")
def rows() -> tuple[list[str], list[str]]:
    data = make_rows(96, seed=3, labels=("neg", "pos"))
    return [text for _, text in data], [str(label) for label, _ in data]


def test_parameters_are_stored_unchanged_and_round_trip(tiny_bert: Path) -> None:
    clf = TextClassifier(str(tiny_bert), learning_rate=0.002, epochs=3, hyperparameters={"batch_size": "8"})
    params = clf.get_params()
    assert params["model_id"] == str(tiny_bert)
    assert params["learning_rate"] == 0.002 and params["epochs"] == 3
    assert params["hyperparameters"] == {"batch_size": "8"}
    assert params["optimizer"] is None  # not given: the model's default applies at fit
    assert set(FIELDS) <= set(params)  # every SageMaker hyperparameter is a parameter of its own
    clf.set_params(learning_rate=0.01, dropout_rate=0.3)
    assert clf.learning_rate == 0.01 and clf.get_params()["dropout_rate"] == 0.3
    assert clf.effective_hyperparameters() == {"batch_size": "8", "learning_rate": 0.01, "epochs": 3,
                                               "dropout_rate": 0.3}
    with pytest.raises(ValueError, match="Invalid parameter"):
        clf.set_params(learning_rat=0.1)
    assert is_classifier(clf)


def test_clone_is_an_unfitted_copy_with_the_same_parameters(tiny_bert: Path,
                                                            rows: tuple[list[str], list[str]]) -> None:
    clf = TextClassifier(str(tiny_bert), hyperparameters=FIT, epochs=2).fit(*rows)
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == clf.get_params()
    assert not hasattr(copy, "model_")
    with pytest.raises(NotFittedError):
        copy.predict(["a good film"])


def test_cross_val_score_learns_on_every_fold(tiny_bert: Path, rows: tuple[list[str], list[str]]) -> None:
    scores = cross_val_score(TextClassifier(str(tiny_bert), hyperparameters=FIT), *rows, cv=3)
    assert scores.shape == (3,)
    assert scores.min() >= 0.9, scores  # separable sentences: a fold at chance (0.5) is a fit that did not learn


def test_grid_search_over_two_learning_rates_picks_the_one_that_learns(
        tiny_bert: Path, rows: tuple[list[str], list[str]]) -> None:
    # 1e-7 cannot move the random tiny model in 6 epochs; 0.002 separates the sentences: the search must tell
    search = GridSearchCV(TextClassifier(str(tiny_bert), hyperparameters=FIT), {"learning_rate": [1e-7, 0.002]},
                          cv=2)
    search.fit(*rows)
    assert search.best_params_ == {"learning_rate": 0.002}
    assert search.cv_results_["mean_test_score"][1] > search.cv_results_["mean_test_score"][0] + 0.2
    assert search.best_estimator_.hyperparameters_.learning_rate == 0.002
    assert search.score(*rows) >= 0.9


def test_a_pipeline_with_a_text_cleaning_step(tiny_bert: Path, rows: tuple[list[str], list[str]]) -> None:
    shout = [text.upper() + "!!!" for text in rows[0]]  # the tiny vocabulary is lower case: cleaning must run
    clean = FunctionTransformer(lambda texts: [t.lower().rstrip("!") for t in texts])
    pipe = make_pipeline(clean, TextClassifier(str(tiny_bert), hyperparameters=FIT)).fit(shout, rows[1])
    assert pipe.score(shout, rows[1]) >= 0.9
    assert list(pipe.predict(["THE FILM WAS GREAT AND LOVELY!!!"])) == ["pos"]


def test_score_is_accuracy_against_labels_given_as_in_training(tiny_bert: Path) -> None:
    """classes_ are the class names (README: Python API); score compares labels as y gave them (integers
    here), so cross_val_score and GridSearchCV score integer labels right."""
    data = make_rows(96, seed=5)
    texts, labels = [t for _, t in data], [int(y) for y, _ in data]
    clf = TextClassifier(str(tiny_bert), hyperparameters=FIT).fit(texts, labels)
    assert clf.classes_ == ["0", "1"] and clf.label_values_ == [0, 1]
    predicted = [int(name) for name in clf.predict(texts)]
    expected = float(np.mean(np.asarray(predicted) == np.asarray(labels)))
    assert expected >= 0.9
    assert clf.score(texts, labels) == pytest.approx(expected)
    flipped = [1 - y for y in labels]
    assert clf.score(texts, flipped) == pytest.approx(1 - expected)


def test_scikit_learn_checks_that_apply_to_text(tiny_bert: Path, rows: tuple[list[str], list[str]]) -> None:
    """scikit-learn's check_estimator feeds numeric arrays, which a text classifier refuses by design; these are
    the checks of its suite that apply to text input, run on texts."""
    from sklearn.utils.estimator_checks import check_get_params_invariance, check_set_params

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_get_params_invariance("TextClassifier", TextClassifier(str(tiny_bert)))
        check_set_params("TextClassifier", TextClassifier(str(tiny_bert)))
    clf = TextClassifier(str(tiny_bert), hyperparameters=FIT)
    params = clf.get_params()
    assert clf.fit(*rows) is clf  # fit returns self
    assert clf.get_params() == params  # fit changes no parameter
    proba = clf.predict_proba(rows[0][:5])
    assert proba.shape == (5, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert [clf.classes_[i] for i in proba.argmax(axis=1)] == list(clf.predict(rows[0][:5]))
