"""A library fit changes nothing beyond its model and its thread: no signal handler, no allocator setting, no
dropout of another thread's; the train command, which owns its process, sets the first two for the run."""

from __future__ import annotations

import json
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import make_rows, write_csv
from textfit import TextClassifier
from textfit.cli import main
from textfit.data.channels import read_channel
from textfit.errors import TrainingInterrupted
from textfit.training import kernels, loop
from textfit.training.checkpoints import StopSignal

HP = {"epochs": "2", "batch_size": "8", "learning_rate": "0.01", "optimizer": "adamw", "precision": "fp32",
      "max_seq_length": "16", "training_recipe": "finetune", "validation_split_ratio": "0.2"}
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("side-effects") / "train" / "data.csv", make_rows(60)).parent


@pytest.fixture
def own_handlers() -> Iterator[dict[int, Callable[..., None]]]:
    """Handlers of the program's own for SIGTERM and SIGINT, put back as they were after the test."""
    mine = {sig: (lambda signum, frame: None) for sig in SIGNALS}
    previous = {sig: signal.signal(sig, handler) for sig, handler in mine.items()}
    try:
        yield mine
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.fixture
def allocator_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every time the allocator setting would have been made (mallopt), recorded instead of made."""
    calls: list[str] = []
    monkeypatch.setattr(kernels, "_set_thresholds", lambda: calls.append("mallopt") or True)
    return calls


def test_fit_with_a_checkpoint_folder_installs_no_signal_handler_and_leaves_the_allocator(
        tiny_bert: Path, data: Path, tmp_path: Path, own_handlers: dict[int, Any], allocator_calls: list[str]) -> None:
    during: list[dict[int, Any]] = []
    clf = TextClassifier(str(tiny_bert), HP).fit(
        read_channel(data), checkpoint_dir=tmp_path / "ckpt", on_epoch=lambda epoch, m: during.append(
            {sig: signal.getsignal(sig) for sig in SIGNALS}))
    assert len(clf.history_) == 2 and (tmp_path / "ckpt" / "checkpoint.json").is_file()  # it did checkpoint
    assert during == [own_handlers, own_handlers]  # the program's own handlers, while it trains
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == own_handlers
    assert allocator_calls == []


def test_a_library_caller_stops_a_run_with_its_own_stop_object(tiny_bert: Path, data: Path, tmp_path: Path,
                                                                 own_handlers: dict[int, Any]) -> None:
    stop = StopSignal()

    def after(epoch: int, metrics: Any) -> None:
        if epoch == 1:  # as from another thread of the program
            requester = threading.Thread(target=stop.request)
            requester.start()
            requester.join()

    with pytest.raises(TrainingInterrupted, match="at epoch 2, step 0") as stopped:
        TextClassifier(str(tiny_bert), HP).fit(read_channel(data), checkpoint_dir=tmp_path / "ckpt", on_epoch=after, stop=stop)
    assert stopped.value.signum == signal.SIGTERM
    assert json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())["loop"]["epoch"] == 2
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == own_handlers


def test_the_faster_dropout_stays_in_the_training_thread(tiny_bert: Path, data: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """While fit's steps run (inside kernels' dropout), another thread's torch.nn.functional.dropout computes
    torch's own mask: its kept values take torch's scale, 1 / (1 - p), not the faster mask's
    65536 / (65536 - round(p * 65536)). After fit the function is torch's own object again. (During the steps it
    is kernels' router, which sends another thread's calls to torch's: kernels.fast_dropout says why.)"""
    native = torch.nn.functional.dropout
    native_scale = float(native(torch.ones(1000), 0.1).max())
    assert native_scale != pytest.approx(65536 / (65536 - round(0.1 * 65536)), abs=1e-7)
    asks: queue.Queue[bool] = queue.Queue()
    answers: queue.Queue[tuple[bool, set[float]]] = queue.Queue()

    def other_thread() -> None:
        while asks.get():
            out = torch.nn.functional.dropout(torch.ones(1000), p=0.1, training=True)
            answers.put((torch.nn.functional.dropout is native, set(out.unique().tolist())))

    masks_by: list[int] = []
    keep_mask = kernels.keep_mask

    def spied(shape: Any, p: float) -> tuple[torch.Tensor, float]:
        masks_by.append(threading.get_ident())
        if len(masks_by) == 1:  # the first training step: ask the other thread now, and wait for its answer
            asks.put(True)
            answers.put(answers.get(timeout=60))
        return keep_mask(shape, p)

    monkeypatch.setattr(kernels, "keep_mask", spied)
    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        TextClassifier(str(tiny_bert), HP).fit(read_channel(data))
        asks.put(True)  # and once more after fit
    finally:
        asks.put(False)
        worker.join(timeout=60)
    during, after = answers.get_nowait(), answers.get_nowait()
    assert during[1] == after[1] == {0.0, native_scale}
    assert after[0] is True
    assert masks_by and set(masks_by) == {threading.get_ident()}
    assert torch.nn.functional.dropout is native


def test_disabled_kernels_train_with_torchs_dropout_and_eager_attention(
        tiny_bert: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "enabled", False)
    monkeypatch.setattr(kernels, "keep_mask", lambda *args: pytest.fail("the faster mask was drawn"))
    TextClassifier(str(tiny_bert), HP).fit(read_channel(data))
    assert loop.training_attention(torch.device("cpu"), None, 16) == "eager"


def test_the_train_command_sets_its_process_up_for_the_run_and_puts_the_handlers_back(
        tiny_bert: Path, data: Path, tmp_path: Path, own_handlers: dict[int, Any], allocator_calls: list[str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Any] = []
    train = loop.train

    def spied(*args: Any, **kwargs: Any) -> Any:
        seen.append([signal.getsignal(sig) for sig in SIGNALS])
        return train(*args, **kwargs)

    monkeypatch.setattr(loop, "train", spied)
    hp = [arg for name, value in HP.items() for arg in ("--hp", f"{name}={value}")]
    code = main(["train", "--train", str(data), "--model-id", str(tiny_bert), "--output", str(tmp_path / "model"),
                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--onnx", "none", *hp])
    assert code == 0, capsys.readouterr().err[-2000:]
    (handlers,) = seen
    assert all(isinstance(getattr(h, "__self__", None), StopSignal) for h in handlers)  # stop at a step boundary
    assert allocator_calls == ["mallopt"]  # on this CPU, for the process the command owns
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == own_handlers
