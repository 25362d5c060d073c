"""Hyperparameter tuning on Optuna: maximise val_accuracy, as SageMaker's Automatic Model Tuning does (README: Tune).

Ranges come in SageMaker's `ParameterRanges` shape; each trial is a real `TextClassifier.fit`; a median pruner
stops hopeless trials at epoch ends (AMT's early stopping); an RDB storage (SQLite by default, in the output
folder) makes a killed run resumable and lets workers on several machines share one study.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import multiprocessing
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textfit.core import ownership
from textfit.errors import HyperparameterError, TextfitError
from textfit.hyperparameters import FIELDS, canonical_name, parse_hyperparameters
from textfit.model import artifact

log = logging.getLogger("textfit")

STRATEGIES = ("bayesian", "random", "grid")
OBJECTIVES = ("val_accuracy", "val_f1_micro", "val_f1_macro")
SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
# Seconds the storage may take to connect, or to answer a statement, before the run stops with one line.
STORAGE_TIMEOUT = 10.0

# README, Tune: the recommended ranges of SageMaker's tuning page for this algorithm.
DEFAULT_RANGES: dict[str, list[dict[str, Any]]] = {
    "IntegerParameterRanges": [{"Name": "batch_size", "MinValue": "4", "MaxValue": "128", "ScalingType": "Auto"}],
    "ContinuousParameterRanges": [
        {"Name": "beta_1", "MinValue": "1e-6", "MaxValue": "0.999", "ScalingType": "Auto"},
        {"Name": "beta_2", "MinValue": "1e-6", "MaxValue": "0.999", "ScalingType": "Auto"},
        {"Name": "eps", "MinValue": "1e-8", "MaxValue": "1.0", "ScalingType": "Auto"},
        {"Name": "learning_rate", "MinValue": "1e-6", "MaxValue": "0.5", "ScalingType": "Auto"},
        {"Name": "momentum", "MinValue": "0.0", "MaxValue": "0.999", "ScalingType": "Auto"},
        {"Name": "regularizers_l2", "MinValue": "0.0", "MaxValue": "0.999", "ScalingType": "Auto"},
    ],
    "CategoricalParameterRanges": [
        {"Name": "optimizer", "Values": ["adamw", "adam", "sgd", "rmsprop", "nesterov", "adagrad", "adadelta"]},
        {"Name": "train_only_on_top_layer", "Values": ["True", "False"]},
    ],
}

# Optimizer-specific hyperparameters are sampled only with their optimizer (SageMaker's tuning page: "use beta_1 and beta_2
# only when adamw or adam is the optimizer"), so the search does not spend trials on values that do nothing.
CONDITIONS: dict[str, set[str]] = {
    "beta_1": {"adam", "adamw"},
    "beta_2": {"adam", "adamw"},
    "momentum": {"sgd", "nesterov"},
    "epsilon": {"adam", "adamw", "rmsprop", "adadelta", "adagrad"},
    "rho": {"rmsprop", "adadelta"},
    "initial_accumulator_value": {"adagrad"},
    "warmup_steps_fraction": {"adamw"},
}


@dataclass(frozen=True)
class Range:
    name: str
    kind: str
    """continuous, integer or categorical."""
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    values: tuple[str, ...] = ()


def _range(kind: str, item: Mapping[str, Any], problems: list[str]) -> Range | None:
    raw_name = str(item.get("Name", ""))
    name = canonical_name(raw_name)
    if name is None:
        problems.append(f"{kind} range {raw_name!r} is not a hyperparameter of this algorithm")
        return None
    if kind == "categorical":
        values = tuple(str(v) for v in item.get("Values", []))
        if not values:
            problems.append(f"{raw_name}: a categorical range needs a non-empty Values list")
            return None
        for value in values:
            try:
                parse_hyperparameters({name: value})
            except HyperparameterError as exc:
                problems.append(f"{raw_name}: {exc}")
        return Range(name, kind, values=values)
    try:
        low, high = float(item["MinValue"]), float(item["MaxValue"])
    except (KeyError, ValueError):
        problems.append(f"{raw_name}: MinValue and MaxValue must be numbers given as strings, e.g. \"1e-5\"")
        return None
    scaling = str(item.get("ScalingType", "Auto"))
    meta = FIELDS[name].metadata
    if kind == "integer" and FIELDS[name].type != "int":
        problems.append(f"{raw_name} is not an integer hyperparameter; use ContinuousParameterRanges")
    if scaling not in SCALINGS:
        problems.append(f"{raw_name}: ScalingType {scaling!r} is not one of {', '.join(SCALINGS)}")
    if not low < high:
        problems.append(f"{raw_name}: MinValue {low} must be below MaxValue {high}")
    elif "min" in meta and (low < meta["min"] or high > meta["max"] or (meta.get("below_max") and high == meta["max"])):
        close = ")" if meta.get("below_max") else "]"
        problems.append(f"{raw_name}: [{low}, {high}] leaves the valid range [{meta['min']}, {meta['max']}{close}")
    if scaling in ("Logarithmic", "ReverseLogarithmic") and low <= 0:
        problems.append(f"{raw_name}: logarithmic scaling needs MinValue above 0")
    # Auto: logarithmic when the range spans orders of magnitude, as AMT picks for learning rates
    use_log = scaling in ("Logarithmic", "ReverseLogarithmic") or (scaling == "Auto" and low > 0 and high / low >= 100)
    return Range(name, kind, low, high, use_log)


def parse_ranges(data: Mapping[str, Any] | None, fixed: Mapping[str, object] | None = None) -> list[Range]:
    """SageMaker's ParameterRanges as Range objects; every problem is reported at once, before any trial.

    Raises:
        HyperparameterError: unknown names, empty or inverted ranges, values outside a hyperparameter's range.
    """
    data = DEFAULT_RANGES if data is None else data
    problems: list[str] = []
    unknown = set(data) - {"ContinuousParameterRanges", "IntegerParameterRanges", "CategoricalParameterRanges"}
    problems += [f"{key!r} is not a kind of parameter range" for key in sorted(unknown)]
    kinds = {"ContinuousParameterRanges": "continuous", "IntegerParameterRanges": "integer",
             "CategoricalParameterRanges": "categorical"}
    ranges = [r for key, kind in kinds.items() for item in data.get(key, []) if (r := _range(kind, item, problems))]
    fixed_names = {canonical_name(k) for k in (fixed or {})}
    if data is DEFAULT_RANGES:  # the user named no range: what they fix is simply not tuned
        ranges = [r for r in ranges if r.name not in fixed_names]
    seen: set[str] = set()
    for r in ranges:
        if r.name in seen:
            problems.append(f"{r.name} has more than one range")
        if r.name in fixed_names:
            problems.append(f"{r.name} is both fixed (--hp) and tuned; drop one of the two")
        seen.add(r.name)
    if not ranges and not problems:
        problems.append("no parameter ranges to tune")
    if problems:
        raise HyperparameterError("invalid tuning ranges:\n" + "\n".join(f"  - {p}" for p in problems))
    return ranges


def sample(trial: Any, ranges: list[Range], fixed: Mapping[str, object], optimizer: str) -> dict[str, str]:
    """One trial's hyperparameters: the fixed ones plus a sample of each range whose condition holds.
    `optimizer`: the run's optimizer unless it is tuned (the fixed one, else the model's default)."""
    chosen = {k: str(v) for k, v in fixed.items()}
    by_name = {r.name: r for r in ranges}
    if "optimizer" in by_name:  # sampled first: the conditions below depend on it
        optimizer = trial.suggest_categorical("optimizer", list(by_name["optimizer"].values))
        chosen["optimizer"] = optimizer
    for r in ranges:
        if r.name == "optimizer" or optimizer not in CONDITIONS.get(r.name, {optimizer}):
            continue
        if r.kind == "categorical":
            chosen[r.name] = str(trial.suggest_categorical(r.name, list(r.values)))
        elif r.kind == "integer":
            chosen[r.name] = str(trial.suggest_int(r.name, int(r.low), int(r.high), log=r.log))
        else:
            chosen[r.name] = repr(trial.suggest_float(r.name, r.low, r.high, log=r.log))
    return chosen


@dataclass
class TuningJob:
    """Everything a worker process needs to run trials of one study."""

    train: str
    validation: str | None
    model_id: str | None
    output: str
    ranges: list[Range]
    fixed: dict[str, str]
    storage: str
    study_name: str
    strategy: str = "bayesian"
    early_stopping: str = "auto"
    max_jobs: int = 10
    seed: int = 0
    threads: int = 0
    default_optimizer: str = "adam"
    initial: list[dict[str, Any]] = field(default_factory=list)
    """Configurations to run first (known-good settings, say), typed per range."""
    prune_from_epoch: int = 2
    """The first epoch at which a trial may be stopped: epoch 1 is noisy (warm-up, schedules of other lengths)."""
    heartbeat_grace: int | None = None
    """Seconds without a heartbeat after which a running trial counts as dead (default: GRACE by storage)."""
    objective: str = "val_accuracy"
    """The metric maximised: val_accuracy, or for multi-label models val_f1_micro or val_f1_macro."""
    storage_timeout: float = STORAGE_TIMEOUT
    """Seconds the storage may take to connect or to answer a statement."""


def _sampler(job: TuningJob, salt: int = 0) -> Any:
    """The search strategy. `salt` (the trials already in the study, and the worker's index) makes every run
    and every worker draw its own samples: a resumed study or a second worker with the same seed would
    otherwise replay the first run's draws and repeat finished configurations."""
    import optuna

    seed = job.seed + 1_000_003 * salt
    if job.strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if job.strategy == "grid":
        if any(r.kind != "categorical" for r in job.ranges):
            raise HyperparameterError("grid search takes categorical ranges only (as SageMaker's); "
                                      "list the values to try in CategoricalParameterRanges")
        return optuna.samplers.GridSampler({r.name: list(r.values) for r in job.ranges}, seed=seed)
    with warnings.catch_warnings():  # multivariate TPE with groups is "experimental", and the right tool for
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # conditional search spaces
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def _pruner(job: TuningJob) -> Any:
    import optuna

    if job.early_stopping == "off":
        return optuna.pruners.NopPruner()
    # AMT's early stopping: stop a job whose val_accuracy at an epoch is below the median of earlier jobs there
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=job.prune_from_epoch)


