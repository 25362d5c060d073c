from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import make_rows
from textfit.data import batching
from textfit.data.channels import read_channel
from textfit.hyperparameters import OPTIMIZERS, Hyperparameters
from textfit.model import architectures
from textfit.training import kernels, optimizers
from textfit.training import loop as training


def tiny_model(tiny_bert: Path, num_labels: int = 2, seed: int = 0) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=num_labels)
    return model, AutoTokenizer.from_pretrained(tiny_bert)


def data(tokenizer: object, n: int, seed: int) -> batching.Encoded:
    rows = make_rows(n, seed)
    return batching.encode(tokenizer, [t for _, t in rows], 32, [int(y) for y, _ in rows])  # type: ignore[arg-type]


def hp(**values: object) -> Hyperparameters:
    base = {"epochs": 4, "batch_size": 8, "learning_rate": 0.01, "precision": "fp32",
            "freeze_token_embeddings": False}  # a random tiny encoder learns its token table too (conftest.FAST)
    return Hyperparameters(**{**base, **values})  # type: ignore[arg-type]


def test_loss_falls_and_accuracy_rises_on_a_separable_set(tiny_bert: Path) -> None:
    model, tok = tiny_model(tiny_bert)
    result = training.train(model, data(tok, 64, 0), data(tok, 32, 1), hp(epochs=8))
    losses = [m.loss for m in result.history]
    assert losses[-1] < losses[0] * 0.5
    assert max(m.val_accuracy for m in result.history) >= 0.9  # type: ignore[type-var]


def test_seeded_runs_are_identical(tiny_bert: Path) -> None:
    runs = []
    for _ in range(2):
        model, tok = tiny_model(tiny_bert)
        runs.append([m.loss for m in training.train(model, data(tok, 32, 0), data(tok, 16, 1), hp(epochs=2)).history])
    assert runs[0] == runs[1]


def test_golden_losses_of_a_run_that_learns(tiny_bert: Path) -> None:
    """Pins the loop's numbers: a change to the loss, batching or optimizer mapping shows up here. The run is long
    enough to learn: the random encoder sits near ln 2 for three epochs, then the loss falls below a tenth of the
    first epoch's, every training row is classified right, and at least 14 of 16 unseen rows."""
    model, tok = tiny_model(tiny_bert)
    result = training.train(model, data(tok, 32, 0), data(tok, 16, 1), hp(epochs=6))
    losses = [m.loss for m in result.history]
    assert losses == pytest.approx([0.7043, 0.7128, 0.7019, 0.6082, 0.2411, 0.0386], abs=2e-3)
    assert losses[-1] < losses[0] / 10
    assert result.history[0].accuracy <= 0.5 and result.history[-1].accuracy == 1.0
    assert result.history[0].val_accuracy == 0.5 and result.history[-1].val_accuracy >= 0.875  # type: ignore[operator]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains(tiny_bert: Path, optimizer: str) -> None:
    model, tok = tiny_model(tiny_bert)
    before = model.classifier.weight.detach().clone()
    lr = 1.0 if optimizer == "adadelta" else 0.01
    result = training.train(model, data(tok, 16, 0), None, hp(epochs=1, optimizer=optimizer, learning_rate=lr))
    assert not torch.equal(before, model.classifier.weight)
    assert math.isfinite(result.history[0].loss)


def test_optimizer_mapping_carries_the_knobs() -> None:
    params = [("w", torch.nn.Parameter(torch.zeros(2, 2))), ("b", torch.nn.Parameter(torch.zeros(2)))]
    h = Hyperparameters(beta_1=0.8, beta_2=0.95, epsilon=1e-6, momentum=0.5, rho=0.7, initial_accumulator_value=0.2)
    adam = optimizers.OPTIMIZERS["adam"](params, h).defaults
    assert (adam["betas"], adam["eps"]) == ((0.8, 0.95), 1e-6)
    adamw = optimizers.OPTIMIZERS["adamw"](params, h)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]  # no decay on the bias
    assert optimizers.OPTIMIZERS["nesterov"](params, h).defaults["nesterov"] is True
    assert optimizers.OPTIMIZERS["sgd"](params, h).defaults["momentum"] == 0.5
    assert optimizers.OPTIMIZERS["rmsprop"](params, h).defaults["alpha"] == 0.7
    assert optimizers.OPTIMIZERS["adadelta"](params, h).defaults["rho"] == 0.7
    assert optimizers.OPTIMIZERS["adagrad"](params, h).defaults["initial_accumulator_value"] == 0.2
    # torch's fused kernel where it has one, the multi-tensor one elsewhere: one optimizer step was a third of a
    # short-text training step one tensor at a time
    for name in ("adam", "adamw", "sgd", "nesterov", "adagrad"):
        assert optimizers.OPTIMIZERS[name](params, h).defaults["fused"] is True, name
    for name in ("rmsprop", "adadelta"):
        assert optimizers.OPTIMIZERS[name](params, h).defaults["foreach"] is True, name


