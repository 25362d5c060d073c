"""Multi-label: textfit against the Hugging Face Trainer (problem_type="multi_label_classification") on a real
multi-label corpus, same rows, model and recipe, in one run.

    python bench/multilabel_bench.py [--train-rows 2000] [--test-rows 1000] [--labels 10] [--epochs 5]

The corpus: Debian's package index on this machine (`apt-cache dumpavail`, after `apt-get update`). About
30,000 packages carry debtags, several each (`role::program, interface::commandline, implemented-in::c`); a
row is a package's description, its labels the `--labels` most frequent tags. Rows are drawn with a fixed seed;
test rows are never trained on. Both contenders fine-tune the embedded all-MiniLM-L6-v2 with AdamW 1e-4, linear
warm-up 10% then decay, batch 32, --max-seq-length tokens, on the CPU in bf16 where the CPU computes it
natively (the Trainer with bf16=True and group_by_length, its best settings here). Prints micro-F1 (textfit at
its per-label thresholds and at 0.5; the Trainer at 0.5, its pipeline's rule) and training examples/s.
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

EPOCHS, LR, BATCH = 5, 1e-4, 32


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


def run_textfit(root: Path, labels: list[str], epochs: int, seq: int) -> dict[str, float]:
    from textfit import TextClassifier
    from textfit.data.channels import read_channel

    hp = {"multi_label": "True", "optimizer": "adamw", "learning_rate": str(LR), "epochs": str(epochs),
          "batch_size": str(BATCH), "max_seq_length": str(seq), "validation_split_ratio": "0.1", "seed": "42"}
    start = time.perf_counter()
    clf = TextClassifier(hyperparameters=hp).fit(read_channel(root / "train", multi_label=True))
    seconds = sum(m["seconds"] for m in clf.history_)  # the epochs themselves, as the Trainer's train_runtime
    total = time.perf_counter() - start
    texts, y = read(root / "test", labels)
    proba = clf.predict_proba(texts)
    order = [clf.classes_.index(label) for label in labels]
    proba, thresholds = proba[:, order], np.array(clf.thresholds_)[order]
    rows = clf.manifest_["data"]["train"]["rows"]
    return {"examples_per_s": rows * epochs / seconds, "seconds_total": total,
            "micro_f1_thresholds": micro_f1(y, proba > thresholds[None, :]),
            "micro_f1_at_0.5": micro_f1(y, proba > 0.5), "train_rows": rows}


def run_trainer(root: Path, labels: list[str], epochs: int, seq: int) -> dict[str, float]:
    import torch
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
    # the same rows textfit trains on: it holds out 10% for validation and thresholds; the Trainer, given the
    # same budget, trains on all of them (its favour)
    enc = tok(texts, truncation=True, max_length=seq)
    data = [{"input_ids": i, "attention_mask": m, "labels": [float(v) for v in row]}
            for i, m, row in zip(enc["input_ids"], enc["attention_mask"], y)]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels),
                                                               problem_type="multi_label_classification")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=64,
                                 learning_rate=LR, num_train_epochs=epochs, warmup_steps=0.1,
                                 lr_scheduler_type="linear", weight_decay=0.01, eval_strategy="no",
                                 save_strategy="no", report_to=[], logging_strategy="no", seed=42,
                                 disable_tqdm=True, use_cpu=True, bf16=cpu_has_bf16(),
                                 train_sampling_strategy="group_by_length")
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok))
        result = trainer.train()
        test_texts, test_y = read(root / "test", labels)
        test_enc = tok(test_texts, truncation=True, max_length=seq)
        pred = trainer.predict([{"input_ids": i, "attention_mask": m} for i, m in
                                zip(test_enc["input_ids"], test_enc["attention_mask"])])
    proba = torch.sigmoid(torch.tensor(pred.predictions)).numpy()
    return {"examples_per_s": len(texts) * epochs / result.metrics["train_runtime"],
            "micro_f1_at_0.5": micro_f1(test_y, proba > 0.5), "train_rows": len(texts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--child", choices=["textfit", "trainer"])
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.child:
        root = Path(args.root)
        labels = json.loads((root / "labels.json").read_text())
        run = run_textfit if args.child == "textfit" else run_trainer
        out = run(root, labels, args.epochs, args.max_seq_length)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = build(root, args.train_rows, args.test_rows, args.labels)
        (root / "labels.json").write_text(json.dumps(labels))
        print(f"labels: {', '.join(labels)}", flush=True)
        results = {}
        for name in ("textfit", "trainer"):  # each in its own process: a clean memory reading
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--root", str(root), "--epochs",
                                   str(args.epochs), "--max-seq-length", str(args.max_seq_length)],
                                  capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"{name}: {results[name]}", flush=True)
    t, h = results["textfit"], results["trainer"]
    print(f"\nmicro-F1: textfit {t['micro_f1_thresholds']:.4f} (per-label thresholds; {t['micro_f1_at_0.5']:.4f} at "
          f"0.5), Trainer {h['micro_f1_at_0.5']:.4f} (at 0.5)")
    print(f"training examples/s: textfit {t['examples_per_s']:.1f}, Trainer {h['examples_per_s']:.1f} "
          f"(ratio {t['examples_per_s'] / h['examples_per_s']:.2f}); peak RSS MB: textfit {t['peak_rss_mb']:.0f}, "
          f"Trainer {h['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
