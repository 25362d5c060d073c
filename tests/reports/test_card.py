"""The model card: the Hub's metadata block written by huggingface_hub, the text as before (recorded.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard

from textfit.reports.card import model_card

RECORDED = json.loads((Path(__file__).parent / "recorded.json").read_text(encoding="utf-8"))["cards"]

MANIFEST: dict[str, Any] = {
    "model_id": "textfit-tc-roberta-base",
    "classes": {"labels": ["negative", "positive"]},
    "versions": {"textfit": "0.1.0"},
    "data": {"train": {"file": "train/data.csv", "rows": 120, "sha256": "0123456789abcdef" * 4,
                       "class_counts": {"negative": 70, "positive": 50}},
             "validation_source": "split 0.2"},
    "hyperparameters": {"epochs": "3", "learning_rate": "3e-05", "max_seq_length": "128"},
    "epochs": [{"loss": 0.61, "accuracy": 0.7}, {"loss": 0.32, "accuracy": 0.9}],
    "best_epoch": 2,
    "created": "2026-01-02T03:04:05+00:00",
}
OTHER = {**MANIFEST, "model_id": "some/local-model",
         "hyperparameters": {"epochs": "3", "long_texts": "window", "max_seq_length": "64"}}
REPORT = {"rows": 24, "accuracy": 0.875, "macro_f1": 0.86, "weighted_f1": 0.87, "log_loss": 0.31,
          "expected_calibration_error": 0.05,
          "per_class": [{"label": "negative", "precision": 0.9, "recall": 0.85, "f1": 0.874, "support": 14},
                        {"label": "positive", "precision": 0.8, "recall": 0.9, "f1": 0.847, "support": 10}],
          "calibration": {"temperature": 1.7, "ece_before": 0.09, "ece_after": 0.03}}
ML_REPORT = {"multi_label": True, "rows": 30, "micro_f1": 0.8, "micro_f1_at_0.5": 0.75, "macro_f1": 0.7,
             "samples_f1": 0.78, "subset_accuracy": 0.5, "hamming_loss": 0.1,
             "per_label": [{"label": "billing", "threshold": 0.42, "precision": 0.8, "recall": 0.7, "f1": 0.7467,
                            "support": 12}]}
CASES = {"single": (MANIFEST, REPORT), "none": (MANIFEST, None), "multi": (MANIFEST, ML_REPORT),
         "other_model": (OTHER, None)}


def split(card: str) -> tuple[dict[str, Any], str]:
    """(metadata, text) of a card."""
    _, metadata, text = card.split("---\n", 2)
    return yaml.safe_load(metadata), text


@pytest.mark.parametrize("case", CASES)
def test_the_card_says_what_it_said(case: str) -> None:
    card = model_card(*CASES[case])
    metadata, text = split(card)
    assert (metadata, text) == split(RECORDED[case])  # the same metadata, the same text and sections, to the byte
    assert ModelCard(card).data.to_dict() == metadata  # and the Hub reads it back


def test_the_metadata_of_a_model_outside_the_zoo() -> None:
    metadata, _ = split(model_card(OTHER, None))
    assert metadata == {"library_name": "transformers", "pipeline_tag": "text-classification", "license": "other",
                        "tags": ["textfit", "text-classification"]}