# A running trial records a heartbeat every HEARTBEAT seconds; one silent for GRACE seconds belongs to a dead
# worker and is run again. A local study (SQLite in the output folder) has no remote workers to wait for, so
# its grace period is short: a rerun after a crash starts within seconds.
HEARTBEAT = {"local": 2, "shared": 10}
GRACE = {"local": 6, "shared": 60}
MAX_RETRIES = 3


@contextlib.contextmanager
def _experimental() -> Iterator[None]:
    """Optuna marks its heartbeat and retry machinery "experimental" (since 2.8, 2.9); it is the documented way
    to recover a dead worker's trial, so its warnings would only be noise in a user's log."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _kind(job: TuningJob) -> str:
    return "local" if job.storage.startswith("sqlite:") else "shared"


class StorageError(TextfitError):
    """The tuning storage (--storage) cannot be used: a malformed URL, an unknown scheme or a driver not installed,
    a server that refuses, does not answer, rejects the credentials or lacks the database."""


def _default_storage(output: str | Path) -> str:
    return f"sqlite:///{(Path(output) / 'study.db').resolve()}"


def _masked(url: str) -> str:
    """The URL as a message may show it: the password (in the user part, or a password= query value) as ***.
    Masked up to the last "@" before the query: a password may hold an "@" or a "/" its user left unescaped."""
    url = re.sub(r"(//[^:/@]*:)[^?]*@", r"\1***@", url, count=1)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


def _label(job: TuningJob) -> str:
    if job.storage == _default_storage(job.output):
        return f"the study database {job.storage}"
    return f"--storage {_masked(job.storage)}"


def _url(job: TuningJob) -> Any:
    """The storage URL parsed, its dialect known; a malformed URL or an unknown scheme is a StorageError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    example = "e.g. postgresql://USER:PASSWORD@HOST:5432/DATABASE or sqlite:///PATH/study.db"
    try:
        url = make_url(job.storage)
    except ArgumentError:
        raise StorageError(f"{_label(job)}: not a database URL; expected {example}") from None
    except ValueError:  # SQLAlchemy parses the port with int()
        raise StorageError(f"{_label(job)}: not a database URL (its port is not a number); expected {example}"
                           ) from None
    try:
        url.get_dialect()  # loads the dialect (not the driver): an unknown scheme or driver name fails here
    except ArgumentError:
        raise _storage_error(job, _unknown_scheme(url)) from None
    return url


