"""Training throughput: textfit against the Hugging Face Trainer at its best, same data, model and hyperparameters.

The Trainer runs in fp32, with bf16=True where the CPU computes bf16 natively, and with length-grouped
batches (train_sampling_strategy="group_by_length"); textfit's ratio is against the fastest of those rows.

    python bench/train_bench.py [--epochs 3] [--max-seq-length 128] [--set bbc|debian] [--limit N]

--set debian trains on Debian package descriptions labelled by section (bench/fewshot_bench.py: 6 classes,
texts of every length, most far shorter than 128 tokens), the first --limit rows of its pool; the default set:
Fine-tunes the embedded all-MiniLM-L6-v2 on BBC News (bench/bbc.py) with AdamW 5e-5, linear schedule with 10%
warm-up, batch 32, 128 tokens. Each contender runs in its own process (for a clean peak-memory reading) and
trains on all 1,781 training rows with no evaluation pass during training (the Trainer's default), then
scores the 444 test rows. Prints examples/s, seconds per epoch, peak RSS, test accuracy, the fraction of the
measured matmul floor, and the ratios; also times train_only_on_top_layer=True (10 epochs of Adam 1e-3).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

HP = {"optimizer": "adamw", "learning_rate": "5e-5", "batch_size": "32", "warmup_steps_fraction": "0.1",
      "validation_split_ratio": "0", "seed": "42", "training_recipe": "finetune"}


def matmul_flops(dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def flops_per_token(model_dir: str, seq: int) -> float:
    """Training FLOPs per token: about 3x the forward pass (2 x non-embedding params + attention)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embeddings"))
    forward = 2 * params + 4 * config.num_hidden_layers * seq * config.hidden_size
    return 3 * forward


def accuracy(predicted: list[int], truth: list[int]) -> float:
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def run_textfit(train: Path, test: Path, epochs: int, seq: int, extra: dict[str, str]) -> dict[str, float]:
    from bbc import class_names  # noqa: F401  (same data module as the Trainer run)

    from textfit import TextClassifier
    from textfit.data.channels import read_channel

    hp = {**HP, "epochs": str(epochs), "max_seq_length": str(seq), **extra}
    start = time.perf_counter()
    clf = TextClassifier(hyperparameters=hp).fit(read_channel(train))
    fit_seconds = time.perf_counter() - start  # everything: reading, loading, tokenizing, feature cache, epochs
    seconds = sum(m["seconds"] for m in clf.history_)
    rows = clf.manifest_["data"]["train"]["rows"]
    test_ch = read_channel(test)
    predicted = clf.predict(test_ch.texts, long_texts="truncate")  # scored as the Trainer's model is: 128 tokens
    tokens = _tokens(clf.tokenizer_, read_channel(train).texts, seq)
    return {"examples_per_s": rows * len(clf.history_) / seconds, "seconds_per_epoch": seconds / len(clf.history_),
            "tokens_per_s": tokens * len(clf.history_) / seconds, "fit_seconds": fit_seconds,
            "test_accuracy": accuracy([int(p) for p in predicted], [int(y) for y in test_ch.labels])}


def _tokens(tokenizer: object, texts: list[str], seq: int) -> int:
    ids = tokenizer(texts, truncation=True, max_length=seq)["input_ids"]  # type: ignore[operator]
    return sum(len(x) for x in ids)


