"""Training checkpoints: a spot interruption or a `docker stop` costs at most the current step.

With a checkpoint folder (SageMaker's /opt/ml/checkpoints, or --checkpoint-dir), the training loop writes a
checkpoint at every epoch end and, once its StopSignal is requested, at the next step boundary before it stops.
`textfit train` and `textfit sagemaker train` request it on SIGTERM or SIGINT; fit installs no handler, and a
program that calls it passes a StopSignal of its own to stop a run.
A new run with the same folder, data and hyperparameters resumes from it with the same data order and random
state, so it ends with the weights an uninterrupted run would have. A checkpoint says whether its run finished:
a later job of other data or hyperparameters given the same folder (SageMaker users often give every job the same
checkpoint_s3_uri) starts fresh over a finished run's checkpoint, which stays until the new run's first checkpoint
replaces it; an unfinished one of another run is refused, its state never mixed into another run. A checkpoint is safetensors (every tensor:
weights, the best epoch's weights, optimizer moments, random generator states) and JSON (counters, history,
scheduler): nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from textfit.core import shapes
from textfit.core.shapes import Closed, Maybe
from textfit.errors import TextfitError, TrainingInterrupted
from textfit.model import artifact

log = logging.getLogger("textfit")
__all__ = ["Checkpointer", "LoopState", "StopSignal", "TrainingInterrupted", "fingerprint"]

TENSORS = "checkpoint.safetensors"
STATE = "checkpoint.json"
VERSION = 1


@dataclass
class LoopState:
    """Where the loop is: what a resumed run needs besides tensors."""

    epoch: int = 1
    """The epoch in progress (1-based)."""
    step: int = 0
    """Steps of that epoch already taken."""
    totals: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    """The epoch's running loss sum, loss weight, correct predictions and rows."""
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    wait: int = 0
    """Early stopping: epochs without improvement."""
    es_best: float = float("-inf")
    stopped_early: bool = False


