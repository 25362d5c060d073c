"""SageMaker's training-job contract in one place: hyperparameters.json, the channels, /opt/ml/model, the
failure file and how a job spreads over its instances (README: SageMaker). What every layer may need of the
environment (serving's variables, torchrun's, the thread budget) is read in environment.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textfit.core.environment import DEFAULT_PREFIX
from textfit.core.shapes import Maybe, found, require
from textfit.errors import HyperparameterError, TextfitError

# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingJob:
    """What a SageMaker training container sees (README: SageMaker), under a prefix (default /opt/ml)."""

    prefix: Path
    hyperparameters: dict[str, str]
    train: Path
    validation: Path | None
    model: Path | None
    """The `model` channel: a pretrained checkpoint or an earlier fine-tuned model.tar.gz (incremental)."""
    model_dir: Path
    failure_file: Path
    hosts: list[str]
    current_host: str
    checkpoint_dir: Path | None = None
    """SageMaker's checkpoint folder (/opt/ml/checkpoints), present when the job configures checkpoints (spot
    training): textfit checkpoints there and resumes from what it holds."""

    @property
    def model_id(self) -> str | None:
        """textfit's extra hyperparameter naming the encoder when no model channel is given."""
        return self.hyperparameters.get("model_id")

    @property
    def algorithm_hyperparameters(self) -> dict[str, str]:
        return {k: v for k, v in self.hyperparameters.items() if k != "model_id"}


HYPERPARAMETERS_SHAPE = dict[str, str | float | bool]
"""hyperparameters.json: SageMaker writes every value as a string; a number or a boolean is taken as its text."""
RESOURCE_SHAPE = {"current_host": Maybe(str), "hosts": Maybe(list[str]), "network_interface_name": Maybe(str)}
"""resourceconfig.json: the fields textfit reads (the file holds more, which textfit does not use)."""


def _read_json(path: Path, what: str, shape: object, error: type[TextfitError], fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON syntax, bytes that are not UTF-8
        raise error(f"{path}: cannot read the {what} ({' '.join(str(exc).split())})") from None
    return require(data, shape, path, error, fix)  # of `shape`: each field's value is of the kind it names


def _channel(prefix: Path, name: str) -> Path | None:
    configured = os.environ.get(f"SM_CHANNEL_{name.upper()}", "").strip()
    path = Path(configured) if configured else prefix / "input" / "data" / name
    return path if path.exists() and any(path.iterdir()) else None


def _model_channel(path: Path | None) -> Path | None:
    """The model channel holds a checkpoint folder, or a tarball of one (the first *.tar.gz, as JumpStart)."""
    if path is None or (path / "config.json").is_file():
        return path
    tarballs = sorted(path.glob("*.tar.gz"))
    if tarballs:
        return tarballs[0]
    return path


def training_job(prefix: str | Path | None = None) -> TrainingJob:
    """The container layout of a training job; SM_* variables win over the prefix's defaults."""
    root = Path(prefix or os.environ.get("SM_BASE_DIR", DEFAULT_PREFIX))
    config = root / "input" / "config"
    hp_file = config / "hyperparameters.json"
    hyperparameters = _read_json(hp_file, "hyperparameters", HYPERPARAMETERS_SHAPE, HyperparameterError,
                                 'write an object of strings, such as {"epochs": "3"}') if hp_file.is_file() else {}
    train = _channel(root, "training") or _channel(root, "train")
    if train is None:
        raise TextfitError(f"no training channel: put data.csv in {root / 'input' / 'data' / 'training'} "
                           "(the estimator's fit({'training': 's3://bucket/prefix/'}))")
    resources = config / "resourceconfig.json"
    resource = _read_json(resources, "resource config", RESOURCE_SHAPE, TextfitError,
                          'SageMaker writes it as {"current_host": "algo-1", "hosts": ["algo-1"]}'
                          ) if resources.is_file() else {}
    hosts = _hosts_variable() if os.environ.get("SM_HOSTS") else resource.get("hosts", [])
    current = os.environ.get("SM_CURRENT_HOST") or resource.get("current_host", "")
    model_dir = os.environ.get("SM_MODEL_DIR") if prefix is None else None
    return TrainingJob(
        prefix=root,
        hyperparameters={str(k): str(v) for k, v in hyperparameters.items()},
        train=train,
        validation=_channel(root, "validation"),
        model=_model_channel(_channel(root, "model")),
        model_dir=Path(model_dir) if model_dir else root / "model",
        failure_file=root / "output" / "failure",
        hosts=list(hosts) or ["localhost"],
        current_host=current or "localhost",
        checkpoint_dir=root / "checkpoints" if (root / "checkpoints").is_dir() else None,
    )


def _hosts_variable() -> list[str]:
    """SM_HOSTS: a JSON list of host names."""
    fix = 'set it to a JSON list of host names, such as ["algo-1", "algo-2"]'
    try:
        hosts = json.loads(os.environ["SM_HOSTS"])
    except (ValueError, RecursionError):
        raise TextfitError(f"SM_HOSTS: not valid JSON; {fix}") from None
    if not isinstance(hosts, list) or not all(isinstance(host, str) for host in hosts):
        raise TextfitError(f"SM_HOSTS holds {found(hosts)} that is not a list of strings; {fix}")
    return hosts


def write_failure(prefix: str | Path | None, message: str) -> None:
    """SageMaker shows the first 1024 characters of /opt/ml/output/failure as the job's FailureReason."""
    path = Path(prefix or os.environ.get("SM_BASE_DIR", DEFAULT_PREFIX)) / "output" / "failure"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1024] + "\n", encoding="utf-8")
    except OSError:
        pass  # the message still goes to stderr, which SageMaker logs


# ---------------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class LaunchPlan:
    nproc_per_node: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int = 29500


def launch_plan(job: TrainingJob, gpus: int) -> LaunchPlan | None:
    """How a SageMaker job spreads over its instances (SM_HOSTS) and their GPUs; None for a single worker.

    Every instance runs the same container; the first host in SM_HOSTS is the master, as in SageMaker's own
    framework containers, and each instance starts one worker per GPU (one on a CPU instance).
    """
    per_node = max(1, gpus)
    if len(job.hosts) <= 1 and per_node == 1:
        return None
    hosts = sorted(job.hosts)
    if job.current_host not in hosts:
        raise TextfitError(f"current host {job.current_host!r} is not among the hosts {hosts} (SM_CURRENT_HOST, "
                           "SM_HOSTS or resourceconfig.json)")
    return LaunchPlan(per_node, len(hosts), hosts.index(job.current_host), hosts[0])
