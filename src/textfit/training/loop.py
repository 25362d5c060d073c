"""The training loop, in plain sight: optimizers, warm-up schedule, evaluation, early stopping, metric lines.

The epoch line is Keras's `verbose=2` line that SageMaker's tuner parses (`val_accuracy: 0.8717`), followed by
the documented `val_accuracy=0.8717` form (README: Tune), so either regex finds the metric.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from textfit.data import batching
from textfit.data.batching import Batch, Encoded
from textfit.errors import DataError, HyperparameterError, TrainingInterrupted
from textfit.hyperparameters import Hyperparameters, parse_class_weights
from textfit.model import architectures
from textfit.training import distributed, kernels, optimizers
from textfit.training.checkpoints import Checkpointer, LoopState

log = logging.getLogger("textfit")


# ---------------------------------------------------------------------------------------------- devices


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# A native bf16 flag does not make bf16 training faster everywhere. Measured (a training step of MiniLM, batch 32;
# bench/step_bench.py): bf16 about 2.8x fp32's rate on a Zen 4 EPYC (avx512_bf16) and on Xeons with AMX, but
# 0.69x on a Xeon whose AMX is hidden from the guest (avx512_bf16 listed, no amx flags: 2,163 against 1,500 ms at
# 128 tokens, 272 against 190 at 14). A bf16 matrix product against an fp32 one predicts it: 6.6x on the AMX Xeon
# (train_bench's floor line: 2,423 against 366 GFLOP/s), 0.6-0.8x on the hidden-AMX one (cpu_bf16_speedup).
# Auto takes bf16 where it is at least this much faster.
BF16_MIN_SPEEDUP = 1.25


def cpu_bf16_flag() -> str | None:
    """The CPU feature that computes bf16 natively (avx512_bf16, AMX), None without one. oneDNN also runs bf16
    on plain AVX-512 CPUs (Skylake, Cascade Lake) by emulation, slower and less precise than fp32: that is not
    native, so it is not counted."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)
    except OSError:
        pass
    return None


@functools.cache
def cpu_bf16_speedup() -> float:
    """bf16's rate over fp32's for a matrix product of a feed-forward layer's size (512 x 384 by 384 x 1536) on
    this CPU and this process's threads: the fastest of eight of each, taken in turn (a drift in the machine's
    speed falls on both), once a process (about 50 ms). Its own generator: the training's random stream, seeded
    before this runs, is left as it was."""
    generator = torch.Generator().manual_seed(0)
    operands = {dtype: (torch.randn(512, 384, generator=generator).to(dtype),
                        torch.randn(384, 1536, generator=generator).to(dtype))
                for dtype in (torch.float32, torch.bfloat16)}
    fastest = dict.fromkeys(operands, float("inf"))
    for a, b in operands.values():
        torch.matmul(a, b)  # the first call picks and prepares the kernel
    for _ in range(8):
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            torch.matmul(a, b)
            fastest[dtype] = min(fastest[dtype], time.perf_counter() - start)
    return fastest[torch.float32] / max(fastest[torch.bfloat16], 1e-9)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 matmuls natively and they run faster than fp32's here."""
    return cpu_bf16_flag() is not None and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting, None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def _precision_reason(device: torch.device, precision: str) -> str:
    if precision != "auto":
        return f"precision={precision}"
    if device.type == "cuda":
        return "auto: mixed precision on the GPU"
    flag = cpu_bf16_flag()
    if flag is None:
        return "auto: this CPU has no native bf16"
    speedup = cpu_bf16_speedup()
    if speedup < BF16_MIN_SPEEDUP:
        return (f"auto: this CPU has {flag}, but its bf16 matrix products run at {speedup:.1f}x fp32's rate, "
                "no faster")
    return f"auto: the CPU computes bf16 natively ({flag}; its bf16 matrix products run at {speedup:.1f}x fp32's rate)"


