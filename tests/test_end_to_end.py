"""The real embedded encoder (all-MiniLM-L6-v2) fine-tuned on the shipped sample, scored on rows it never saw."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from textfit import TextClassifier
from textfit.cli import main

SAMPLE = Path(__file__).parents[1] / "examples" / "reviews"


@pytest.mark.slow
def test_minilm_with_default_hyperparameters_beats_chance_on_held_out_rows(tmp_path: Path) -> None:
    with (SAMPLE / "data.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    random.Random(0).shuffle(rows)
    held_out, train = rows[:100], rows[100:]
    (tmp_path / "train").mkdir()
    with (tmp_path / "train" / "data.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(train)
    (tmp_path / "train" / "labels_info.json").write_text((SAMPLE / "labels_info.json").read_text())

    # no hyperparameters at all, as `make demo` runs it
    assert main(["-q", "train", "--train", str(tmp_path / "train"), "--output", str(tmp_path / "m")]) == 0
    clf = TextClassifier.load(tmp_path / "m")
    assert clf.manifest_["model_id"] == "textfit-tc-all-minilm-l6-v2"
    assert clf.hyperparameters_.optimizer == "adamw"  # the model's own defaults, not SageMaker's adam at 1e-3
    predicted = clf.predict([text for _, text in held_out])
    truth = [clf.classes_[int(label)] for label, _ in held_out]
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    assert accuracy >= 0.9, accuracy