def _unknown_scheme(url: Any) -> str:
    from sqlalchemy.dialects import registry
    from sqlalchemy.exc import ArgumentError

    backend = url.get_backend_name()
    try:
        registry.load(backend)
    except ArgumentError:
        hint = "; write postgresql://" if backend == "postgres" else ""
        return (f"unknown database scheme {url.drivername!r}{hint} (SQLAlchemy knows e.g. postgresql://, "
                "mysql+pymysql://, sqlite:///)")
    return (f"{backend} has no driver {url.get_driver_name()!r} in SQLAlchemy; name an installed one "
            f"({backend}+DRIVER://) or leave it out for the default")


def _engine_kwargs(url: Any, timeout: float) -> dict[str, Any]:
    """Timeouts for the driver, so that a storage that does not answer fails in `timeout` seconds, not never:
    PostgreSQL's connect_timeout (whole seconds, at least 2: libpq's rule) and statement_timeout; MySQL's
    connect, read and write timeouts; SQLite's wait for a lock. What the URL's own query sets is kept."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    seconds, ms = max(1, math.ceil(timeout)), max(1, math.ceil(timeout * 1000))
    args: dict[str, Any] = {}
    if backend == "postgresql" and driver in ("psycopg", "psycopg2", "psycopg2cffi"):
        # statement_timeout: the server cancels a statement that waits (on a lock, a busy server) that long
        options = f"-c statement_timeout={ms}"
        args = {"connect_timeout": _pg_connect_seconds(timeout),
                "options": f"{options} {url.query['options']}" if "options" in url.query else options}
        if _libpq_version(driver) >= 120000:  # older libpq refuses the parameter
            args["tcp_user_timeout"] = ms  # the connection drops when the server's host stops acknowledging
    elif backend in ("mysql", "mariadb") and driver in ("mysqldb", "pymysql"):
        args = {"connect_timeout": seconds, "read_timeout": seconds, "write_timeout": seconds}
    elif backend == "sqlite" and driver == "pysqlite":
        args = {"timeout": float(timeout)}
    args = {k: v for k, v in args.items() if k not in url.query or k == "options"}
    return {"connect_args": args} if args else {}


def _pg_connect_seconds(timeout: float) -> int:
    """libpq's connect_timeout: whole seconds, at least 2."""
    return max(2, math.ceil(timeout))