# Training on a CPU, transformers' default SDPA attention is slow: in bf16 it runs oneDNN's flash-attention
# kernel, whose backward pass is slow at the lengths classifiers read, and with dropout on the attention
# probabilities it falls back to a path with torch's slowest dropout. Measured on all-MiniLM-L6-v2, batch 32,
# 2 cores (ms a step): in bf16 without dropout, SDPA 134 and eager attention 83 at 14 tokens, 742 and 507 at 128,
# 1,546 and 1,323 at 256; at 512 eager is slower (4,634 against 3,750) and keeps 1.4 GB more for the backward
# pass. In fp32 with dropout at 128 tokens: SDPA 1,804, eager 1,628 (peak RSS 2,375 MB), kernels.attention
# (recomputes the probabilities in the backward pass) 1,593 (1,969 MB); bench/step_bench.py's run: eager 1,806
# (2,550 MB), recomputing 1,860 (1,908 MB), kept for the memory. In bf16 the recomputing one is slower than eager
# (657 against 562 ms), so bf16 keeps eager. Inference (validation, serving) keeps the model's own.
CPU_ATTENTION_UP_TO = 256


def training_attention(device: torch.device, dtype: torch.dtype | None, longest: int) -> str | None:
    """The attention implementation the training steps run, None to keep the model's own."""
    if device.type != "cpu" or longest > CPU_ATTENTION_UP_TO:
        return None
    return "eager" if dtype is not None or not kernels.enabled else kernels.register_attention()


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


# ---------------------------------------------------------------------------------------------- the head


def l2_penalty(model: nn.Module, factor: float) -> torch.Tensor | float:
    """Keras's l2 kernel regularizer on the head: factor * sum of squared weights, added to the loss."""
    if factor == 0:
        return 0.0
    return factor * sum(p.float().pow(2).sum() for n, p in architectures.head_parameters(model)
                        if p.ndim >= 2 and p.requires_grad)  # a mean-pooled head leaves some layers unused


# ---------------------------------------------------------------------------------------------- metrics


@dataclass
class EpochMetrics:
    loss: float
    accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float = 0.0
    steps: int = 0
    val_f1_micro: float | None = None
    """Multi-label only: micro-averaged F1 at 0.5 over the validation rows, which picks the kept epoch."""
    val_f1_macro: float | None = None

    def as_dict(self, full: bool = False) -> dict[str, float | None]:
        out: dict[str, float | None] = {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "seconds": round(self.seconds, 3),
        }
        if self.val_f1_micro is not None:
            out.update(val_f1_micro=self.val_f1_micro, val_f1_macro=self.val_f1_macro)
        if full:  # for a checkpoint: everything needed to rebuild the metrics
            out["steps"] = self.steps
        return out


def metric_line(m: EpochMetrics) -> str:
    """Keras verbose=2 epoch line, as SageMaker's job logs show it (README: Train)."""
    line = f"{m.steps}/{m.steps} - {m.seconds:.0f}s - loss: {m.loss:.4f} - accuracy: {m.accuracy:.4f}"
    if m.val_accuracy is not None:
        line += f" - val_loss: {m.val_loss:.4f} - val_accuracy: {m.val_accuracy:.4f}"
    if m.val_f1_micro is not None:
        line += f" - val_f1_micro: {m.val_f1_micro:.4f} - val_f1_macro: {m.val_f1_macro:.4f}"
    return line


