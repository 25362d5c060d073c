"""The model card: a README.md in every artifact saying what the model is, what it was trained on, how well it
does, and how to load it."""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from textfit.model.zoo import get_spec


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def _multi_label_metrics(report: dict[str, Any]) -> str:
    lines = [f"Multi-label: one independent probability per label; a label is predicted above its threshold, "
             f"chosen on the validation rows for the label's F1. On {report['rows']} validation rows: micro F1 "
             f"**{report['micro_f1']:.4f}** (at 0.5 for every label: {report['micro_f1_at_0.5']:.4f}), macro F1 "
             f"{report['macro_f1']:.4f}, samples F1 {report['samples_f1']:.4f}, subset accuracy "
             f"{report['subset_accuracy']:.4f}, Hamming loss {report['hamming_loss']:.4f}.", "",
             "| label | threshold | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['threshold']:.3f} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | "
              f"{c['support']} |" for c in report["per_label"]]
    return "\n".join(lines) + "\n"


def _metrics(report: dict[str, Any] | None) -> str:
    if report is None:
        return "No validation data was held out (validation_split_ratio=0 and no validation channel).\n"
    if report.get("multi_label"):
        return _multi_label_metrics(report)
    lines = [f"On {report['rows']} validation rows: accuracy **{report['accuracy']:.4f}**, macro F1 "
             f"{report['macro_f1']:.4f}, weighted F1 {report['weighted_f1']:.4f}, log loss {report['log_loss']:.4f}, "
             f"expected calibration error {report['expected_calibration_error']:.4f}.", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
              for c in report["per_class"]]
    if report.get("calibration"):
        cal = report["calibration"]
        lines += ["", f"Probabilities are calibrated: temperature {cal['temperature']:.3f} fitted on the validation "
                      f"set, expected calibration error {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after."]
    return "\n".join(lines) + "\n"


def model_card(manifest: dict[str, Any], report: dict[str, Any] | None) -> str:
    """Markdown for the artifact's README.md, from its manifest and validation report: the Hub's metadata block
    written by huggingface_hub, then the text."""
    spec = get_spec(manifest.get("model_id") or "")
    metadata = ModelCardData(library_name="transformers", pipeline_tag="text-classification",
                             license=spec.license.lower() if spec else "other", tags=["textfit", "text-classification"])
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{_text(manifest, report)}"))


def _text(manifest: dict[str, Any], report: dict[str, Any] | None) -> str:
    spec = get_spec(manifest.get("model_id") or "")
    base = f"{spec.name} (`{manifest['model_id']}`, Hugging Face `{spec.hf_id}`)" if spec else f"`{manifest['model_id']}`"
    license_ = spec.license if spec else "see the base model's own card"
    train = manifest["data"]["train"]
    hp = manifest["hyperparameters"]
    classes = ", ".join(f"{name} ({n})" for name, n in train["class_counts"].items())
    best = manifest["epochs"][manifest["best_epoch"] - 1] if manifest.get("epochs") else {}
    return f"""# Text classifier fine-tuned with textfit

A {len(manifest['classes']['labels'])}-class text classifier: the encoder {base} with a Dropout and a Dense
layer on its pooled output, fine-tuned with textfit {manifest['versions']['textfit']}.

{_table([
    ("base model", base),
    ("base model licence", license_),
    ("classes", ", ".join(manifest["classes"]["labels"])),
    ("training data", f"`{train['file']}`, {train['rows']} rows, sha256 `{train['sha256'][:16]}...`" if "sha256" in train
     else f"{train['rows']} rows given in memory"),
    ("rows per class", classes),
    ("validation", manifest["data"]["validation_source"]),
    ("kept epoch", f"{manifest['best_epoch']} of {len(manifest['epochs'])} (best val_accuracy)"),
    ("created", manifest["created"]),
])}

## Validation

{_metrics(report)}
Training curves: `training_curves.png`; confusion matrix: `confusion_matrix.png`; all numbers:
`validation_report.json` and `textfit.json`.

## Hyperparameters

{_table([(k, f"`{v}`") for k, v in hp.items()])}

Kept epoch: loss {best.get('loss', float('nan')):.4f}, accuracy {best.get('accuracy', float('nan')):.4f}.

## Intended use

Classifying texts like those of the training data into the classes above. The model has seen only that data: check
it on data of your own before relying on it. {_long_texts(hp)}

## How to load

With textfit:

```python
import textfit
clf = textfit.load("path/to/this/folder")
clf.predict(["some text"])          # labels
clf.classify(["some text"])         # probabilities, labels, predicted_label
```

```bash
textfit serve --model path/to/this/folder      # SageMaker's /ping and /invocations on port 8080
```

With plain transformers:

```python
from transformers import pipeline
classifier = pipeline("text-classification", model="path/to/this/folder")
classifier("some text")
```
"""


def _long_texts(hp: dict[str, str]) -> str:
    length = hp.get("max_seq_length", "128")
    if hp.get("long_texts") == "window":
        from textfit.data.batching import MAX_WINDOWS

        return (f"A text longer than {length} tokens is read as overlapping windows of {length} tokens (up to {MAX_WINDOWS}) "
                f"whose probabilities are averaged; `long_texts=\"truncate\"` reads only its first {length} tokens.")
    if hp.get("long_texts") == "head_tail":
        return (f"A text longer than {length} tokens is read as its head and tail: its first quarter of {length} "
                f"tokens and its last tokens for the rest, as in training.")
    return (f"Only the first {length} tokens of a text count; `long_texts=\"window\"` reads a longer one as "
            f"overlapping windows.")
