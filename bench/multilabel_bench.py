"""Multi-label: textfit's defaults against the Hugging Face Trainer at its best on a real multi-label corpus,
same rows, in one run.

    python bench/multilabel_bench.py [--train-rows 2000] [--test-rows 1000] [--labels 10] [--trainer-epochs 10]

The corpus: Debian's package index on this machine (`apt-cache dumpavail`, after `apt-get update`). About
30,000 packages carry debtags, several each (`role::program, interface::commandline, implemented-in::c`); a
row is a package's description, its labels the `--labels` most frequent tags. Rows are drawn with a fixed seed;
test rows are never trained on. Both fine-tune the embedded all-MiniLM-L6-v2 at --max-seq-length tokens.

textfit runs with `multi_label=True` and nothing else (its epochs, rate, validation share and per-label
thresholds are its defaults'). The Trainer gets what a careful user gives it (run_trainer): the same validation
share, split by the same iterative stratification; BCE weighted by each label's negatives / positives;
--trainer-epochs epochs with evaluation each epoch and the best epoch's weights; per-label thresholds chosen on
the validation rows; textfit's learning rate, batch 32, 10% warm-up; bf16 where this CPU computes it faster.
Batches in random order, not length-grouped: on this set the Trainer's `group_by_length` (its fastest setting
on short texts) keeps it from learning at all (micro-F1 0.19 on its own training rows, 0.59 without it:
docs/benchmarks.md); an earlier version of this bench used it and had the Trainer at 0.21. --trainer-grouped
runs it so. Prints test micro-F1 at the thresholds and at 0.5, training examples/s with the validation passes
included, and peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

TRAINER_EPOCHS, BATCH = 10, 32


def packages() -> list[dict[str, str]]:
    """The fields of every package in Debian's index on this machine (continuation lines joined by newlines)."""
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    out = []
    for stanza in dump.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        out.append(fields)
    return out


def debtags_rows() -> list[tuple[list[str], str]]:
    """(tags, description) of every package that has debtags."""
    rows = []
    for fields in packages():
        tags = [t.strip() for t in fields.get("Tag", "").replace("\n", " ").split(",") if t.strip()]
        text = fields.get("Description", "").replace("\n.", "\n").strip()
        if tags and text:
            rows.append((tags, text))
    return rows