class StopSignal:
    """A request to stop training at the next step boundary, after writing a checkpoint, rather than mid-step.

    Nothing installs it by itself: the train commands, which own their process, make SIGTERM and SIGINT request it
    (`installed`); a program that trains through the library calls `request` (from its own signal handler, or from
    another thread), and fit raises TrainingInterrupted once the checkpoint is written.

    >>> stop = StopSignal()
    >>> clf.fit(texts, labels, checkpoint_dir="ckpt/", stop=stop)  # doctest: +SKIP
    >>> stop.request()  # from another thread: the run writes its checkpoint and stops  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        """The signal the request stands for (TrainingInterrupted carries it); None until one is made."""

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Stop at the next step boundary; `signum` is the signal the stop stands for (SIGTERM unless told)."""
        self.signum = signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user means it
        self.request(signum)
        log.info("%s received: stopping at the next step boundary to write a checkpoint",
                 signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """SIGTERM and SIGINT request this stop within the block, the handlers before it are put back after it:
        for an entry point that owns its process. Outside the main thread (where Python allows no handler), nothing
        is installed."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def fingerprint(hp_strings: dict[str, str], input_ids: list[list[int]], labels: list[int] | None,
                model_config: dict[str, Any]) -> str:
    """What a checkpoint belongs to: the hyperparameters, the encoded training rows and the model's shape."""
    digest = hashlib.sha256(json.dumps([hp_strings, model_config, labels], sort_keys=True, default=str).encode())
    for ids in input_ids:
        digest.update(len(ids).to_bytes(4, "little"))
        digest.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
    return digest.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as named tensors plus JSON: per-parameter moments become `optim.<i>.<name>`."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                       ) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


_EPOCH = Closed({"loss": float, "accuracy": float, "val_loss": Maybe(float | None),
                 "val_accuracy": Maybe(float | None), "seconds": Maybe(float), "steps": Maybe(int),
                 "val_f1_micro": Maybe(float | None), "val_f1_macro": Maybe(float | None)})
"""An epoch's metrics as the checkpoint holds them (training.EpochMetrics, passed on as keywords)."""
SHAPE = {
    "version": int,
    "fingerprint": str,
    "loop": Closed({"epoch": int, "step": int, "totals": list[float],
                    "history": list[_EPOCH],  # type: ignore[valid-type]  # a shape, not a type: items are checked
                    "best_epoch": int, "wait": int, "es_best": float, "stopped_early": bool}),
    "optimizer": {"param_groups": list[dict[str, Any]], "scalars": dict[str, Any]},
    "schedule": dict[str, Any] | None,
    "scaler": dict[str, Any] | None,
    "has_best": bool,
    "finished": Maybe(bool),  # absent before 0.2: such a checkpoint is taken as unfinished
}
"""checkpoint.json, as `save` writes it (the loop is LoopState's fields)."""
DAMAGED = "the checkpoint is damaged or edited; delete the folder to start over"


def _schedule_state(saved: Any, current: dict[str, Any]) -> Any:
    """A saved schedule's state as this run's schedule loads it. textfit before 0.2 built its warm-up from a plain
    function, whose entry in `lr_lambdas` a LambdaLR saves as null; the schedule it saved is, like today's
    transformers schedule, a pure function of the step count (`last_epoch`), so its entries take today's, which
    hold no state either, and a checkpoint of that version resumes."""
    if isinstance(saved, dict) and isinstance(saved.get("lr_lambdas"), list) and \
            isinstance(current.get("lr_lambdas"), list) and len(saved["lr_lambdas"]) == len(current["lr_lambdas"]):
        lambdas = [now if was is None else was for was, now in zip(saved["lr_lambdas"], current["lr_lambdas"])]
        return {**saved, "lr_lambdas": lambdas}
    return saved


def _read_state(folder: Path) -> dict[str, Any]:
    """checkpoint.json, of the shape `save` writes and with values a loop can resume at; one line if not."""
    path = folder / STATE
    meta = shapes.read(path, SHAPE, TextfitError, DAMAGED)
    if meta["version"] != VERSION:
        raise TextfitError(f"{path}: field 'version' is {meta['version']}, this textfit writes and reads "
                           f"{VERSION}; delete the folder to start over")
    loop = meta["loop"]
    problems = [f"field 'loop.{name}' is {loop[name]}, expected {least} or more"
                for name, least in (("epoch", 1), ("step", 0), ("best_epoch", 0), ("wait", 0)) if loop[name] < least]
    if len(loop["totals"]) != 4:
        problems.append(f"field 'loop.totals' holds {len(loop['totals'])} numbers, expected 4")
    if loop["best_epoch"] > len(loop["history"]):
        problems.append(f"field 'loop.best_epoch' is {loop['best_epoch']}, but 'loop.history' holds "
                        f"{len(loop['history'])} epochs")
    bad_keys = [key for key in meta["optimizer"]["scalars"] if not key.partition(".")[0].isdigit()]
    if bad_keys:
        problems.append(f"field 'optimizer.scalars' has the key {bad_keys[0]!r}, expected <index>.<name>")
    if problems:
        raise TextfitError(f"{path}: {problems[0]}; {DAMAGED}")
    return meta


def position(folder: Path | None) -> tuple[int, int] | None:
    """The epoch and step the checkpoint in `folder` resumes at; None where there is none to read."""
    if folder is None:
        return None
    try:
        loop = _read_state(folder)["loop"]
    except TextfitError:
        return None
    return loop["epoch"], loop["step"]


@dataclass
class Checkpointer:
    """Writes and reads the checkpoint of one training run in `folder`."""

    folder: Path
    fingerprint: str
    stop: StopSignal = field(default_factory=StopSignal)
    """The run stops at the next step boundary once it is requested; by default nothing requests it."""

    def save(self, state: LoopState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             schedule: Any, scaler: torch.amp.GradScaler, best: dict[str, torch.Tensor] | None,
             finished: bool = False) -> None:
        """Both files into a staged folder, renamed into place: a kill while writing leaves the previous one.
        `finished`: the run has no step left (its last epoch, or early stopping, is done)."""
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in (best or {}).items()})
        optim_tensors, optim_meta = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        meta = {"version": VERSION, "fingerprint": self.fingerprint, "loop": asdict(state), "optimizer": optim_meta,
                "schedule": schedule.state_dict() if schedule is not None else None,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "has_best": best is not None,
                "finished": finished}
        with artifact.staged(self.folder, folder=True, kind="checkpoint") as tmp:
            # tied weights (an embedding shared with a decoder) are one tensor twice: safetensors wants copies
            save_file({k: v.clone() for k, v in tensors.items()}, str(tmp / TENSORS))
            (tmp / STATE).write_text(json.dumps(meta, default=float), encoding="utf-8")

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
             scaler: torch.amp.GradScaler) -> tuple[LoopState, dict[str, torch.Tensor] | None] | None:
        """Restore a checkpoint of this run (same data, hyperparameters and model) in place; None if there is none,
        or if it is a finished run's of other data, hyperparameters or model (this run starts fresh, and its first
        checkpoint replaces that one).

        Raises:
            TextfitError: the folder holds an unfinished checkpoint of another run, or a damaged one.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not (self.folder / STATE).is_file():
            return None
        meta = _read_state(self.folder)
        if meta["fingerprint"] != self.fingerprint:
            if meta.get("finished"):
                log.info("Checkpoint %s is of an earlier training run that finished: starting afresh (it stays until "
                         "this run's first checkpoint replaces it)", self.folder)
                return None
            raise TextfitError(f"{self.folder} holds the checkpoint of another training run that has not finished "
                               "(other data, hyperparameters or model); run that job again to finish it, use another "
                               "--checkpoint-dir, or delete it to start over")
        # the JSON parts are of the kinds this run's own optimizer, schedule and scaler hold, before any is loaded
        for name, what, used in (("schedule", "learning-rate schedule", schedule is not None),
                                 ("scaler", "gradient scaler (fp16)", scaler.is_enabled())):
            if (meta[name] is not None) != used:
                raise TextfitError(f"{self.folder / STATE}: field {name!r} is {shapes.found(meta[name])}, but this run "
                                   f"{'has a' if used else 'has no'} {what}; {DAMAGED}")
        if schedule is not None and meta["schedule"] is not None:
            meta["schedule"] = _schedule_state(meta["schedule"], schedule.state_dict())
        why = (shapes.like(meta["optimizer"]["param_groups"], optimizer.state_dict()["param_groups"],
                           "optimizer.param_groups")
               or (shapes.like(meta["schedule"], schedule.state_dict(), "schedule") if schedule is not None else None)
               or (shapes.like(meta["scaler"], scaler.state_dict(), "scaler") if scaler.is_enabled() else None))
        if why is not None:
            raise TextfitError(f"{self.folder / STATE}: {why}; {DAMAGED}")
        try:
            tensors = load_file(str(self.folder / TENSORS))
        except (OSError, ValueError, SafetensorError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise TextfitError(f"{self.folder / TENSORS}: the checkpoint is damaged ({reason}); delete the folder "
                               "to start over") from None
        try:
            device = next(model.parameters()).device
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            _restore_optimizer(optimizer, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
                               meta["optimizer"])
            if schedule is not None:
                schedule.load_state_dict(meta["schedule"])
            if meta["scaler"] is not None:
                scaler.load_state_dict(meta["scaler"])
            torch.set_rng_state(tensors["rng.cpu"])
            cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise TextfitError(f"{self.folder}: the checkpoint does not fit this run's model or optimizer "
                               f"({type(exc).__name__}: {reason}); {DAMAGED}") from None
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} if meta["has_best"] else None
        return LoopState(**meta["loop"]), best
