"""Training recipes: fine-tuning for data of ordinary size, and a recipe built for small data.

Fine-tuning (`finetune`) trains the encoder with its own head, new and random, on 80% of the rows and keeps the
epoch the other 20% like best. With 8 rows a class that fails: 3 validation rows choose nothing, 13 rows give one
optimizer step an epoch, and a random head on the encoder's pooler output is a poor start (README: Small data has
the measurements).

The small-data recipe (`fewshot`) is LP-FT (Kumar et al., 2022) on the features sentence encoders are made for
(as SetFit's head reads them, Tunstall et al., 2022):

1. the head reads the mean of the token vectors, L2-normalised (architectures.MeanPooled);
2. it starts as the logistic regression fitted on the frozen encoder's features of every training row (the
   linear probe), with the L2 penalty regularizers_l2 puts on the head, so the probe is the optimum of the same
   loss that fine-tuning then lowers; it starts from the classes' mean features instead where that regression
   would take gigabytes or minutes (very many classes, or labels: one regression each), or where it gets fewer
   training rows right than they do (fit_probe);
3. encoder and head are then fine-tuned together on every row (no held-out split unless one is asked for) for a
   fixed budget of steps at a small learning rate, and the last weights are kept; the token-embedding table
   stays as pretrained here too (freeze_token_embeddings: within a test row of training it on both small-data
   sets measured, docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from textfit.data import batching
from textfit.hyperparameters import Hyperparameters
from textfit.model import architectures
from textfit.training import distributed
from textfit.training import loop as training

log = logging.getLogger("textfit")

FEWSHOT = "fewshot"
FINETUNE = "finetune"

# auto picks the small-data recipe below this many training rows per class (on average). Measured with MiniLM
# on test rows over 5 samples (docs/benchmarks.md): ahead of fine-tuning on BBC News at 32 rows a class (0.944
# against 0.908) and at 64 (0.954 against 0.932); at 128 still ahead on BBC News (0.962 against 0.952) and on
# Debian descriptions (0.889 against 0.877), where fine-tuning scored below the recipe's 64-a-class models; at
# 192 ahead on BBC News (0.964 against 0.955), at 256 fine-tuning is ahead (0.966 against 0.962; 3 samples
# each). So fine-tuning takes over from 200 a class, where its 20% split holds 40 rows a class to pick an epoch:
# the recipe SageMaker's users know.
FEWSHOT_BELOW_ROWS_PER_CLASS = 200
# The fine-tuning budget in optimizer steps, whatever the number of rows: many passes over 40 rows, a few over
# 400 (the epochs are derived from it unless given). Measured against 80 on development rows, never the test
# rows (bench/recipe_bench.py, docs/benchmarks.md): +0.6 and +0.9 points on Debian descriptions at 8 and 64 rows
# a class, level on BBC News, for twice the training time (still under SetFit's).
FEWSHOT_STEPS = 160
FEWSHOT_DEFAULTS = {"optimizer": "adamw", "learning_rate": 3e-5, "batch_size": 16, "warmup_steps_fraction": 0.1}
# The logistic regression holds rows x classes matrices of float64 (probabilities, gradients) while it runs:
# past this many cells the head starts from the class means. Measured with 384 features (bench/probe_bench.py,
# docs/benchmarks.md): 4M cells took 6 s and 180 MB more memory, 32M 45 s and 510 MB, 80M 23 s and 1.0 GB,
# 256M 62 s and 2.6 GB (the class means: under a second and 75 MB).
PROBE_MAX_CELLS = 32_000_000
# Multi-label data fits one regression a label, each about 0.3 s on 2,000-16,000 rows of 384 features
# (2 cores, whatever the rows at these sizes): past this many labels, a minute or more, the class means start.
PROBE_MAX_LABELS = 200
# Cosine similarity to a class mean, times this, is the class-mean head's logit: a 0.1 difference in similarity
# is 2 in logits, as a contrastive loss's temperature of 0.05 makes it.
CENTROID_SCALE = 20.0
# Multi-label fine-tuning, unless given: each label's positives weighed by its negatives / positives in the loss
# (class_weights=balanced), and twice the model's epochs. With the single-label defaults a label's sigmoid learns
# slowly from its few positives: on Debian's debtags (bench/multilabel_bench.py, 2,000 rows, 10 labels) the last
# of 5 epochs was still the best and test micro-F1 0.582; positive weights 0.651, 10 epochs 0.639, both 0.681
# (the best epoch the 9th), where the Hugging Face Trainer given the same weights, 10 epochs and tuned
# thresholds reached 0.679 (docs/benchmarks.md).
MULTI_LABEL_EPOCHS_FACTOR = 2
# What the recipe does not use unless asked to hold rows out (a validation channel, or any of these given).
HOLD_OUT_NAMES = ("validation_split_ratio", "early_stopping", "calibrate")
UNUSED = {"dropout_rate": "the mean-pooled head has no dropout"}


@dataclass(frozen=True)
class Recipe:
    name: str
    reason: str
    hp: Hyperparameters
    hold_out: bool
    """Whether validation rows are used: a channel, or a split of the training rows by validation_split_ratio
    (finetune: always, as SageMaker does; a ratio of 0 then means none)."""
    new_head: bool
    """Whether the recipe builds its head (a mean-pooled one for fewshot) rather than keeping a trained one."""


def rows_per_class(n_rows: int, n_classes: int) -> float:
    """Training rows a class, on average: what both small-data lines (the recipe's, long_texts') are drawn on."""
    return n_rows / max(n_classes, 1)


def choose(hp: Hyperparameters, given: Collection[str], n_rows: int, n_classes: int, *, validation: bool,
           new_head: bool) -> Recipe:
    """The recipe of a run and the hyperparameters it trains with.

    `given`: the canonical names the user set (their values are never overridden); `validation`: whether a
    validation channel was given; `new_head`: whether a new head is built (a fresh model, or
    reinitialize_top_layer on an artifact).
    """
    per_class = rows_per_class(n_rows, n_classes)
    if hp.training_recipe == FINETUNE:
        return _finetune("training_recipe=finetune", hp, given, new_head)
    if hp.training_recipe == FEWSHOT:
        reason = "training_recipe=fewshot"
    elif per_class < FEWSHOT_BELOW_ROWS_PER_CLASS:
        reason = (f"auto: {n_rows} labelled rows for {n_classes} classes ({per_class:.0f} a class, fewer than "
                  f"{FEWSHOT_BELOW_ROWS_PER_CLASS})")
    else:
        return _finetune(f"auto: {n_rows} labelled rows for {n_classes} classes ({per_class:.0f} a class, "
                         f"{FEWSHOT_BELOW_ROWS_PER_CLASS} or more)", hp, given, new_head)
    hold_out = validation or any(name in given for name in HOLD_OUT_NAMES) or hp.early_stopping or hp.calibrate
    values: dict[str, Any] = {k: v for k, v in FEWSHOT_DEFAULTS.items() if k not in given}
    kept = n_rows - math.floor(n_rows * hp.validation_split_ratio) if hold_out and not validation else n_rows
    batch = int(values.get("batch_size", hp.batch_size))
    if "epochs" not in given:
        values["epochs"] = max(1, math.ceil(FEWSHOT_STEPS / max(1, math.ceil(kept / batch))))
    return Recipe(FEWSHOT, reason, hp.with_values(**values), hold_out, new_head)


def _finetune(reason: str, hp: Hyperparameters, given: Collection[str], new_head: bool) -> Recipe:
    """Fine-tuning: the hyperparameters as resolved, and for multi-label data its own defaults for the names not
    given (MULTI_LABEL_EPOCHS_FACTOR says why)."""
    values: dict[str, Any] = {}
    if hp.multi_label and "class_weights" not in given:
        values["class_weights"] = "balanced"
    if hp.multi_label and "epochs" not in given:
        values["epochs"] = hp.epochs * MULTI_LABEL_EPOCHS_FACTOR
    if values:
        reason += "; multi-label: " + ", ".join(f"{k}={v}" for k, v in values.items())
    return Recipe(FINETUNE, reason, hp.with_values(**values) if values else hp, True, new_head)


def log_recipe(recipe: Recipe, given: Collection[str], trained: int, split_off: int) -> None:
    """The recipe, why (drawn on the labelled rows), the rows it trains on (`split_off` of the training channel's
    rows held out for validation), and which of SageMaker's hyperparameters it leaves unused."""
    held = f", {split_off} held out for validation" if split_off else ""
    log.info("Training recipe: %s (%s); %d rows trained%s", recipe.name, recipe.reason, trained, held)
    if recipe.name != FEWSHOT:
        return
    steps = "the epochs given" if "epochs" in given else f"about {FEWSHOT_STEPS} optimizer steps"
    head = ("a head on the mean of the token vectors, fitted first as a logistic regression on the frozen "
            "encoder's features (started from the class means with very many classes)" if recipe.new_head
            else "the model's trained head kept")
    log.info("Small-data recipe: %s; then encoder and head fine-tuned together for %s, keeping the last "
             "weights%s", head, steps, "" if not recipe.hold_out else " (or the best epoch on the validation rows)")
    unused = [f"{name} ({why})" for name, why in UNUSED.items()]
    if not recipe.hold_out:
        unused.append("validation_split_ratio, early_stopping, early_stopping_patience, early_stopping_min_delta (no "
                      "rows are held out: pass a validation channel or set validation_split_ratio to hold some out)")
    log.info("Not used by the small-data recipe: %s", "; ".join(unused))


