"""A whole default training job's memory: `textfit train` with no hyperparameters against the job a user writes
with the Hugging Face Trainer, same rows, each in its own process, RSS sampled through the run.

    python bench/job_memory_bench.py [--set bbc|debian|paragraphs] [--rows N] [--only textfit,trainer]
                                     [--epochs N] [--profile]

textfit's job is the CLI's: `textfit train --train DIR --output DIR` (split, training, validation each epoch,
the best epoch's weights, the ONNX graph, reports and pictures, the artifact). The Trainer's is the recipe of its
documentation with the same settings as textfit's defaults resolved on these rows (epochs, learning rate, batch,
warm-up, 128 tokens; textfit's manifest says which): a stratified 80/20 validation split, evaluation and a
checkpoint each epoch, `load_best_model_at_end` on accuracy, then `save_model`; fp32 or bf16 as textfit's auto
decides on this CPU, length-grouped batches (its best settings here).

The peak is the process's own (wait4's ru_maxrss, exact). `--profile` also prints where it peaks: RSS sampled
every 0.2 s, each sample put under the last line the job had logged by then, and the highest sample of each such
phase. Sets: `bbc` (1,781 articles, long), `debian` (package descriptions by section, short; --rows of the pool)
and `paragraphs` (--rows passages of 80 to 200 words cut from the BBC training articles: review-length texts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def paragraphs(rows: int, seed: int = 0) -> list[tuple[int, str]]:
    """Passages of 80-200 words from BBC's training articles, each labelled by its article's topic."""
    import bbc

    train, _ = bbc.split(bbc.articles())
    passages = []
    for label, text in train:
        words = text.split()
        for start in range(0, len(words) - 80, 140):
            passages.append((label, " ".join(words[start:start + 140])))
    random.Random(seed).shuffle(passages)
    if len(passages) < rows:
        raise SystemExit(f"only {len(passages)} passages; ask for fewer --rows")
    return passages[:rows]


def channel(root: Path, name: str, rows: int) -> Path:
    import bbc

    if name == "bbc":
        return bbc.channels(root)[0]
    if name == "debian":
        from fewshot_bench import debian_set

        return bbc.write_channel(root / "train", debian_set()[0][:rows])
    return bbc.write_channel(root / "train", paragraphs(rows))


class Sampler(threading.Thread):
    """RSS of one process every `period` seconds, each sample under the last line its log file had by then."""

    def __init__(self, pid: int, log: Path, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.log, self.period = pid, log, period
        self.peaks: dict[str, tuple[int, float]] = {}  # phase -> (peak MB, seconds into the job at it)
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.done.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            mb = next((int(ln.split()[1]) // 1024 for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
            lines = [ln for ln in _tail(self.log).splitlines() if ln.strip()]
            phase = lines[-1][:90] if lines else "(starting)"
            if mb > self.peaks.get(phase, (0, 0.0))[0]:
                self.peaks[phase] = (mb, time.monotonic() - start)
            time.sleep(self.period)


def _tail(path: Path, size: int = 4096) -> str:
    """The last `size` bytes of a file: the sampler needs only its last line, five times a second."""
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, 2) - size))
        return f.read().decode("utf-8", errors="replace")


def run(command: list[str], log: Path, profile: bool) -> tuple[int, float, dict[str, tuple[int, float]]]:
    """(peak RSS MB, seconds, the sampler's peaks by phase) of one command; its output goes to `log`."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid, log)
    if profile:
        sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.done.set()
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss // 1024, time.perf_counter() - start, sampler.peaks


def trainer_job(train: Path, output: Path, hp: dict[str, object], bf16: bool) -> None:
    """The Trainer's documented recipe at textfit's resolved settings (runs in a child process)."""
    import numpy as np
    from sklearn.model_selection import train_test_split
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from textfit.data.channels import read_channel
    from textfit.model.zoo import embedded_path

    class Phases(TrainerCallback):  # log lines for the sampler
        def on_epoch_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            print(f"epoch {int(state.epoch or 0) + 1} training", flush=True)

        def on_evaluate(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            print(f"evaluated epoch {int(state.epoch or 0)}", flush=True)

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            print(f"checkpoint saved at epoch {int(state.epoch or 0)}", flush=True)

    model_dir = str(embedded_path())
    print("loading", flush=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ch = read_channel(train)
    classes = sorted(set(ch.labels))
    y = [classes.index(v) for v in ch.labels]
    tr_x, va_x, tr_y, va_y = train_test_split(ch.texts, y, test_size=float(hp["validation_split_ratio"]),
                                              stratify=y, random_state=42)

    def encode(texts: list[str], labels: list[int]) -> list[dict[str, object]]:
        enc = tok(texts, truncation=True, max_length=int(hp["max_seq_length"]))
        return [{"input_ids": i, "attention_mask": m, "labels": v}
                for i, m, v in zip(enc["input_ids"], enc["attention_mask"], labels)]

    def accuracy(pred: object) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}  # type: ignore[attr-defined]

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(classes))
    args = TrainingArguments(output_dir=str(output / "checkpoints"), per_device_train_batch_size=int(hp["batch_size"]),
                             per_device_eval_batch_size=64, learning_rate=float(hp["learning_rate"]),
                             num_train_epochs=int(hp["epochs"]), warmup_steps=float(hp["warmup_steps_fraction"]),
                             lr_scheduler_type="linear", weight_decay=0.01, eval_strategy="epoch",
                             save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True,
                             metric_for_best_model="accuracy", report_to=[], logging_strategy="no", seed=42,
                             disable_tqdm=True, use_cpu=True, bf16=bf16, train_sampling_strategy="group_by_length")
    trainer = Trainer(model=model, args=args, train_dataset=encode(tr_x, tr_y), eval_dataset=encode(va_x, va_y),
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy, callbacks=[Phases()])
    trainer.train()
    print("saving", flush=True)
    trainer.save_model(str(output / "model"))
    tok.save_pretrained(str(output / "model"))
    print("saved", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("bbc", "debian", "paragraphs"), default="bbc")
    parser.add_argument("--rows", type=int, default=4000, help="training rows of the debian and paragraphs sets")
    parser.add_argument("--only", default="textfit,trainer")
    parser.add_argument("--profile", action="store_true", help="print the peak RSS of each phase of each job")
    parser.add_argument("--trainer-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trainer_child:
        train, output, hp, bf16 = args.trainer_child
        trainer_job(Path(train), Path(output), json.loads(hp), bf16 == "1")
        return
    from textfit.data.channels import read_channel
    from textfit.training.loop import cpu_has_bf16

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = channel(root / "data", args.set, args.rows)
        rows = len(read_channel(train).texts)
        print(f"set {args.set}: {train}", flush=True)
        results: dict[str, tuple[int, float]] = {}
        # textfit first: the Trainer's recipe takes the settings textfit resolved on these rows
        mb, seconds, peaks = run([sys.executable, "-m", "textfit", "train", "--train", str(train), "--output",
                                  str(root / "textfit")], root / "textfit.log", args.profile)
        hp = json.loads((root / "textfit" / "textfit.json").read_text())["hyperparameters"]
        if "textfit" in args.only:
            results["textfit"] = (mb, seconds)
            report("textfit train (defaults)", mb, seconds, peaks, args.profile)
        if "trainer" in args.only:
            mb, seconds, peaks = run([sys.executable, __file__, "--trainer-child", str(train), str(root / "trainer"),
                                      json.dumps(hp), "1" if cpu_has_bf16() else "0"],
                                     root / "trainer.log", args.profile)
            results["trainer"] = (mb, seconds)
            report("HF Trainer recipe", mb, seconds, peaks, args.profile)
    settings = ", ".join(f"{k} {hp[k]}" for k in ("epochs", "learning_rate", "batch_size", "max_seq_length"))
    print(f"\n{args.set}, {rows} rows ({settings}; {'bf16' if cpu_has_bf16() else 'fp32'}):")
    for name, (mb, seconds) in results.items():
        print(f"  {name}: peak RSS {mb} MB, {seconds:.0f} s")
    if len(results) == 2:
        print(f"  textfit's peak / the Trainer's: {results['textfit'][0] / results['trainer'][0]:.2f}")


def report(name: str, mb: int, seconds: float, peaks: dict[str, tuple[int, float]], profile: bool) -> None:
    print(f"{name}: peak RSS {mb} MB in {seconds:.0f} s", flush=True)
    if profile:
        for phase, (peak, at) in sorted(peaks.items(), key=lambda kv: kv[1][1]):
            print(f"  {peak:6d} MB at {at:6.1f} s  after: {phase}", flush=True)


if __name__ == "__main__":
    main()
