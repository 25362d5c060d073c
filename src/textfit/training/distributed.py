"""Data-parallel training on torch.distributed: the launch, the process group, and the collectives the loop needs.

`batch_size` is the global batch (as SageMaker's "used across the GPUs"): each of the W workers takes every
W-th row of each global batch, and its loss is scaled so that DistributedDataParallel's gradient average equals
the single-process gradient of the whole batch. Metrics are summed over workers, so val_accuracy is computed
over the whole validation set, identical to one process.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from textfit.core.environment import RUN_ID_PREFIX, thread_budget, torchrun_environment
from textfit.errors import TextfitError, TrainingInterrupted
from textfit.training import checkpoints

log = logging.getLogger("textfit")

TIMEOUT = datetime.timedelta(minutes=10)
"""A collective waiting longer than this for a worker means the worker is gone: fail instead of hanging."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def current() -> World:
    """This process's place in the job: from an initialised process group, else a world of one."""
    if dist.is_available() and dist.is_initialized():
        env = torchrun_environment()
        return World(dist.get_rank(), dist.get_world_size(), env.local_rank)
    return World()


def init_from_environment() -> World:
    """Join the process group when started by torchrun or `textfit train --nproc-per-node` (RANK, WORLD_SIZE...)."""
    env = torchrun_environment()
    if env.world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    world = current()
    if not world.is_main:  # only rank 0 prints the lines SageMaker's tuner parses
        log.setLevel(logging.WARNING)
    return world


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def my_rows(rows: Sequence[int], world: World) -> list[int]:
    """This worker's share of a global batch: every W-th row, so shares differ by at most one row."""
    return list(rows[world.rank :: world.size])


def split_message(batch_size: int, world: World) -> str:
    base, extra = divmod(batch_size, world.size)
    if extra == 0:
        return f"batch_size {batch_size} is split across {world.size} workers: {base} rows each"
    return (f"batch_size {batch_size} is split across {world.size} workers: {base + 1} rows on {extra} of them, "
            f"{base} on the others")


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum over workers (float64, so sums of many rows stay exact enough)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_rows(local: torch.Tensor, rows: list[int], total: int, world: World) -> torch.Tensor:
    """Put each worker's feature rows in their place of one (total, dim) tensor that every worker holds."""
    if not world.active:
        out = torch.empty((total, local.shape[1]), dtype=local.dtype, device=local.device)
        out[rows] = local
        return out
    out = torch.zeros((total, local.shape[1]), dtype=local.dtype, device=local.device)
    out[rows] = local
    dist.all_reduce(out, op=dist.ReduceOp.SUM)  # the shards are disjoint: a sum places every row once
    return out


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def launch(entrypoint: Callable[..., Any], args: tuple[Any, ...], *, nproc_per_node: int, nnodes: int = 1,
           node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int = 29500,
           checkpoint_dir: str | Path | None = None) -> None:
    """Start nproc_per_node workers here (and join nnodes machines), as torchrun does; one failure stops all.

    Raises:
        TextfitError: a worker failed; its error is in the message.
        TrainingInterrupted: the launcher was sent a signal and stopped the workers (the workers say nothing
            of it: the launcher's message is the job's one line, with where the checkpoint resumes).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc_per_node,
        run_id=f"{RUN_ID_PREFIX}{uuid.uuid4().hex[:8]}",
        rdzv_backend="static", rdzv_endpoint=f"{master_addr}:{master_port}", rdzv_configs={"rank": node_rank},
        max_restarts=0, monitor_interval=0.5, start_method="spawn",
    )
    os.environ["OMP_NUM_THREADS"] = str(max(1, thread_budget() // nproc_per_node))  # the workers' shares
    try:
        elastic_launch(config, entrypoint)(*args)
    except SignalException as exc:  # the launcher was told to stop: it stopped the workers with the signal
        # The workers have exited by now: rank 0 wrote its checkpoint at its last step.
        at = checkpoints.position(Path(checkpoint_dir) if checkpoint_dir else None)
        where = (f" at epoch {at[0]}, step {at[1]}; the checkpoint is in {checkpoint_dir}: run the same command "
                 "again to resume" if at else "; nothing was written (with a checkpoint folder the workers write "
                 "one at their last step, and the same command resumes from it)")
        raise TrainingInterrupted(int(exc.sigval),
                                  f"distributed training stopped by {exc.sigval.name}{where}") from None
    except ChildFailedError as exc:
        failures = "; ".join(f"worker {rank}: {f.message or f'exit code {f.exitcode}'}"
                             for rank, f in sorted(exc.failures.items()))
        raise TextfitError(f"distributed training failed ({failures}); the other workers were stopped") from None