def log_epoch(epoch: int, epochs: int, m: EpochMetrics) -> None:
    log.info("Epoch %d/%d", epoch, epochs)
    log.info(metric_line(m))
    if m.val_accuracy is not None:  # the form of the documented tuning regex `val_accuracy=([0-9\.]+)`
        extra = "" if m.val_f1_micro is None else f" val_f1_micro={m.val_f1_micro:.4f} val_f1_macro={m.val_f1_macro:.4f}"
        log.info("epoch=%d val_loss=%.4f val_accuracy=%.4f%s", epoch, m.val_loss, m.val_accuracy, extra)


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, int]:
    """Summed loss and the number of correct predictions: the one place both are computed, for training and
    evaluation alike. One label per row: (class-weighted) cross-entropy. Several (a 0/1 matrix): binary
    cross-entropy per label, averaged over the labels of a row (`weights` weigh each label's positives), and a
    row is correct when every label is right at 0.5."""
    if labels.dtype.is_floating_point:
        per_label = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=weights,
                                                                   reduction="none")
        return per_label.mean(dim=1).sum(), int(((logits > 0) == (labels > 0.5)).all(dim=1).sum())
    loss = nn.functional.cross_entropy(logits.float(), labels, weight=weights, reduction="sum")
    return loss, int((logits.argmax(-1) == labels).sum())


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    f1_micro: float | None = None
    f1_macro: float | None = None


# Kept by hand, not sklearn.metrics.f1_score: evaluate() streams batches and adds up per-label counts (over workers
# too, in one all-reduce of 3 x labels numbers), while f1_score wants every row's predictions in one process. Even
# given them, on 2 cores it took 21 ms for 2,000 rows x 20 labels and 1.4 s for 20,000 x 200 (micro and macro),
# every epoch, against 0.05 ms here. It agrees with f1_score(average="micro"/"macro", zero_division=0) on the same
# predictions (tests/training/test_training.py).
def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[float, float]:
    """Micro and macro F1 from per-label counts (a label with no positives and no predictions scores 0)."""
    micro = float(2 * tp.sum() / max(float(2 * tp.sum() + fp.sum() + fn.sum()), 1.0))
    per_label = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    return micro, float(per_label.mean())


@torch.inference_mode()
def evaluate(model: nn.Module, data: Encoded, batch_size: int, device: torch.device, dtype: torch.dtype | None,
             l2: float = 0.0, features: torch.Tensor | None = None) -> Evaluation:
    """Loss and accuracy over a whole labelled set (and for multi-label data, F1 at 0.5); the loss includes the
    head's L2 term, as Keras reports it.

    `features`: every row's features from `embed` (a frozen encoder's, computed once): only the head runs.
    With several workers each scores every W-th row and the sums are added up: the whole set, once.
    """
    world = distributed.current()
    model.eval()
    rows = list(range(world.rank, len(data), world.size))
    lengths = [len(data.input_ids[r]) for r in rows]
    total: float = 0.0
    correct: float = 0  # a count, until all_sum hands the sums back as floats
    counts = torch.zeros((3, data.n_labels), dtype=torch.float64)  # true positives, false positives, false negatives
    for group in batching.plan_batches(lengths, batch_size * 2, shuffle=False):
        mine = [rows[i] for i in group]
        if features is not None:
            labels = data.label_tensor(mine).to(device)
            with autocast(device, dtype):
                logits = architectures.head(model, features[mine])
        else:
            batch = batching.collate(data, mine).to(device)
            labels = batch.labels  # type: ignore[assignment]
            with autocast(device, dtype):
                logits = model(**batch.inputs).logits
        loss, right = batch_loss(logits, labels)
        total += float(loss)
        correct += right
        if data.n_labels:
            predicted, truth = (logits > 0).cpu(), (labels > 0.5).cpu()
            counts += torch.stack([(predicted & truth).sum(0), (predicted & ~truth).sum(0),
                                   (~predicted & truth).sum(0)]).double()
    sums = distributed.all_sum([total, correct, len(rows), *counts.flatten().tolist()], device)
    total, correct, n = sums[:3]
    result = Evaluation(total / n + float(l2_penalty(model, l2)), correct / n)  # inference mode: no gradient
    if data.n_labels:
        tp, fp, fn = torch.tensor(sums[3:], dtype=torch.float64).reshape(3, data.n_labels)
        result.f1_micro, result.f1_macro = _f1(tp, fp, fn)
    return result


# ---------------------------------------------------------------------------------------------- progress


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    # A bar with rate and time left on a terminal; on a pipe (SageMaker, CI) only the epoch lines.
    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not sys.stderr.isatty(), file=sys.stderr)


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0
    """1-based epoch whose weights were kept."""
    stopped_early: bool = False