def _libpq_version(driver: str) -> int:
    """The libpq under a PostgreSQL driver, as 170002 for 17.2; 0 when unknown."""
    try:
        if driver == "psycopg":
            import psycopg

            return int(psycopg.pq.version())
        if driver == "psycopg2":
            import psycopg2.extensions

            return int(psycopg2.extensions.libpq_version())
    except Exception:  # the driver is missing or broken: opening the storage says so
        pass
    return 0


def _root(exc: BaseException) -> BaseException:
    """The SQLAlchemy or driver error under Optuna's StorageInternalError, or the driver's ImportError under
    Optuna's own (both raised "from" it)."""
    import optuna

    if isinstance(exc, (optuna.exceptions.StorageInternalError, ImportError)) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def _detail(exc: BaseException) -> str:
    """The driver's own message, first line, without its framing (psycopg's "connection failed: connection to
    server at ..., port N failed:", the server's "FATAL:")."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = next((x.strip() for x in text.splitlines() if x.strip()), type(exc).__name__)
    line = re.sub(r"^\(\S+\)\s*", "", line)  # SQLAlchemy's "(module.Error)" prefix, where there is no orig
    line = re.sub(r"^connection failed:\s*", "", line)
    line = re.sub(r'^connection to server (at|on) .*? failed:\s*', "", line)
    line = re.sub(r"^(FATAL|ERROR):\s*", "", line)
    return line[:1].lower() + line[1:]


def _storage_error(job: TuningJob, exc: BaseException | str) -> StorageError:
    """One line for a storage that cannot be used: what, in the words of the driver, and what to check."""
    label = _label(job)
    if isinstance(exc, str):
        return StorageError(f"{label}: {exc}")
    exc = _root(exc)
    if isinstance(exc, ImportError):
        url = _url(job)
        backend, driver = url.get_backend_name(), url.get_driver_name()
        return StorageError(f"{label}: its driver {driver!r} is not installed ({exc}); install it, or name an "
                            f"installed driver in the scheme ({backend}+DRIVER://)")
    detail = _detail(exc)
    low = detail.lower()
    connecting = getattr(exc, "statement", "") is None  # SQLAlchemy's DBAPIError of a connect has no statement
    t = f"{job.storage_timeout:g}"
    if "timeout expired" in low or "timed out" in low or (connecting and "timeout" in low):
        if job.storage.startswith("postgresql"):
            t = str(_pg_connect_seconds(job.storage_timeout))
        why = (f"cannot connect (no answer within {t} s); check the host and port, and that the server there is "
               "a database server that is up")
    elif "statement timeout" in low or "canceling statement" in low or "lock wait timeout" in low:
        why = (f"no answer within {t} s ({detail}); the database is busy or locked by another session, or "
               "raise the storage timeout")
    elif "connection refused" in low:
        why = f"cannot connect ({detail}); check the host and port, and that the server is running"
    elif "password authentication failed" in low or "access denied" in low or "authentication failed" in low:
        why = f"cannot connect ({detail}); check the user name and password"
    elif re.search(r"database .* does not exist|unknown database", low):
        why = f"the database does not exist ({detail}); create it, or name an existing one"
    elif re.search(r"role .* does not exist", low):
        why = f"cannot connect ({detail}); check the user name"
    elif "resolve host" in low or "translate host name" in low or "name or service not known" in low:
        why = f"cannot connect ({detail}); check the host name"
    elif "pg_hba.conf" in low:
        why = f"the server refuses this client ({detail}); allow it in the server's pg_hba.conf"
    elif "unable to open database file" in low:
        why = f"cannot open the SQLite file ({detail}); check that its folder exists and is writable"
    elif "permission denied" in low:
        why = f"the user may not use this database ({detail}); grant it the rights to create tables there"
    elif connecting:
        why = f"cannot connect ({detail})"
    else:
        why = f"cannot use it ({detail})"
    return StorageError(f"{label}: {why}")


def _transient(exc: BaseException) -> bool:
    """An error that a moment's wait may cure: workers started together race to create the schema and the
    study (the loser finds them made on its next try). Not a failed connect, a timeout or missing rights."""
    from sqlalchemy.exc import DBAPIError

    exc = _root(exc)
    if not isinstance(exc, DBAPIError) or exc.statement is None:
        return False
    low = _detail(exc).lower()
    return not any(word in low for word in ("timeout", "canceling statement", "permission denied"))


def _is_storage_failure(exc: BaseException) -> bool:
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (SQLAlchemyError, optuna.exceptions.StorageInternalError))


def _storage(job: TuningJob) -> Any:
    """Optuna's RDB storage with heartbeats: a trial whose worker died (killed run, lost machine) is failed
    once its heartbeat is stale and retried with the same hyperparameters (RetryHeartbeatStaleTrialCallback).

    Raises:
        StorageError: the storage cannot be used (one line saying why), within job.storage_timeout seconds.
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    url = _url(job)
    kind = _kind(job)
    grace = job.heartbeat_grace or GRACE[kind]
    for attempt in range(5):
        # made, then initialised (it connects, creates the schema): an engine whose initialisation failed is
        # disposed of, not left with open connections for the garbage collector
        storage = optuna.storages.RDBStorage.__new__(optuna.storages.RDBStorage)
        try:
            with _experimental():
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
                optuna.storages.RDBStorage.__init__(
                    storage, job.storage, engine_kwargs=_engine_kwargs(url, job.storage_timeout),
                    heartbeat_interval=min(HEARTBEAT[kind], max(1, grace // 3)), grace_period=grace,
                    heartbeat_stale_trial_callback=retry)
            return storage
        except BaseException as exc:
            if getattr(storage, "engine", None) is not None:
                storage.engine.dispose()
            if not isinstance(exc, (ImportError, SQLAlchemyError, optuna.exceptions.StorageInternalError)):
                raise  # SIGTERM's exception among them: as it is
            if attempt == 4 or not _transient(exc):
                raise _storage_error(job, exc) from exc
        time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _study(job: TuningJob) -> Any:
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(job)
    for attempt in range(5):
        try:
            return optuna.create_study(study_name=job.study_name, storage=storage, direction="maximize",
                                       sampler=_sampler(job), pruner=_pruner(job), load_if_exists=True)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            # Workers started together race to create the study; the loser finds it made on its next try.
            if attempt == 4 or not _transient(exc):
                storage.engine.dispose()
                raise _storage_error(job, exc) from exc
        time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _retried(study: Any) -> set[int]:
    """Numbers of the trials whose worker died and that were queued again under a new number."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with _experimental():
        numbers = [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in study.get_trials(deepcopy=False)]
    return {n for n in numbers if n is not None}


def _counted(study: Any) -> int:
    """Trials that count toward max_jobs: finished or running ones, not those of a dead worker, which run again."""
    from optuna.trial import TrialState

    retried = _retried(study)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and t.number not in retried))


def _objective(job: TuningJob) -> Any:
    import optuna

    from textfit.classifier import LabelMode, TextClassifier
    from textfit.jobs.train import read_channels, save_artifact

    typed = parse_hyperparameters(job.fixed)  # the label mode is fixed for the study: the channels are read once
    mode = LabelMode(bool(typed.get("multi_label", False)), str(typed.get("label_delimiter", "|")))
    train, validation = read_channels(job.train, job.validation, mode)

    def objective(trial: optuna.Trial) -> float:
        params = sample(trial, job.ranges, job.fixed, job.default_optimizer)
        trial.set_user_attr("hyperparameters", params)

        def report(epoch: int, metrics: Any) -> None:
            value = getattr(metrics, job.objective)
            trial.report(value, epoch)
            if trial.should_prune():
                log.info("Trial %d stopped early at epoch %d (%s %.4f below the median)", trial.number, epoch,
                         job.objective, value)
                raise optuna.TrialPruned()

        if job.validation is None and "validation_split_ratio" not in params:
            # a trial is scored on held-out rows; the small-data recipe holds rows out only when asked to
            params = {**params, "validation_split_ratio": str(FIELDS["validation_split_ratio"].default)}
        clf = TextClassifier(job.model_id, params).fit(train, validation=validation, on_epoch=report)
        saved = save_artifact(clf, Path(job.output) / "trials" / f"trial-{trial.number}", overwrite=True,
                              onnx="none")
        trial.set_user_attr("model", f"{socket.gethostname()}:{saved.resolve()}")
        best = clf.history_[clf.best_epoch_ - 1][job.objective]
        trial.set_user_attr("epochs_run", len(clf.history_))
        log.info("Trial %d: %s=%.4f", trial.number, job.objective, best)
        return float(best)

    return objective


def _stop_at(max_jobs: int) -> Any:
    def callback(study: Any, trial: Any) -> None:
        if _counted(study) >= max_jobs:
            study.stop()

    return callback


def _worker_process(job: TuningJob, index: int) -> None:
    """A worker in a process of its own, textfit's: its allocator setting is its own to choose (kernels.py)."""
    from textfit.training import kernels

    kernels.keep_freed_memory()
    run_worker(job, index)


def run_worker(job: TuningJob, index: int = 0) -> None:
    """Run trials until the study holds max_jobs of them; workers on other machines may share the study."""
    import optuna
    import torch

    from textfit.errors import TextfitError

    if job.threads:
        torch.set_num_threads(job.threads)
    study = _study(job)
    study.sampler = _sampler(job, salt=len(study.get_trials(deepcopy=False)) * 16 + index + 1)
    with _experimental():
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
    if _counted(study) >= job.max_jobs:
        return
    if not study.get_trials(deepcopy=False):
        for params in job.initial:
            study.enqueue_trial(params, skip_if_exists=True)
    study.optimize(_objective(job), callbacks=[_stop_at(job.max_jobs)], catch=(TextfitError,),
                   n_trials=job.max_jobs)
    _drain(study, job)


def _drain(study: Any, job: TuningJob) -> None:
    """The budget is filled, but some of it may be trials other workers are running: wait for them. A trial
    whose worker died is failed when its heartbeat lapses and queued again; this worker runs it."""
    import optuna
    from optuna.trial import TrialState

    from textfit.errors import TextfitError

    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:
            study.optimize(_objective(job), catch=(TextfitError,), n_trials=len(waiting))
            continue
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        time.sleep(1)
        with _experimental():
            optuna.storages.fail_stale_trials(study)


def _defaults_in_ranges(model_id: str | None, ranges: list[Range]) -> dict[str, object]:
    """The values the model's defaults give the tuned hyperparameters, where the ranges hold them."""
    from textfit.hyperparameters import resolve
    from textfit.model.zoo import defaults_for

    defaults = resolve({}, defaults_for(model_id))
    chosen: dict[str, object] = {}
    for r in ranges:
        value = getattr(defaults, r.name)
        inside = str(value) in r.values if r.kind == "categorical" else r.low <= float(value) <= r.high
        if inside:
            chosen[r.name] = value
    return chosen


def _typed_initial(initial: list[Mapping[str, object]], ranges: list[Range]) -> list[dict[str, Any]]:
    """Initial configurations as the sampler's types; a name or value outside the ranges is an error."""
    by_name = {r.name: r for r in ranges}
    typed = []
    for i, params in enumerate(initial, start=1):
        row: dict[str, Any] = {}
        for raw, value in params.items():
            name = canonical_name(raw)
            r = by_name.get(name or "")
            if r is None:
                raise HyperparameterError(f"initial configuration {i}: {raw} has no range; fix it with --hp instead")
            if r.kind == "categorical":
                if str(value) not in r.values:
                    raise HyperparameterError(f"initial configuration {i}: {raw}={value} is not among {list(r.values)}")
                row[r.name] = str(value)
            else:
                number = int(float(str(value))) if r.kind == "integer" else float(str(value))
                if not r.low <= number <= r.high:
                    raise HyperparameterError(f"initial configuration {i}: {raw}={value} is outside [{r.low}, {r.high}]")
                row[r.name] = number
        typed.append(row)
    return typed


def _reclaim_interrupted(job: TuningJob) -> int:
    """Trials a killed run of this (local, unshared) study left running: wait out their heartbeat's grace
    period (nobody else runs them), then Optuna fails them and queues their configurations again."""
    import optuna
    from optuna.trial import TrialState

    study = _study(job)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    grace = job.heartbeat_grace or GRACE["local"]
    log.info("Resuming: %d trial(s) interrupted by an earlier run will be run again (once their heartbeat "
             "lapses, within %d s)", len(running), grace)
    deadline = time.monotonic() + grace + HEARTBEAT["local"] + 5
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and time.monotonic() < deadline:
        with _experimental():
            optuna.storages.fail_stale_trials(study)
        time.sleep(1)
    return len(running)


@dataclass
class TuningResult:
    best_trial: int
    best_val_accuracy: float
    best_hyperparameters: dict[str, str]
    trials: list[dict[str, Any]]
    output: Path


def _rows(study: Any, metric: str = "val_accuracy") -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        value = t.value if t.value is not None else (max(t.intermediate_values.values())
                                                     if t.intermediate_values else None)
        rows.append({"trial": t.number, "state": t.state.name.lower(), metric: value,
                     "duration_s": None if duration is None else round(duration, 1),
                     "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
                     **t.user_attrs.get("hyperparameters", {})})
    return rows


def _write_table(rows: list[dict[str, Any]], path: Path, metric: str = "val_accuracy") -> None:
    columns = ["trial", "state", metric, "duration_s", "epochs_run"]
    columns += sorted({k for r in rows for k in r} - set(columns))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _plots(rows: list[dict[str, Any]], output: Path, metric: str = "val_accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r[metric] is not None]
    colors = {"complete": "tab:blue", "pruned": "tab:orange", "fail": "tab:red", "running": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for state, color in colors.items():
        pts = [r for r in done if r["state"] == state]
        if pts:
            ax.scatter([r["trial"] for r in pts], [r[metric] for r in pts], c=color, label=state)
    ax.set(xlabel="trial", ylabel=metric, title=f"{metric} by trial (pruned: best before stopping)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(output / f"{metric}_by_trial.png", dpi=100)
    plt.close(fig)

    complete = sorted((r for r in done if r["state"] == "complete"), key=lambda r: r["trial"])
    fig, ax = plt.subplots(figsize=(7, 4))
    best, xs, ys = -math.inf, [], []
    for r in complete:
        best = max(best, r[metric])
        xs.append(r["trial"])
        ys.append(best)
    ax.scatter([r["trial"] for r in complete], [r[metric] for r in complete], label="objective")
    ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="optimization history")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(output / "optimization_history.png", dpi=100)
    plt.close(fig)


def _summary(rows: list[dict[str, Any]], best: int, metric: str = "val_accuracy") -> None:
    log.info("%-6s %-9s %-12s %-10s %s", "trial", "state", metric, "seconds", "hyperparameters")
    for r in rows:
        acc = "" if r[metric] is None else f"{r[metric]:.4f}"
        hp = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("trial", "state", metric, "duration_s",
                                                                      "epochs_run"))
        mark = " *" if r["trial"] == best else ""
        log.info("%-6s %-9s %-12s %-10s %s%s", r["trial"], r["state"], acc, r["duration_s"] or "", hp, mark)


def tune(train: str | Path, validation: str | Path | None = None, *, model_id: str | None = None,
         output: str | Path = "tuning", max_jobs: int = 10, max_parallel_jobs: int = 1,
         ranges: Mapping[str, Any] | None = None, hyperparameters: Mapping[str, object] | None = None,
         storage: str | None = None, study_name: str = "textfit", strategy: str = "bayesian",
         early_stopping: str = "auto", seed: int = 0, keep_trials: bool = False,
         initial: list[Mapping[str, object]] | None = None, start_from_defaults: bool = False,
         prune_from_epoch: int = 2, heartbeat_grace: int | None = None, objective: str = "val_accuracy",
         storage_timeout: float | None = None) -> TuningResult:
    """Search hyperparameters to maximise val_accuracy; the best trial's model is copied to OUTPUT/best.

    Running the same command again resumes the study where it stopped. `initial` configurations (values for
    some of the ranges) run first, in order, before the strategy takes over; `start_from_defaults` puts the
    model's own defaults first (those inside the ranges), so the search never ends below them.

    `storage` is an RDB URL that workers share (default: SQLite in `output`); it is opened before anything is
    written or trained. `storage_timeout` (seconds, default STORAGE_TIMEOUT: 10) bounds how long it may take to
    connect or to answer a statement.

    Raises:
        HyperparameterError: invalid ranges, strategy or job counts, before any trial starts.
        StorageError: the storage cannot be used (malformed URL, unknown scheme or driver, refused or silent
            server, wrong credentials, missing database), before any trial starts.
    """
    from textfit.core.environment import thread_budget
    from textfit.data.channels import read_channel
    from textfit.model.zoo import defaults_for

    if strategy not in STRATEGIES:
        raise HyperparameterError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if early_stopping not in ("auto", "off"):
        raise HyperparameterError(f"early stopping {early_stopping!r} is not auto or off")
    if max_jobs < 1 or not 1 <= max_parallel_jobs <= max_jobs:
        raise HyperparameterError("need max_jobs >= 1 and 1 <= max_parallel_jobs <= max_jobs")
    timeout = STORAGE_TIMEOUT if storage_timeout is None else storage_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise HyperparameterError(f"storage timeout {storage_timeout!r} must be a positive number of seconds")
    fixed = {k: str(v) for k, v in (hyperparameters or {}).items()}
    typed = parse_hyperparameters(fixed)  # once: bad fixed values fail now, before any trial
    multi = bool(typed.get("multi_label", False))
    if objective not in OBJECTIVES:
        raise HyperparameterError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if objective != "val_accuracy" and not multi:
        raise HyperparameterError(f"--objective {objective} is a multi-label metric; fix multi_label=True "
                                  "(--hp multi_label=True) or tune val_accuracy")
    parsed = parse_ranges(ranges, fixed)
    if start_from_defaults:
        initial = [_defaults_in_ranges(model_id, parsed), *(initial or [])]
    typed_initial = _typed_initial(list(initial or []), parsed)
    delimiter = str(typed.get("label_delimiter", "|"))
    read_channel(train, multi_label=multi, delimiter=delimiter)  # bad data fails now, not in every trial
    if validation is not None:
        read_channel(validation, multi_label=multi, delimiter=delimiter)
    out = Path(output)
    default_opt = typed.get("optimizer", defaults_for(model_id).get("optimizer", "adam"))
    job = TuningJob(str(train), None if validation is None else str(validation), model_id, str(out), parsed, fixed,
                    storage or _default_storage(out), study_name, strategy, early_stopping,
                    max_jobs, seed, max(1, thread_budget() // max_parallel_jobs), str(default_opt),
                    typed_initial, prune_from_epoch, heartbeat_grace, objective, float(timeout))
    if storage is not None:  # a shared storage that cannot be used fails now, before the output folder is made
        _storage(job).engine.dispose()
    ownership.check_writable(out, ownership.TUNING, "--output")  # a rerun resumes in its own folder
    out.mkdir(parents=True, exist_ok=True)
    ownership.mark(out, ownership.TUNING, extra=ownership.TUNING_NAMES)  # before any is written: a killed study's folder is its own
    if storage is None:
        _reclaim_interrupted(job)
    start = time.perf_counter()
    try:
        _run(job, max_parallel_jobs)
        return _finish(job, out, keep_trials, time.perf_counter() - start)
    except Exception as exc:
        if _is_storage_failure(exc):  # the storage went away or stopped answering during the run
            raise _storage_error(job, exc) from exc
        raise


def _run(job: TuningJob, parallel: int) -> None:
    if parallel == 1:
        run_worker(job)
        return
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    workers = [context.Process(target=_worker_process, args=(job, i), name=f"textfit-tune-{i}")
               for i in range(parallel)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _finish(job: TuningJob, out: Path, keep_trials: bool, seconds: float) -> TuningResult:
    from optuna.trial import TrialState

    study = _study(job)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise HyperparameterError("no trial completed; see the log above for why each one stopped")
    best = study.best_trial
    rows = _rows(study, job.objective)
    _write_table(rows, out / "trials.csv", job.objective)
    _plots(rows, out, job.objective)
    source = out / "trials" / f"trial-{best.number}"
    if source.is_dir():
        with artifact.staged(out / "best", folder=True, kind="artifact") as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        where = str(out / "best")
    else:  # a shared study: the best trial ran on another worker, which keeps its model
        where = f"{best.user_attrs.get('model', 'another worker')} (trained by another worker)"
    if not keep_trials and (out / "trials").is_dir():
        for folder in (out / "trials").iterdir():
            if folder.name != source.name and folder.name.startswith("trial-") and ownership.owner(folder):
                shutil.rmtree(folder, ignore_errors=True)
    _summary(rows, best.number, job.objective)
    log.info("Best: trial %d, val_accuracy=%.4f, in %.0f s; its model is in %s", best.number, best.value, seconds,
             where)
    return TuningResult(best.number, float(best.value), dict(best.user_attrs.get("hyperparameters", {})), rows, out)