def _learning_rates(schedule: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    return rates


def test_the_warm_up_schedule_is_transformers_linear_one() -> None:
    """adamw's schedule is transformers' get_linear_schedule_with_warmup: it counts the warm-up from step 0 at 0,
    one step behind the hand-made one it replaced (0.1 at step 0, 1.0 at step 9); the decay is the same."""
    from transformers import get_linear_schedule_with_warmup

    def sgd() -> torch.optim.Optimizer:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    ours = _learning_rates(optimizers.warmup_schedule(sgd(), total_steps=100, warmup_fraction=0.1), 101)
    assert ours == _learning_rates(get_linear_schedule_with_warmup(sgd(), 10, 100), 101)
    assert ours[0] == 0.0 and ours[9] == pytest.approx(0.9) and ours[10] == pytest.approx(1.0)
    assert ours[55] == pytest.approx(0.5) and ours[100] == 0.0
    before = [(step + 1) / 10 for step in range(10)] + [max(0.0, (100 - step) / 90) for step in range(10, 101)]
    assert ours[1:11] == pytest.approx(before[:10]) and ours[10:] == pytest.approx(before[10:])
    assert _learning_rates(optimizers.warmup_schedule(sgd(), 10, 0.0), 11) == pytest.approx(
        [(10 - step) / 10 for step in range(11)])  # no warm-up: decay from the first step


def test_the_warm_up_schedule_resumes_from_its_json_state() -> None:
    """Checkpoints write the schedule's state_dict as JSON and load it into a fresh schedule."""
    def schedule() -> torch.optim.lr_scheduler.LambdaLR:
        return optimizers.warmup_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 50, 0.2)

    first = schedule()
    _learning_rates(first, 7)
    resumed = schedule()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert _learning_rates(resumed, 30) == _learning_rates(first, 30)


# F1 at 0.5 over 7 rows x 4 labels (tests/reports/test_metrics_sources.py's), and what the hand-made code gave
F1_TRUTH = [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]]
F1_PREDICTED = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0]]


def test_the_epoch_f1_from_counts_is_scikit_learns() -> None:
    from sklearn.metrics import f1_score

    truth, predicted = torch.tensor(F1_TRUTH).bool(), torch.tensor(F1_PREDICTED).bool()
    counts = [(predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0)]
    micro, macro = training._f1(*(c.double() for c in counts))
    assert micro == pytest.approx(f1_score(F1_TRUTH, F1_PREDICTED, average="micro", zero_division=0), rel=1e-12)
    assert macro == pytest.approx(f1_score(F1_TRUTH, F1_PREDICTED, average="macro", zero_division=0), rel=1e-12)
    assert (micro, macro) == pytest.approx((0.5, 0.36666666666666667), rel=1e-12)  # label 3: no positives, scores 0


def test_balanced_class_weights_are_scikit_learns() -> None:
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0, 0, 0, 1, 2, 2, 2, 2, 2]
    weights = training.class_weights("balanced", labels, 3)
    assert weights is not None and weights.dtype == torch.float32
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    torch.testing.assert_close(weights, torch.from_numpy(expected).float())
    torch.testing.assert_close(weights, torch.tensor([1.0, 3.0, 0.6]))
    # a class without rows (a model trained further on data without it), which scikit-learn refuses: n_classes
    # counts it, and it weighs as if it had one row, as before
    with pytest.raises(ValueError, match="classes should have valid labels that are in y"):
        compute_class_weight("balanced", classes=np.arange(4), y=np.array(labels))
    torch.testing.assert_close(training.class_weights("balanced", labels, 4), torch.tensor([0.75, 2.25, 0.45, 2.25]))


def test_early_stopping_stops_and_the_best_epoch_is_kept(tiny_bert: Path) -> None:
    model, tok = tiny_model(tiny_bert)
    # a learning rate this high makes val_accuracy stall quickly; patience 1 must then stop the run
    h = hp(epochs=30, early_stopping=True, early_stopping_patience=1, early_stopping_min_delta=0.5)
    result = training.train(model, data(tok, 32, 0), data(tok, 16, 1), h)
    assert result.stopped_early and len(result.history) == 2
    best = max(range(2), key=lambda i: (result.history[i].val_accuracy, -result.history[i].val_loss))  # type: ignore[arg-type,operator]
    assert result.best_epoch == best + 1