def _is_better(m: EpochMetrics, best: EpochMetrics | None) -> bool:
    """Higher val_accuracy wins (multi-label: val_f1_micro, as exact matches are rare); an equal one with a
    lower val_loss too (small sets tie often)."""
    if best is None or m.val_accuracy is None or best.val_accuracy is None:
        return True
    score, best_score = ((m.val_f1_micro, best.val_f1_micro) if m.val_f1_micro is not None
                         else (m.val_accuracy, best.val_accuracy))
    if score != best_score:
        return score > best_score  # type: ignore[operator]
    return m.val_loss < best.val_loss  # type: ignore[operator]


class _Head(nn.Module):
    """The classification layer alone, on cached features: what DistributedDataParallel wraps when the
    encoder is frozen, so that the head's gradients are averaged over workers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return architectures.head(self.model, features)


@torch.inference_mode()
def embed(model: nn.Module, data: Encoded, batch_size: int, device: torch.device,
           dtype: torch.dtype | None) -> torch.Tensor:
    """The frozen encoder's features of every row, computed once (train_only_on_top_layer): what the
    architecture's head reads, so that the head trained on them is the head the saved model runs.

    Each worker embeds its shard (every W-th row) and the shards are gathered, so every worker holds all.
    """
    world = distributed.current()
    model.eval()
    rows = list(range(world.rank, len(data), world.size))
    feats: torch.Tensor | None = None
    lengths = [len(data.input_ids[r]) for r in rows]
    for group in batching.plan_batches(lengths, batch_size * 2, shuffle=False):
        batch = batching.collate(data, [rows[i] for i in group]).to(device)
        with autocast(device, dtype):
            out = architectures.features(model, batch.inputs).float()
        if feats is None:
            feats = torch.zeros((len(rows), out.shape[-1]), device=device)
        feats[group] = out
    assert feats is not None  # a training set is never empty
    return distributed.all_gather_rows(feats, rows, len(data), world)


def _plan(lengths: list[int], batch_size: int, seed: int, world: distributed.World) -> list[list[int]]:
    """The global batches of an epoch, the same on every worker; each has a row for every worker."""
    return batching.plan_batches(lengths, batch_size, shuffle=True, seed=seed, min_size=world.size)


def _balanced(labels: list[int], n_classes: int) -> torch.Tensor:
    """scikit-learn's balanced weights, n_rows / (n_classes * rows of the class), over the model's classes.

    compute_class_weight refuses a class without rows (a model trained further on data that lacks one) and divides
    by the classes it sees: its weights are rescaled to all n_classes, and a class without rows weighs as if it had
    one (the loss never uses it).
    """
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(labels)
    present = np.unique(y)
    weights = np.full(n_classes, len(labels) / n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=y) * (len(present) / n_classes)
    return torch.from_numpy(weights).float()


def class_weights(spec: str, labels: list[Any], n_classes: int, multi_label: bool = False) -> torch.Tensor | None:
    """The loss weight of each class for class_weights=none|balanced|w1,w2,... (None: unweighted). For
    multi-label data they weigh each label's positives (BCE's pos_weight); balanced: negatives / positives."""
    parsed = parse_class_weights(spec)
    if parsed == "none":
        return None
    if parsed == "balanced" and multi_label:  # by hand: scikit-learn weighs classes or rows, not a label's positives
        positives = torch.zeros(n_classes, dtype=torch.float64)
        for row in labels:
            positives[row] += 1
        return ((len(labels) - positives) / positives.clamp(min=1)).clamp(min=1e-3).float()
    if parsed == "balanced":
        return _balanced(labels, n_classes)
    if len(parsed) != n_classes:
        raise HyperparameterError(f"class_weights={spec!r} gives {len(parsed)} weights but the data has {n_classes} "
                                  "classes; give one weight per class, in class order")
    return torch.tensor(parsed, dtype=torch.float32)


def train(model: architectures.Model, train_data: Encoded, val_data: Encoded | None, hp: Hyperparameters,
          device: torch.device | None = None, on_epoch: Callable[[int, EpochMetrics], None] | None = None,
          checkpoint: Checkpointer | None = None) -> TrainResult:
    """Fine-tune `model` in place and leave it holding the weights of the best epoch by val_accuracy.

    In a distributed job (distributed.py) every worker runs this same loop on its share of each global batch.
    `on_epoch(epoch, metrics)` sees each epoch's metrics; hyperparameter tuning reports them to its pruner there,
    and stops a hopeless trial by raising. With `checkpoint`, a checkpoint is written at each epoch end and, once
    `checkpoint.stop` is requested, at the next step boundary (then TrainingInterrupted); a run with the same
    checkpoint folder resumes where the last one stopped. Nothing beyond the model and this thread is changed: no
    signal handler (the train commands install theirs), no allocator setting (kernels.keep_freed_memory), and the
    faster dropout reaches this thread's calls only (kernels.fast_dropout).
    """
    world = distributed.current()
    if len(train_data) < world.size:
        raise DataError(f"{len(train_data)} training rows cannot be shared by {world.size} workers; add rows or "
                        "use fewer workers")
    device = device or (distributed.device_for(world) if world.active else pick_device())
    dtype = autocast_dtype(device, hp.precision)
    model.to(device)
    frozen = hp.train_only_on_top_layer
    cache = frozen and architectures.supports_feature_cache(model)
    if frozen and not cache:
        log.info("train_only_on_top_layer: %s has no feature cache in textfit, so the frozen encoder runs at "
                 "every step (slower, same result)", architectures.describe(model))
    table = architectures.token_embeddings(model)
    if frozen:
        model.base_model.requires_grad_(False)
    elif table is not None:  # set either way: a model trained before in this process may have it frozen
        table.requires_grad_(not hp.freeze_token_embeddings)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = optimizers.OPTIMIZERS[hp.optimizer](params, hp)
    lengths = [len(ids) for ids in train_data.input_ids]
    steps_per_epoch = len(_plan(lengths, hp.batch_size, hp.seed, world))
    schedule = None
    if hp.optimizer == "adamw":  # warm-up applies to adamw only (README: Hyperparameters)
        schedule = optimizers.warmup_schedule(optimizer, steps_per_epoch * hp.epochs, hp.warmup_steps_fraction)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    attention = None if cache else training_attention(device, dtype, max(lengths))
    log.info("Training on %s with %s precision (%s): %d rows, %d steps per epoch%s%s%s", device.type,
             "fp32" if dtype is None else str(dtype).removeprefix("torch."), _precision_reason(device, hp.precision),
             len(train_data), steps_per_epoch, ", encoder frozen (features computed once)" if cache else "",
             ", token embeddings frozen" if table is not None and hp.freeze_token_embeddings and not frozen else "",
             f", {attention} attention" if attention else "")
    if world.active:
        log.info("Distributed over %d workers; %s", world.size, distributed.split_message(hp.batch_size, world))
    # Validation computes in fp32 on the CPU, as the served model does: the metric that picks the epoch (and
    # that tuning maximises) is the served model's; on a GPU in the training precision, as it serves there too.
    val_dtype = dtype if device.type == "cuda" else None
    val_feats = None
    if cache:
        train_feats = embed(model, train_data, hp.batch_size, device, dtype)
        train_labels = train_data.label_tensor(range(len(train_data))).to(device)
        if val_data is not None:  # the frozen encoder's validation features, once: each epoch then runs the head
            val_feats = embed(model, val_data, hp.batch_size, device, val_dtype)
    net = distributed.wrap(_Head(model) if cache else model, world, device)
    multi = bool(train_data.n_labels)
    weights = class_weights(hp.class_weights, train_data.labels, model.config.num_labels, multi)  # type: ignore[arg-type]
    # what each row adds to the mean the loss is divided by (class weights in single-label cross-entropy)
    row_weight = (torch.ones(len(train_data)) if weights is None or multi
                  else weights[torch.tensor(train_data.labels)]).double()
    if weights is not None:
        log.info("Class weights: %s", ", ".join(f"{w:.3f}" for w in weights.tolist()))
        weights = weights.to(device)

    state, best_state = LoopState(), None
    if checkpoint is not None and (restored := checkpoint.load(model, optimizer, schedule, scaler)):
        state, best_state = restored
        log.info("Resuming from checkpoint %s: epoch %d, step %d of %d", checkpoint.folder, state.epoch, state.step,
                 steps_per_epoch)
    result = TrainResult([EpochMetrics(**m) for m in state.history], state.best_epoch, state.stopped_early)
    best = result.history[state.best_epoch - 1] if state.best_epoch else None
    for epoch in range(state.epoch, hp.epochs + 1):
        start = time.perf_counter()
        model.train()
        if frozen:
            model.base_model.eval()  # a frozen encoder runs in inference mode, as a non-trainable Keras layer
        total, weight_seen, correct, seen = state.totals if epoch == state.epoch else [0.0, 0.0, 0, 0]
        done = state.step if epoch == state.epoch else 0  # steps a resumed epoch has already taken
        bar = _progress(steps_per_epoch, f"epoch {epoch}/{hp.epochs}")
        bar.update(done)
        with (architectures.attention(model, attention), kernels.fast_dropout(device),
              architectures.first_position_only(model)):
            for step, rows in enumerate(_plan(lengths, hp.batch_size, hp.seed + epoch, world)):
                if step < done:
                    continue
                if checkpoint is not None and _stop_requested(checkpoint, device):
                    state = LoopState(epoch, step, [total, weight_seen, correct, seen],
                                      [m.as_dict(full=True) for m in result.history], result.best_epoch, state.wait,
                                      state.es_best, False)
                    _interrupt(checkpoint, state, model, optimizer, schedule, scaler, best_state, world)
                mine = distributed.my_rows(rows, world)
                if cache:
                    batch = Batch(mine, {"features": train_feats[mine]}, train_labels[mine])
                else:
                    batch = batching.collate(train_data, mine).to(device)
                with autocast(device, dtype):
                    logits = net(batch.inputs["features"]) if cache else net(**batch.inputs).logits
                ce_sum, right = batch_loss(logits, batch.labels, weights)  # type: ignore[arg-type]
                # The whole global batch's (weighted) mean; times the workers, as DDP averages their gradients.
                batch_weight = float(row_weight[rows].sum())
                loss = ce_sum * (world.size / batch_weight) + l2_penalty(model, hp.regularizers_l2)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if hp.optimizer == "adamw":
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
                scaler.step(optimizer)
                scaler.update()
                if schedule is not None:
                    schedule.step()
                total += float(ce_sum.detach())
                weight_seen += float(row_weight[mine].sum())
                correct += right
                seen += len(mine)
                bar.update(1)
                bar.set_postfix(loss=f"{total / weight_seen:.4f}", accuracy=f"{correct / seen:.4f}", refresh=False)
        bar.close()
        total, weight_seen, correct, seen = distributed.all_sum([total, weight_seen, correct, seen], device)
        with torch.no_grad():  # Keras reports the loss with the regularization term
            l2 = float(l2_penalty(model, hp.regularizers_l2))
        metrics = EpochMetrics(total / weight_seen + l2, correct / seen, steps=steps_per_epoch)
        if val_data is not None:
            scored = evaluate(model, val_data, hp.batch_size, device, val_dtype, hp.regularizers_l2, val_feats)
            metrics.val_loss, metrics.val_accuracy = scored.loss, scored.accuracy
            metrics.val_f1_micro, metrics.val_f1_macro = scored.f1_micro, scored.f1_macro
        kernels.release_freed_memory()
        metrics.seconds = time.perf_counter() - start
        result.history.append(metrics)
        log_epoch(epoch, hp.epochs, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

        if _is_better(metrics, best):
            best, result.best_epoch = metrics, epoch
            if val_data is not None:  # without validation the last epoch is kept: the weights as they are
                best_state = _trained_weights(model, into=best_state)
        stop = False
        if val_data is not None and hp.early_stopping:
            # Keras EarlyStopping: an improvement must beat the best by more than min_delta.
            if metrics.val_accuracy - hp.early_stopping_min_delta > state.es_best:  # type: ignore[operator]
                state.wait, state.es_best = 0, metrics.val_accuracy  # type: ignore[assignment]
            else:
                state.wait += 1
            if state.wait >= hp.early_stopping_patience:
                log.info("Early stopping: val_accuracy has not improved for %d epochs", state.wait)
                result.stopped_early = stop = True
        if checkpoint is not None and world.is_main:  # an epoch's work is never lost to a kill
            checkpoint.save(LoopState(hp.epochs + 1 if stop else epoch + 1, 0, [0.0, 0.0, 0, 0],
                                      [m.as_dict(full=True) for m in result.history], result.best_epoch, state.wait,
                                      state.es_best, stop), model, optimizer, schedule, scaler, best_state,
                            finished=stop or epoch == hp.epochs)
        if stop:
            break

    if best_state is not None and result.best_epoch != len(result.history):
        model.load_state_dict(best_state, strict=False)  # the trained weights; the frozen ones never changed
    _log_best(result)
    return result


def _trained_weights(model: nn.Module, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A copy of the weights training changes, off the training device: the frozen encoder of
    train_only_on_top_layer (or a mean-pooled head's unused layers) is not copied, as it never changes. Copied
    into `into`'s tensors where it holds them all, so that a better epoch does not hold two copies at once."""
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if into is not None and into.keys() == trained.keys() and all(
            into[n].shape == p.shape and into[n].dtype == p.dtype for n, p in trained.items()):
        for n, p in trained.items():
            into[n].copy_(p)
        return into
    return {n: p.to("cpu", copy=True) for n, p in trained.items()}


