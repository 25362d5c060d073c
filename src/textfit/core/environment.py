"""What the process environment says, for every layer: SageMaker's serving variables, torchrun's, the GPUs,
the model store's location and the threads a job may use. It knows no other part of textfit but the errors;
the training job's own contract (/opt/ml/input) is read in sagemaker.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from textfit.errors import TextfitError

DEFAULT_PREFIX = "/opt/ml"


@dataclass(frozen=True)
class ServeEnvironment:
    port: int = 8080
    max_payload_mb: float = 6.0
    default_accept: str = "application/json"
    batch: bool = False
    batch_strategy: str = "MULTI_RECORD"
    max_concurrent_transforms: int = 4
    model_dir: str = f"{DEFAULT_PREFIX}/model"
    explain_max_words: int = 64
    """TEXTFIT_EXPLAIN_MAX_WORDS: words an explained text leaves out one at a time (ServeSettings)."""


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise TextfitError(f"environment variable {name}={value!r} is not an integer") from None


def serve_environment() -> ServeEnvironment:
    """SAGEMAKER_* settings of a hosting or batch transform container; unset ones keep SageMaker's defaults."""
    payload = os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB", "").strip()
    try:
        max_payload = float(payload) if payload else 6.0
    except ValueError:
        raise TextfitError(f"environment variable SAGEMAKER_MAX_PAYLOAD_IN_MB={payload!r} is not a number") from None
    strategy = os.environ.get("SAGEMAKER_BATCH_STRATEGY", "MULTI_RECORD").strip().upper().replace("MULTIRECORD",
                                                                                                    "MULTI_RECORD")
    return ServeEnvironment(
        port=_int("SAGEMAKER_BIND_TO_PORT", 8080),
        # 0 means chunked transfer, which built-in algorithms do not support: keep the default limit then
        max_payload_mb=max_payload if max_payload > 0 else 6.0,
        default_accept=os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json").strip(),
        batch=os.environ.get("SAGEMAKER_BATCH", "").strip().lower() == "true",
        batch_strategy=strategy.replace("SINGLERECORD", "SINGLE_RECORD"),
        max_concurrent_transforms=_int("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", 4),
        model_dir=os.environ.get("SM_MODEL_DIR", f"{DEFAULT_PREFIX}/model"),
        explain_max_words=_int("TEXTFIT_EXPLAIN_MAX_WORDS", 64),
    )


def model_store_dir() -> Path:
    """The local model store: TEXTFIT_MODEL_STORE, else ~/.cache/textfit/models (XDG_CACHE_HOME respected)."""
    configured = os.environ.get("TEXTFIT_MODEL_STORE", "").strip()
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache else Path.home() / ".cache") / "textfit" / "models"


@dataclass(frozen=True)
class TorchrunEnvironment:
    """What torchrun (or textfit's own launcher) tells each worker."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    under_textfit_launcher: bool = False
    """Whether textfit's own launcher started this worker: the launcher then says how the job ended."""


# textfit's launcher names its runs with this prefix (torchrun passes the name as TORCHELASTIC_RUN_ID).
RUN_ID_PREFIX = "textfit-"


def torchrun_environment() -> TorchrunEnvironment:
    return TorchrunEnvironment(_int("RANK", 0), _int("WORLD_SIZE", 1), _int("LOCAL_RANK", 0),
                               os.environ.get("TORCHELASTIC_RUN_ID", "").startswith(RUN_ID_PREFIX))


def gpu_count() -> int:
    """GPUs of a SageMaker instance (SM_NUM_GPUS), else what torch sees."""
    configured = os.environ.get("SM_NUM_GPUS", "").strip()
    if configured.isdigit():
        return int(configured)
    import torch

    return torch.cuda.device_count()


def thread_budget() -> int:
    """The threads this job may use: OMP_NUM_THREADS where set (a container's or a scheduler's share of the
    machine), else every core."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(configured) if configured.isdigit() and int(configured) > 0 else (os.cpu_count() or 1)