def test_the_best_epoch_not_the_last_is_kept(tiny_bert: Path) -> None:
    model, tok = tiny_model(tiny_bert)
    val = data(tok, 16, 1)
    result = training.train(model, data(tok, 48, 0), val, hp(epochs=6, learning_rate=0.05))
    best = result.history[result.best_epoch - 1]
    assert all(best.val_accuracy >= m.val_accuracy for m in result.history)  # type: ignore[operator]
    accuracy = training.evaluate(model, val, 8, torch.device("cpu"), None).accuracy
    assert accuracy == best.val_accuracy


def test_each_run_freezes_or_trains_the_token_table_as_its_hyperparameters_say(tiny_bert: Path) -> None:
    """The flag is set on the model at every run: a table frozen by one run trains in the next that asks."""
    model, tok = tiny_model(tiny_bert)
    table = model.get_input_embeddings().weight
    before = table.detach().clone()
    training.train(model, data(tok, 32, 0), None, hp(epochs=1, freeze_token_embeddings=True))
    assert torch.equal(table, before) and not table.requires_grad
    training.train(model, data(tok, 32, 0), None, hp(epochs=1, freeze_token_embeddings=False))
    assert not torch.equal(table, before)


def test_the_kept_weights_are_those_of_the_best_epoch(tiny_bert: Path) -> None:
    """The best epoch's weights come back when a later epoch is worse, and the copy kept holds only the
    trained weights (a frozen encoder never changes, so it is not copied)."""
    model, tok = tiny_model(tiny_bert)
    seen: list[dict[str, torch.Tensor]] = []
    # validation rows labelled against what the training rows teach: the more an epoch learns, the worse it
    # scores, so a later epoch is worse whatever the CPU's rounding (a high learning rate's jumps were not)
    rows = make_rows(16, 1)
    against = batching.encode(tok, [t for _, t in rows], 32, [1 - int(y) for y, _ in rows])  # type: ignore[arg-type]
    result = training.train(model, data(tok, 48, 0), against, hp(epochs=4),
                            on_epoch=lambda epoch, m: seen.append({k: v.clone() for k, v in model.state_dict().items()}))
    assert result.best_epoch < len(result.history), "this setting must have a later, worse epoch"
    kept = seen[result.best_epoch - 1]
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(seen[-1][k], v) for k, v in model.state_dict().items())
    model.base_model.requires_grad_(False)
    assert set(training._trained_weights(model)) == {"classifier.weight", "classifier.bias"}