def _stop_requested(checkpoint: Checkpointer, device: torch.device) -> bool:
    """A signal arrived here or, in a distributed job, at any worker: all stop at the same step."""
    local = 1.0 if checkpoint.stop.signum is not None else 0.0
    return distributed.all_sum([local], device)[0] > 0


def _interrupt(checkpoint: Checkpointer, state: LoopState, model: nn.Module, optimizer: torch.optim.Optimizer,
               schedule: Any, scaler: torch.amp.GradScaler, best_state: dict[str, torch.Tensor] | None,
               world: distributed.World) -> None:
    if world.is_main:
        checkpoint.save(state, model, optimizer, schedule, scaler, best_state)
    signum = checkpoint.stop.signum or signal.SIGTERM
    raise TrainingInterrupted(signum, f"training stopped by {signal.Signals(signum).name} at epoch {state.epoch}, "
                                      f"step {state.step}; the checkpoint is in {checkpoint.folder}: run the same "
                                      "command again to resume")


def _log_best(result: TrainResult) -> None:
    """After training, the kept epoch's metrics: AMT reads the last value it sees (IC-TF does the same)."""
    best = result.history[result.best_epoch - 1]
    if best.val_accuracy is None:
        return
    chosen_by = "val_f1_micro" if best.val_f1_micro is not None else "val_accuracy"
    log.info("Setting weights to model with maximum %s at epoch %d/%d:", chosen_by, result.best_epoch,
             len(result.history))
    names = ("loss", "accuracy", "val_loss", "val_accuracy") + (
        ("val_f1_micro", "val_f1_macro") if best.val_f1_micro is not None else ())
    for name in names:
        log.info("- %s: %.4f", name, getattr(best, name))
    log.info("val_accuracy=%.4f", best.val_accuracy)
    if best.val_f1_micro is not None:
        log.info("val_f1_micro=%.4f", best.val_f1_micro)