def _probe_weights(feats: np.ndarray, labels: list[Any], n_classes: int, multi_label: bool, l2: float,
                   sample_weight: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights and biases of the logistic regression on frozen features (one per class, or per label).

    scikit-learn minimises C * sum(loss) + ||W||^2 / 2; the training loop minimises mean(loss) + l2 * ||W||^2,
    the same optimum at C = 1 / (2 * l2 * rows).
    """
    from sklearn.linear_model import LogisticRegression

    c = 1.0 / (2.0 * max(l2, 1e-6) * len(feats))
    # scikit-learn stops when every entry of the gradient of the mean loss is below tol; at a zero start a
    # class's entries are about (its share of the rows) x (a feature's size), so with thousands of classes the
    # default 1e-4 is met before the first step and the probe comes back all zeros (bench/probe_bench.py).
    tol = min(1e-4, 1e-3 / max(n_classes, 1))
    weight = np.zeros((n_classes, feats.shape[1]), dtype=np.float32)
    bias = np.zeros(n_classes, dtype=np.float32)
    if not multi_label:
        y = np.asarray(labels)
        present = np.unique(y)
        if len(present) == 1:  # one class in the data: it wins everywhere until training says otherwise
            bias[present[0]] = 1.0
            return weight, bias
        fit = LogisticRegression(C=c, max_iter=2000, tol=tol, random_state=seed).fit(feats, y,
                                                                                sample_weight=sample_weight)
        coef, intercept = fit.coef_, fit.intercept_
        if len(present) == 2:  # scikit-learn keeps one row for two classes: split it between them
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        weight[present], bias[present] = coef, intercept
        return weight, bias
    matrix = np.zeros((len(labels), n_classes), dtype=np.int64)
    for i, row in enumerate(labels):
        matrix[i, row] = 1
    for j in range(n_classes):
        positives = int(matrix[:, j].sum())
        if positives in (0, len(labels)):  # a label always off (or always on): its prior, no weights
            rate = (positives + 0.5) / (len(labels) + 1.0)
            bias[j] = math.log(rate / (1 - rate))
            continue
        fit = LogisticRegression(C=c, max_iter=2000, tol=tol, random_state=seed).fit(feats, matrix[:, j])
        weight[j], bias[j] = fit.coef_[0], fit.intercept_[0]
    return weight, bias


def _centroid_weights(feats: np.ndarray, labels: list[Any], n_classes: int, multi_label: bool,
                      class_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A head scoring each class by cosine similarity to the mean of its rows' (L2-normalised) features.

    Single-label: the bias is the class's smoothed log prior (its rows counted at their class weight).
    Multi-label: a label's logit is zero halfway between the mean similarity of its positive rows and of its
    negative ones; a label always off (or always on) gets its prior and no weights. Costs one pass over the
    rows, whatever the number of classes.
    """
    n, dim = feats.shape
    sums = np.zeros((n_classes, dim), dtype=np.float64)
    counts = np.zeros(n_classes, dtype=np.int64)
    for i, row in enumerate(labels):
        members = list(row) if multi_label else [row]
        sums[members] += feats[i]
        counts[members] += 1
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    centroids = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    weight = (CENTROID_SCALE * centroids).astype(np.float32)
    if not multi_label:
        mass = counts * (class_weights if class_weights is not None else 1.0)
        bias = np.log((mass + 0.5) / (mass.sum() + 0.5 * n_classes))
        return weight, bias.astype(np.float32)
    positive_sim = np.zeros(n_classes, dtype=np.float64)
    for i, row in enumerate(labels):
        members = list(row)
        positive_sim[members] += centroids[members] @ feats[i]
    all_sim = centroids @ feats.sum(axis=0)
    bias = np.zeros(n_classes, dtype=np.float64)
    for j in range(n_classes):
        if counts[j] in (0, n):
            rate = (counts[j] + 0.5) / (n + 1.0)
            weight[j], bias[j] = 0.0, math.log(rate / (1 - rate))
            continue
        midpoint = (positive_sim[j] / counts[j] + (all_sim[j] - positive_sim[j]) / (n - counts[j])) / 2
        bias[j] = -CENTROID_SCALE * midpoint
    return weight, bias.astype(np.float32)


def _training_accuracy(weight: np.ndarray, bias: np.ndarray, feats: np.ndarray, data: batching.Encoded,
                       chunk: int = 4096) -> float:
    """A head's accuracy on the training features (exact match for multi-label data), a chunk of rows at a
    time: rows x classes can be large."""
    right = 0
    for lo in range(0, len(data), chunk):
        rows = range(lo, min(lo + chunk, len(data)))
        logits = torch.from_numpy(feats[lo:rows.stop] @ weight.T + bias)
        truth = data.label_tensor(rows)
        hit = ((logits > 0) == (truth > 0.5)).all(dim=1) if data.n_labels else logits.argmax(-1) == truth
        right += int(hit.sum())
    return right / max(len(data), 1)


def fit_probe(model: nn.Module, data: batching.Encoded, hp: Hyperparameters,
              class_weights: torch.Tensor | None = None) -> float:
    """Start the mean-pooled head as the linear probe of the frozen encoder, or as the class-mean head where the
    probe is out of budget (PROBE_MAX_CELLS) or fits the training rows worse; returns its training accuracy.

    Fine-tuning lowers the loss from wherever the head starts, so a start that gets few training rows right
    wastes the small budget of steps. The probe can be that start: its L2 penalty (regularizers_l2) sums over
    every class's weights while the loss it buys down is at most log(classes), so with thousands of classes its
    weights shrink toward zero (at 4,000 classes the largest was 0.3), and a solver that stops early leaves them
    at zero (bench/probe_bench.py). The class-mean head has neither fault; whichever start gets more training
    rows right is kept.
    """
    world = distributed.current()
    device = distributed.device_for(world) if world.active else training.pick_device()
    model.to(device)
    feats = training.embed(model, data, hp.batch_size, device,
                           training.autocast_dtype(device, hp.precision)).cpu().float().numpy()
    last = architectures.adapter_for(model).last_layer(model)
    n_classes, multi = last.out_features, bool(data.n_labels)
    assert data.labels is not None
    weights = None if class_weights is None or multi else class_weights.numpy()
    means = _centroid_weights(feats, data.labels, n_classes, multi, weights)
    means_accuracy = _training_accuracy(*means, feats, data)
    cells = len(data) * n_classes
    if cells > PROBE_MAX_CELLS or (multi and n_classes > PROBE_MAX_LABELS):
        chosen, accuracy = means, means_accuracy
        budget = (f"{len(data)} rows x {n_classes} classes: past the {PROBE_MAX_CELLS:,} cells"
                  if cells > PROBE_MAX_CELLS else f"{n_classes} labels: past the {PROBE_MAX_LABELS}")
        how = (f"Head started from the class means of the frozen encoder's features ({budget} the linear probe "
               "is fitted on)")
    else:
        sample_weight = None if weights is None else weights[np.asarray(data.labels)]
        probe = _probe_weights(feats, data.labels, n_classes, multi, hp.regularizers_l2, sample_weight, hp.seed)
        probe_accuracy = _training_accuracy(*probe, feats, data)
        if probe_accuracy >= means_accuracy:
            chosen, accuracy, how = probe, probe_accuracy, "Linear probe on the frozen encoder's features"
        else:
            chosen, accuracy = means, means_accuracy
            how = (f"Head started from the class means of the frozen encoder's features (the linear probe, with "
                   f"regularizers_l2={hp.regularizers_l2:g} over {n_classes} classes, got {probe_accuracy:.4f} of "
                   f"the training rows right)")
    with torch.no_grad():
        last.weight.copy_(torch.from_numpy(chosen[0]))
        if last.bias is not None:
            last.bias.copy_(torch.from_numpy(chosen[1]))
    log.info("%s: training accuracy %.4f", how, accuracy)
    return accuracy