def run_trainer(train: Path, test: Path, epochs: int, seq: int, bf16: bool = False, grouped: bool = False
                ) -> dict[str, float]:
    """What a user would write with the Hugging Face Trainer (defaults plus the shared hyperparameters); with
    bf16 (on a CPU with native bf16) and length grouping, its best settings on this machine."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from textfit.data.channels import read_channel
    from textfit.model.zoo import embedded_path

    model_dir = str(embedded_path())
    tok = AutoTokenizer.from_pretrained(model_dir)
    tr, te = read_channel(train), read_channel(test)

    def encode(ch: object) -> list[dict[str, object]]:
        enc = tok(ch.texts, truncation=True, max_length=seq)  # type: ignore[attr-defined]
        return [{"input_ids": ids, "attention_mask": m, "labels": int(y)}
                for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], ch.labels)]  # type: ignore[attr-defined]

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(set(tr.labels)))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=32, per_device_eval_batch_size=64,
                                 learning_rate=5e-5, num_train_epochs=epochs, warmup_steps=0.1,
                                 lr_scheduler_type="linear", weight_decay=0.01, eval_strategy="no",
                                 save_strategy="no", report_to=[], logging_strategy="no", seed=42,
                                 disable_tqdm=True, use_cpu=True, bf16=bf16,
                                 train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=args, train_dataset=encode(tr),
                          data_collator=DataCollatorWithPadding(tok))
        result = trainer.train()
        pred = trainer.predict(encode(te))
    seconds = result.metrics["train_runtime"]
    predicted = np.argmax(pred.predictions, axis=-1).tolist()
    return {"examples_per_s": len(tr.texts) * epochs / seconds, "seconds_per_epoch": seconds / epochs,
            "tokens_per_s": _tokens(tok, tr.texts, seq) * epochs / seconds,
            "test_accuracy": accuracy(predicted, [int(y) for y in pred.label_ids])}


def child(args: argparse.Namespace) -> None:
    train, test = Path(args.train), Path(args.test)
    if args.child.startswith("trainer"):
        out = run_trainer(train, test, args.epochs, args.max_seq_length, bf16="bf16" in args.child,
                          grouped="grouped" in args.child)
    elif args.child == "textfit-top":
        out = run_textfit(train, test, 10, args.max_seq_length,
                          {"train_only_on_top_layer": "True", "optimizer": "adam", "learning_rate": "1e-3"})
    else:
        extra = {"precision": args.child.split("-")[1]}
        if args.child.endswith("-embeddings"):  # -frozen-embeddings (the default) or -trained-embeddings
            extra["freeze_token_embeddings"] = str(args.child.endswith("-frozen-embeddings"))
        out = run_textfit(train, test, args.epochs, args.max_seq_length, extra)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def spawn(name: str, args: argparse.Namespace, train: Path, test: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", name, "--train", str(train), "--test", str(test),
           "--epochs", str(args.epochs), "--max-seq-length", str(args.max_seq_length)]
    print(f"running {name} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    print(f"  {lines[-1]}", flush=True)  # each result as it comes: a later failure loses nothing
    return json.loads(lines[-1].removeprefix("RESULT "))


def debian_channels(root: Path, limit: int) -> tuple[Path, Path]:
    """(train, test) channels of the Debian sections set: the first `limit` rows of its pool, its test rows."""
    from bbc import write_channel
    from fewshot_bench import debian_set

    pool, test, _ = debian_set()
    return (write_channel(root / "train", pool[:limit]),
            write_channel(root / "test", test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--set", choices=("bbc", "debian"), default="bbc")
    parser.add_argument("--limit", type=int, default=2000, help="training rows of the debian set")
    parser.add_argument("--only", help="comma-separated runs (default: all): trainer-fp32, trainer-bf16, "
                        "trainer-bf16-grouped, textfit-fp32, textfit-auto, textfit-top, and the textfit runs with "
                        "-frozen-embeddings or -trained-embeddings appended")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--test", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch
    from bbc import channels

    from textfit.model.zoo import embedded_path
    from textfit.training.loop import cpu_bf16_flag, cpu_has_bf16

    torch.set_num_threads(torch.get_num_threads())
    # without native bf16, oneDNN emulates it at a few GFLOP/s: minutes to measure a floor nothing here runs at
    floor = {"fp32": matmul_flops("float32"), "bf16": matmul_flops("bfloat16") if cpu_has_bf16() else float("nan")}
    per_token = flops_per_token(str(embedded_path()), args.max_seq_length)
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    print(f"CPU: {model}, native bf16: {cpu_bf16_flag() or 'none'}")
    print(f"matmul floor: fp32 {floor['fp32'] / 1e9:.0f} GFLOP/s, bf16 {floor['bf16'] / 1e9:.0f} GFLOP/s; "
          f"training cost {per_token / 1e6:.1f} MFLOP/token; threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        train, test = channels(Path(tmp)) if args.set == "bbc" else debian_channels(Path(tmp), args.limit)
        trainers = ["trainer-fp32"] + (["trainer-bf16", "trainer-bf16-grouped"] if cpu_has_bf16() else
                                       ["trainer-fp32-grouped"])
        runs = [*trainers, "textfit-fp32", "textfit-auto", "textfit-top"]
        if args.only:
            runs = args.only.split(",")
            trainers = [name for name in runs if name.startswith("trainer")]
        results = {name: spawn(name, args, train, test) for name in runs}

    print(f"\n{'run':<32} {'examples/s':>10} {'s/epoch':>8} {'peak MB':>8} {'test acc':>9} {'floor fp32':>10} "
          f"{'floor bf16':>10}")
    for name, r in results.items():
        if name == "textfit-top":  # a frozen encoder trains the head only: the encoder's floor does not apply
            print(f"{name:<32} {'-':>10} {r['seconds_per_epoch']:>8.2f} {r['peak_rss_mb']:>8.0f} "
                  f"{r['test_accuracy']:>9.4f} {'-':>10} {'-':>10}")
            continue
        work = r["tokens_per_s"] * per_token
        print(f"{name:<32} {r['examples_per_s']:>10.1f} {r['seconds_per_epoch']:>8.1f} {r['peak_rss_mb']:>8.0f} "
              f"{r['test_accuracy']:>9.4f} {work / floor['fp32']:>10.2f} {work / floor['bf16']:>10.2f}")
    if trainers:
        best = max(trainers, key=lambda n: results[n]["examples_per_s"])  # the baseline at its best
        base = results[best]
        for name in (n for n in results if n.startswith("textfit") and n != "textfit-top"):
            r = results[name]
            print(f"{name} / {best} (the fastest Trainer row): {r['examples_per_s'] / base['examples_per_s']:.2f}x "
                  f"examples/s, {r['peak_rss_mb'] - base['peak_rss_mb']:+.0f} MB peak RSS, accuracy "
                  f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.1f} points")
    if "trainer-fp32" in results:
        fp32 = results["trainer-fp32"]
        for name in (n for n in results if n.startswith("textfit-fp32")):
            print(f"{name} / trainer-fp32 (stands for a CPU without native bf16): "
                  f"{results[name]['examples_per_s'] / fp32['examples_per_s']:.2f}x examples/s, "
                  f"{results[name]['peak_rss_mb'] - fp32['peak_rss_mb']:+.0f} MB peak RSS")
    if "textfit-top" in results and "textfit-auto" in results:
        top, full = results["textfit-top"], results["textfit-auto"]
        print(f"train_only_on_top_layer, 10 epochs: {top['fit_seconds']:.0f} s in all (features computed once), "
              f"{top['seconds_per_epoch']:.2f} s per epoch after that; full fine-tuning, {args.epochs} epochs: "
              f"{full['fit_seconds']:.0f} s; test accuracy {top['test_accuracy']:.4f} vs {full['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