def test_a_better_epoch_is_copied_into_the_tensors_of_the_last_copy(tiny_bert: Path) -> None:
    """One copy of the trained weights at a time: a better epoch overwrites the tensors the last one filled
    (two copies at once would add their size to a job's peak memory), and holds the new values."""
    model, _ = tiny_model(tiny_bert)
    first = training._trained_weights(model)
    pointers = {k: v.data_ptr() for k, v in first.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    second = training._trained_weights(model, into=first)
    assert second is first and {k: v.data_ptr() for k, v in second.items()} == pointers
    assert all(torch.equal(second[n], p) for n, p in model.named_parameters())
    # a dict that does not hold every trained weight (a checkpoint of another model) is not written into
    model.base_model.requires_grad_(False)
    fresh = training._trained_weights(model, into=first)
    assert fresh is not first and set(fresh) == {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize(("precision", "expected"), [("bf16", "eager"), ("fp32", kernels.ATTENTION)])
def test_steps_on_a_cpu_run_the_faster_attention_and_validation_the_models_own(
        tiny_bert: Path, caplog: pytest.LogCaptureFixture, precision: str, expected: str) -> None:
    model, tok = tiny_model(tiny_bert)
    own = model.config._attn_implementation
    assert own == "sdpa"
    used: dict[bool, set[str]] = {True: set(), False: set()}  # training mode -> attention seen
    model.register_forward_pre_hook(lambda m, args: used[m.training].add(m.config._attn_implementation))
    with caplog.at_level("INFO", logger="textfit"):
        training.train(model, data(tok, 32, 0), data(tok, 16, 1), hp(epochs=2, precision=precision))
    assert used == {True: {expected}, False: {own}}
    assert f"{expected} attention" in caplog.text and model.config._attn_implementation == own
    assert training.training_attention(torch.device("cpu"), None, 512) is None  # long inputs keep SDPA
    assert training.training_attention(torch.device("cuda"), torch.bfloat16, 32) is None


def test_training_steps_run_the_last_layers_tail_on_the_first_position_only(tiny_bert: Path) -> None:
    """The steps enter architectures.first_position_only (the cut's exactness is test_architectures'): the last
    layer's tail sees one position in training, and every position again once training is over."""
    model, tok = tiny_model(tiny_bert)
    tail = architectures.adapter_for(model).per_position_tail(model)  # type: ignore[misc]
    positions: dict[bool, set[int]] = {True: set(), False: set()}  # training mode -> positions the tail computed
    tail.register_forward_hook(lambda m, args, out: positions[m.training].add(out.shape[1]))
    training.train(model, data(tok, 32, 0), data(tok, 16, 1), hp(epochs=1))
    assert positions[True] == {1}
    assert positions[False] and 1 not in positions[False]  # validation: the whole sequence (rows of > 1 token)
    positions[True].clear()
    model.train()(**tok(["after training"], return_tensors="pt"))  # type: ignore[operator]
    assert positions[True] == {4}  # the hook is gone: [CLS] after training [SEP]


def test_train_only_on_top_layer_freezes_the_encoder(tiny_bert: Path) -> None:
    model, tok = tiny_model(tiny_bert)
    encoder = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    head = model.classifier.weight.detach().clone()
    training.train(model, data(tok, 48, 0), data(tok, 16, 1),
                   hp(epochs=10, train_only_on_top_layer=True, learning_rate=0.05))
    assert all(torch.equal(encoder[k], v) for k, v in model.base_model.state_dict().items())
    assert not torch.equal(head, model.classifier.weight)  # the tiny encoder's random features do not separate
    # the classes, so the loss is no measure here; test_top_layer_training_... trains the head on every family


def test_validation_on_cached_features_scores_what_the_whole_model_does(tiny_bert: Path) -> None:
    model, tok = tiny_model(tiny_bert)
    val = data(tok, 40, 1)
    feats = training.embed(model, val, 8, torch.device("cpu"), None)
    whole = training.evaluate(model, val, 8, torch.device("cpu"), None, 0.5)
    cached = training.evaluate(model, val, 8, torch.device("cpu"), None, 0.5, feats)
    assert cached.loss == pytest.approx(whole.loss, abs=1e-6) and cached.accuracy == whole.accuracy
    shifted = training.evaluate(model, val, 8, torch.device("cpu"), None, 0.5, feats.roll(1, dims=0))
    assert shifted.loss != pytest.approx(whole.loss, abs=1e-6)  # the rows' own features, not any


def test_a_frozen_encoder_runs_once_per_row_whatever_the_epochs(tiny_bert: Path) -> None:
    """train_only_on_top_layer: training and validation rows are embedded once; each epoch runs the head."""
    rows = {}
    for epochs in (1, 5):
        model, tok = tiny_model(tiny_bert)
        seen: list[int] = []
        model.base_model.register_forward_hook(lambda m, args, kw, out, seen=seen: seen.append(len(kw["input_ids"])),
                                               with_kwargs=True)
        result = training.train(model, data(tok, 48, 0), data(tok, 16, 1),
                                hp(epochs=epochs, train_only_on_top_layer=True, learning_rate=0.05))
        assert len(result.history) == epochs and all(m.val_accuracy is not None for m in result.history)
        rows[epochs] = sum(seen)
    assert rows[1] == rows[5] == 48 + 16


def test_l2_penalty_is_on_the_head_weights_only(tiny_bert: Path) -> None:
    model, _ = tiny_model(tiny_bert)
    expected = 0.5 * model.classifier.weight.pow(2).sum()
    torch.testing.assert_close(training.l2_penalty(model, 0.5), expected)
    assert training.l2_penalty(model, 0.0) == 0.0


# SageMaker's tuning regexes (README: Tune): the documented one and the one every AWS notebook uses.
SAGEMAKER_REGEXES = {
    "val_accuracy (doc)": r"val_accuracy=([0-9\.]+)",
    "val_accuracy (notebooks)": r"val_accuracy: ([0-9\.]+)",
    "val_loss": r"val_loss: ([0-9\.]+)",
    "train_accuracy": r"- accuracy: ([0-9\.]+)",
    "train_loss": r"- loss: ([0-9\.]+)",
}


def test_metric_lines_parse_with_sagemaker_regexes(tiny_bert: Path, caplog: pytest.LogCaptureFixture) -> None:
    model, tok = tiny_model(tiny_bert)
    result = training.train(model, data(tok, 32, 0), data(tok, 16, 1), hp(epochs=2))
    log = "\n".join(caplog.messages)
    assert re.search(r"^Epoch 1/2$", log, re.M) and re.search(r"^4/4 - \d+s - loss: ", log, re.M)
    for name, regex in SAGEMAKER_REGEXES.items():
        values = [float(v) for v in re.findall(regex, log)]
        assert values, name
    val = [float(v) for v in re.findall(SAGEMAKER_REGEXES["val_accuracy (doc)"], log)]
    best = result.history[result.best_epoch - 1].val_accuracy
    assert val[:2] == [round(m.val_accuracy, 4) for m in result.history]  # type: ignore[arg-type]
    assert val[-1] == round(best, 4)  # the tuner's last reading is the kept epoch  # type: ignore[arg-type]


def test_length_bucketed_batches_cover_every_row_once() -> None:
    lengths = [5, 50, 6, 49, 7, 48, 8, 47] * 10
    plan = batching.plan_batches(lengths, 8, shuffle=True, seed=1)
    assert sorted(r for group in plan for r in group) == list(range(80))
    assert batching.plan_batches(lengths, 8, shuffle=True, seed=1) == plan
    spread = [max(lengths[r] for r in g) - min(lengths[r] for r in g) for g in plan]
    assert max(spread) <= 3  # rows of similar length share a batch


def test_validation_is_scored_as_the_served_model_computes(tiny_bert: Path, tmp_path: Path) -> None:
    """Training in bf16, validation in fp32: the val_accuracy that picks the epoch is the served model's."""
    from tests.conftest import make_rows, write_csv
    from textfit import TextClassifier

    channel = write_csv(tmp_path / "d" / "data.csv", make_rows(80)).parent
    clf = TextClassifier(str(tiny_bert), {"epochs": "3", "batch_size": "8", "learning_rate": "0.01",
                                          "optimizer": "adam", "precision": "bf16",
                                          "training_recipe": "finetune"}).fit(read_channel(channel))
    kept = clf.history_[clf.best_epoch_ - 1]
    assert clf.validation_report_ is not None
    assert kept["val_accuracy"] == clf.validation_report_["accuracy"]  # same rows, same fp32 computation


def test_precision_auto_counts_only_native_bf16(caplog: pytest.LogCaptureFixture) -> None:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    native = ("avx512_bf16" in flags or "amx_bf16" in flags) and training.cpu_bf16_speedup() >= 1.25
    assert training.cpu_has_bf16() == native
    assert (training.autocast_dtype(torch.device("cpu"), "auto") == torch.bfloat16) == native
    reason = training._precision_reason(torch.device("cpu"), "auto")
    assert reason.startswith("auto: the CPU computes bf16 natively" if native else "auto: this CPU has ")


@pytest.mark.parametrize(("flag", "speedup", "dtype", "reason"), [
    (None, 2.5, None, "auto: this CPU has no native bf16"),
    ("avx512_bf16", 0.7, None, "auto: this CPU has avx512_bf16, but its bf16 matrix products run at 0.7x fp32's "
                               "rate, no faster"),
    ("amx_bf16", 2.6, torch.bfloat16, "auto: the CPU computes bf16 natively (amx_bf16; its bf16 matrix products "
                                      "run at 2.6x fp32's rate)"),
])
def test_precision_auto_takes_bf16_only_where_it_is_faster(monkeypatch: pytest.MonkeyPatch, flag: str | None,
                                                           speedup: float, dtype: torch.dtype | None,
                                                           reason: str) -> None:
    """A Xeon whose AMX the guest cannot see lists avx512_bf16 and trains 1.4x slower in bf16 than in fp32."""
    monkeypatch.setattr(training, "cpu_bf16_flag", lambda: flag)
    monkeypatch.setattr(training, "cpu_bf16_speedup", lambda: speedup)
    assert training.autocast_dtype(torch.device("cpu"), "auto") == dtype
    assert training.autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16  # asked for: given
    assert training._precision_reason(torch.device("cpu"), "auto") == reason


def test_the_bf16_speedup_is_measured_once_and_leaves_the_training_s_random_stream() -> None:
    """Measured after the training's seed is set: it must not draw from torch's global generator (a first fit in
    a process would then differ from a second of the same seed)."""
    training.cpu_bf16_speedup.cache_clear()
    state = torch.get_rng_state()
    first = training.cpu_bf16_speedup()
    assert torch.equal(torch.get_rng_state(), state)
    assert 0.05 < first < 50 and training.cpu_bf16_speedup() == first