def build(folder: Path, train_rows: int, test_rows: int, n_labels: int, seed: int = 0) -> list[str]:
    rows = debtags_rows()
    if len(rows) < train_rows + test_rows:
        raise SystemExit(f"only {len(rows)} packages with debtags; run apt-get update first")
    counts = Counter(tag for tags, _ in rows for tag in set(tags))
    labels = [tag for tag, _ in counts.most_common(n_labels)]
    random.Random(seed).shuffle(rows)
    for name, part in (("train", rows[:train_rows]), ("test", rows[train_rows:train_rows + test_rows])):
        (folder / name).mkdir(parents=True, exist_ok=True)
        with (folder / name / "data.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(("|".join(t for t in tags if t in labels), text) for tags, text in part)
    return labels


def read(folder: Path, labels: list[str]) -> tuple[list[str], np.ndarray]:
    texts, y = [], []
    with (folder / "data.csv").open(encoding="utf-8", newline="") as f:
        for field, text in csv.reader(f):
            texts.append(text)
            y.append([int(label in field.split("|")) for label in labels])
    return texts, np.array(y)


def micro_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    tp = float((predicted & (y == 1)).sum())
    return 2 * tp / max(float(predicted.sum() + y.sum()), 1.0)


def run_textfit(root: Path, labels: list[str], epochs: int, seq: int, extra: dict[str, str] | None = None
                ) -> dict[str, float]:
    """textfit's defaults with multi_label=True (the epochs, rate, recipe and thresholds its own), and `extra`."""
    from textfit import TextClassifier
    from textfit.data.channels import read_channel

    hp = {"multi_label": "True", "max_seq_length": str(seq), **(extra or {})}
    if epochs:
        hp["epochs"] = str(epochs)
    start = time.perf_counter()
    clf = TextClassifier(hyperparameters=hp).fit(read_channel(root / "train", multi_label=True))
    seconds = sum(m["seconds"] for m in clf.history_)  # the epochs with their validation, as train_runtime
    total = time.perf_counter() - start
    texts, y = read(root / "test", labels)
    proba = clf.predict_proba(texts)
    order = [clf.classes_.index(label) for label in labels]
    proba, thresholds = proba[:, order], np.array(clf.thresholds_)[order]
    data = clf.manifest_["data"]
    rows = data["train"]["rows"]
    return {"examples_per_s": rows * len(clf.history_) / seconds, "seconds_total": total,
            "micro_f1_thresholds": micro_f1(y, proba > thresholds[None, :]),
            "micro_f1_at_0.5": micro_f1(y, proba > 0.5), "train_rows": rows,
            "validation_rows": data.get("validation", {}).get("rows", 0), "epochs": len(clf.history_),
            "learning_rate": clf.manifest_["hyperparameters"]["learning_rate"]}


def best_thresholds(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Each label's threshold with the highest F1 on these rows (0.5 for a label with no positive among them)."""
    from sklearn.metrics import precision_recall_curve

    out = np.full(y.shape[1], 0.5)
    for j in range(y.shape[1]):
        if y[:, j].any():
            precision, recall, cuts = precision_recall_curve(y[:, j], proba[:, j])
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            out[j] = cuts[int(np.argmax(f1))]
    return out


def run_trainer(root: Path, labels: list[str], epochs: int, seq: int, lr: float, val_ratio: float,
                grouped: bool = False) -> dict[str, float]:
    """The Trainer at its best on this task: BCE with each label's positive weight (negatives / positives),
    evaluation each epoch and the best epoch's weights by validation micro-F1, per-label thresholds chosen on
    the validation rows (the same share textfit holds out, split by the same iterative stratification), bf16
    where faster; batches length-grouped only with `grouped` (see the module's docstring)."""
    import torch
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from textfit.model.zoo import embedded_path
    from textfit.training.loop import cpu_has_bf16

    model_dir = str(embedded_path())
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts, y = read(root / "train", labels)
    split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_ratio, random_state=42)
    tr, va = next(split.split(np.zeros(len(texts)), y))

    def encode(rows: np.ndarray) -> list[dict[str, object]]:
        enc = tok([texts[i] for i in rows], truncation=True, max_length=seq)
        return [{"input_ids": i, "attention_mask": m, "labels": [float(v) for v in y[r]]}
                for i, m, r in zip(enc["input_ids"], enc["attention_mask"], rows)]

    positives = y[tr].sum(axis=0)
    pos_weight = torch.tensor((len(tr) - positives) / np.maximum(positives, 1), dtype=torch.float32)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def loss(outputs: object, target: torch.Tensor, num_items_in_batch: object = None) -> torch.Tensor:
        return loss_fn(outputs.logits.float(), target.float())  # type: ignore[attr-defined]

    def metrics(pred: object) -> dict[str, float]:
        proba = 1 / (1 + np.exp(-pred.predictions))  # type: ignore[attr-defined]
        return {"micro_f1": micro_f1(pred.label_ids.astype(int), proba > 0.5)}  # type: ignore[attr-defined]

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels),
                                                               problem_type="multi_label_classification")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=64,
                                 learning_rate=lr, num_train_epochs=epochs, warmup_steps=0.1,
                                 lr_scheduler_type="linear", weight_decay=0.01, eval_strategy="epoch",
                                 save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True,
                                 metric_for_best_model="micro_f1", report_to=[], logging_strategy="no", seed=42,
                                 disable_tqdm=True, use_cpu=True, bf16=cpu_has_bf16(),
                                 train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=args, train_dataset=encode(tr), eval_dataset=encode(va),
                          data_collator=DataCollatorWithPadding(tok), compute_loss_func=loss,
                          compute_metrics=metrics)
        result = trainer.train()
        val = trainer.predict(encode(va))
        thresholds = best_thresholds(y[va], torch.sigmoid(torch.tensor(val.predictions)).numpy())
        test_texts, test_y = read(root / "test", labels)
        test_enc = tok(test_texts, truncation=True, max_length=seq)
        pred = trainer.predict([{"input_ids": i, "attention_mask": m} for i, m in
                                zip(test_enc["input_ids"], test_enc["attention_mask"])])
    proba = torch.sigmoid(torch.tensor(pred.predictions)).numpy()
    return {"examples_per_s": len(tr) * epochs / result.metrics["train_runtime"],
            "micro_f1_thresholds": micro_f1(test_y, proba > thresholds[None, :]),
            "micro_f1_at_0.5": micro_f1(test_y, proba > 0.5), "train_rows": len(tr), "validation_rows": len(va),
            "epochs": epochs, "learning_rate": lr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=0, help="textfit's epochs (default: its own)")
    parser.add_argument("--trainer-epochs", type=int, default=TRAINER_EPOCHS)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--child", choices=["textfit", "trainer"])
    parser.add_argument("--root")
    parser.add_argument("--learning-rate", type=float, default=0.0)
    parser.add_argument("--validation-ratio", type=float, default=0.0)
    parser.add_argument("--textfit-hp", default="{}",
                        help='textfit hyperparameters over its defaults, as JSON: \'{"class_weights": "none"}\'')
    parser.add_argument("--trainer-grouped", action="store_true",
                        help="length-grouped batches for the Trainer (here they keep it from learning: see above)")
    args = parser.parse_args()
    if args.child:
        root = Path(args.root)
        labels = json.loads((root / "labels.json").read_text())
        if args.child == "textfit":
            out = run_textfit(root, labels, args.epochs, args.max_seq_length, json.loads(args.textfit_hp))
        else:
            out = run_trainer(root, labels, args.trainer_epochs, args.max_seq_length, args.learning_rate,
                              args.validation_ratio, args.trainer_grouped)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = build(root, args.train_rows, args.test_rows, args.labels)
        (root / "labels.json").write_text(json.dumps(labels))
        print(f"labels: {', '.join(labels)}", flush=True)
        results: dict[str, dict[str, float]] = {}
        for name in ("textfit", "trainer"):  # each in its own process: a clean memory reading
            extra = []
            if name == "trainer":  # textfit's rate and validation share, from its run
                t = results["textfit"]
                extra = ["--learning-rate", str(t["learning_rate"]), "--validation-ratio",
                         str(t["validation_rows"] / (t["validation_rows"] + t["train_rows"]))]
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--root", str(root), "--epochs",
                                   str(args.epochs), "--trainer-epochs", str(args.trainer_epochs),
                                   "--max-seq-length", str(args.max_seq_length), *extra,
                                   "--textfit-hp", args.textfit_hp,
                                   *(["--trainer-grouped"] if args.trainer_grouped else [])],
                                  capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"{name}: {results[name]}", flush=True)
    t, h = results["textfit"], results["trainer"]
    print(f"\ntest micro-F1 at per-label thresholds chosen on the validation rows: textfit "
          f"{t['micro_f1_thresholds']:.4f}, Trainer {h['micro_f1_thresholds']:.4f}; at 0.5: textfit "
          f"{t['micro_f1_at_0.5']:.4f}, Trainer {h['micro_f1_at_0.5']:.4f}")
    print(f"training examples/s (validation passes included): textfit {t['examples_per_s']:.1f} "
          f"({t['epochs']:.0f} epochs), Trainer {h['examples_per_s']:.1f} ({h['epochs']:.0f} epochs); ratio "
          f"{t['examples_per_s'] / h['examples_per_s']:.2f}; peak RSS MB: textfit {t['peak_rss_mb']:.0f}, "
          f"Trainer {h['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
