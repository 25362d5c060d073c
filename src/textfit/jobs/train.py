"""The training job around the estimator: what `textfit train` and `textfit.train()` run.

A job reads channels from anywhere (local paths or s3:// URIs), joins the other workers of a distributed run,
writes TensorBoard events, and saves the artifact (with its tarball, uploaded where the output is remote) from
rank 0 alone. The estimator it wraps (classifier.TextClassifier) knows none of this.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from textfit.classifier import LabelMode, TextClassifier, label_mode
from textfit.core import ownership
from textfit.data import quality
from textfit.data.channels import Channel, read_channel
from textfit.errors import ArtifactError, ReportError, TextfitError
from textfit.hyperparameters import Given
from textfit.jobs import remote
from textfit.model import artifact
from textfit.training import distributed, kernels
from textfit.training.checkpoints import StopSignal
from textfit.training.loop import EpochMetrics

log = logging.getLogger("textfit")


@contextlib.contextmanager
def _tensorboard(folder: str | Path) -> Iterator[Callable[[int, EpochMetrics], None]]:
    """An epoch hook that writes TensorBoard scalars (loss, accuracy, val_loss, val_accuracy) to `folder`."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TextfitError("--tensorboard needs the tensorboard package: pip install textfit[tensorboard]") from None
    writer = SummaryWriter(log_dir=str(folder))

    def write(epoch: int, m: EpochMetrics) -> None:
        for name, value in m.as_dict().items():
            if value is not None and name != "seconds":
                writer.add_scalar(name, value, epoch)
        writer.flush()

    try:
        yield write
    finally:
        writer.close()


def write_reports(clf: TextClassifier, folder: Path) -> list[str]:
    """The reports beside the model (the model card, the validation report, the training curves and confusion
    matrix); each that fails is named in the list returned, never losing the model."""
    from textfit.reports import plots
    from textfit.reports.card import model_card

    report = clf.validation_report_
    steps: list[tuple[str, Callable[[], object]]] = [
        (artifact.CARD, lambda: (folder / artifact.CARD).write_text(model_card(clf.manifest_, report),
                                                                    encoding="utf-8"))]
    if clf.history_:
        steps.append((artifact.CURVES, lambda: plots.training_curves(clf.history_, folder / artifact.CURVES)))
    if report is not None:
        steps.append((artifact.REPORT, lambda: artifact.write_json(folder / artifact.REPORT, report)))
        if report.get("confusion_matrix") is not None:
            steps.append((artifact.CONFUSION, lambda: plots.confusion_matrix(
                report["confusion_matrix"], report["labels"], report["accuracy"], folder / artifact.CONFUSION)))
    failed = []
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # a report is not the model: whatever broke it, the model is kept
            (folder / name).unlink(missing_ok=True)
            failed.append(f"{name} could not be written ({type(exc).__name__}: {exc})")
    return failed


def save_artifact(clf: TextClassifier, output: str | Path, *, overwrite: bool = False, tar: bool = False,
                  onnx: str = "fp32") -> Path:
    """The training job's artifact: the model folder (the ONNX graph, then TextClassifier.write_model: weights,
    tokenizer, labels, manifest) and its reports, written atomically together; with `tar`, `<output>.tar.gz` beside it
    (SageMaker's model.tar.gz).

    Raises:
        ArtifactError: the model itself could not be written (nothing is left behind).
        ReportError: the model is saved, but a report, a picture, the ONNX graph or the tarball is not.
    """
    output = Path(output)
    if clf.model_ is None:
        raise ArtifactError("this model was loaded for ONNX inference only; load it with backend='torch' to save it")
    failed: list[str] = []

    if onnx not in ("fp32", "int8", "none"):
        raise ArtifactError(f"onnx={onnx!r} is not valid; use fp32, int8 or none")

    _stamp(clf.manifest_)  # a model fitted in memory is saved as an artifact too (tuning's trials)

    # Training's freed buffers back to the kernel before the graph is traced and the reports drawn: on short
    # texts saving, not training, set the whole job's peak (1,341 MB against training's 1,167 on 4,000 Debian
    # descriptions; 1,252 with this).
    kernels.release_freed_memory()

    def write(folder: Path) -> None:
        if onnx != "none":  # first: the manifest's digests then cover the graph
            failed.extend(clf.write_graph(folder, quantize=onnx == "int8"))
        clf.write_model(folder)
        failed.extend(write_reports(clf, folder))

    tarball = artifact.tarball_path(output) if tar else None
    artifact.write_atomically(output, write, overwrite=overwrite, tarball=tarball)
    if tarball is not None:
        failed.extend(artifact.tarball_failures(output, tarball))
    if failed:
        raise ReportError(f"the model is saved in {output}, but {'; '.join(failed)}")
    return output


def _save(clf: TextClassifier, output: str | Path, tar: bool, overwrite: bool, onnx: str) -> None:
    if not remote.is_remote(output):
        save_artifact(clf, output, overwrite=overwrite, tar=tar, onnx=onnx)
        return
    with tempfile.TemporaryDirectory(prefix="textfit-out-") as tmp:
        try:
            folder = save_artifact(clf, Path(tmp) / "model", tar=tar, onnx=onnx)
        except ReportError as exc:  # upload what was saved, then say what is missing
            folder, missing = Path(tmp) / "model", str(exc)
        else:
            missing = ""
        try:
            remote.upload(folder, str(output))
            if tar and folder.with_name("model.tar.gz").is_file():
                remote.upload(folder.with_name("model.tar.gz"), str(output).rstrip("/") + ".tar.gz")
        except TextfitError as exc:  # keep the trained model here rather than lose it with the temporary folder
            kept = Path.cwd() / f"textfit-not-uploaded-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.copytree(folder.parent, kept)
            raise ReportError(f"the model could not be uploaded to {output} ({exc}); it is kept in {kept}: "
                              "copy it there once the store can be reached") from None
        if missing:
            raise ReportError(missing.replace(str(folder), str(output)))


def _weights_bytes(model_id: str | None, model: str | Path | None) -> int:
    """About what the artifact will take on disk (its weights, in fp32, and the rest), to check for room before
    training: the source checkpoint's safetensors, or 0 where the source is not local yet."""
    from textfit.model.zoo import resolve_model

    try:
        source = Path(model) if model is not None else Path(resolve_model(model_id).path)
    except TextfitError:
        return 0  # the fit says why the model cannot be found, with the fix
    weights = source / "model.safetensors" if source.is_dir() else source
    return int(weights.stat().st_size * 1.1) + 20_000_000 if weights.is_file() else 0




def train(train: str | Path, validation: str | Path | None = None, *, model_id: str | None = None,
          hyperparameters: Mapping[str, object] | None = None, output: str | Path | None = None,
          model: str | Path | None = None, tar: bool = False, overwrite: bool = False,
          allow_network: bool = False, tensorboard: str | Path | None = None,
          checkpoint_dir: str | Path | None = None, onnx: str = "fp32", stop: StopSignal | None = None
          ) -> TextClassifier:
    """Fine-tune and (with `output`) save: what `textfit train` does, from Python. Paths may be s3:// URIs.

    With `checkpoint_dir`, training checkpoints there at each epoch end and, once `stop` is requested, at the
    next step boundary (then TrainingInterrupted), and a rerun with the same folder resumes (checkpoints.py).
    This function installs no signal handler and leaves the allocator as it is: `textfit train` and `textfit
    sagemaker train`, which own their process, make SIGTERM and SIGINT request `stop` and keep freed memory
    (kernels.keep_freed_memory); a program calling it chooses for its own process. `onnx` (fp32, int8 or none)
    is the ONNX graph saved in the artifact, from which `serve` starts at once.

    >>> clf = textfit.train("data/", model_id="textfit-tc-all-minilm-l6-v2", output="model/")  # doctest: +SKIP
    >>> textfit.load("model/").predict(["a lovely film"])  # doctest: +SKIP
    """
    world = distributed.init_from_environment()  # under torchrun or --nproc-per-node: join the other workers
    try:
        if output is not None and not remote.is_remote(output) and world.is_main:  # before hours of training
            local_inputs = tuple(Path(p) for p in (train, validation) if p is not None and not remote.is_remote(p))
            needed = 0 if model is not None and remote.is_remote(model) else _weights_bytes(model_id, model)
            artifact.check_output(Path(output), overwrite, inputs=local_inputs, needed_bytes=needed * (2 if tar else 1),
                                  tarball=artifact.tarball_path(Path(output)) if tar else None)
        if checkpoint_dir is not None and world.is_main:
            ownership.check_apart(Path(checkpoint_dir), "--checkpoint-dir", [
                (flag, Path(p)) for flag, p in (("--train", train), ("--validation", validation), ("--output", output),
                                                ("--model", model)) if p is not None and not remote.is_remote(p)])
        with contextlib.ExitStack() as stack:
            def local(location: str | Path) -> Path:
                return stack.enter_context(remote.local_copy(location))

            source = stack.enter_context(artifact.opened(local(model))) if model is not None else None
            given = Given.parse(dict(hyperparameters or {}))  # a wrong value is told before any data is read
            train_ch, val_ch = read_channels(local(train), local(validation) if validation is not None else None,
                                             label_mode(given, source))
            if world.is_main:
                log_data_checks(train_ch, val_ch)
            clf = TextClassifier(model_id, hyperparameters, init_model=source, allow_network=allow_network)
            on_epoch = stack.enter_context(_tensorboard(tensorboard)) if tensorboard and world.is_main else None
            clf.fit(train_ch, validation=val_ch, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir, stop=stop)
            clf.init_model = model  # where it came from, not the folder it was extracted to
        record_provenance(clf, train_ch, val_ch, model)
        clf.manifest_["workers"] = world.size
        if output is not None and world.is_main:  # one artifact, written by rank 0 alone
            _save(clf, output, tar, overwrite, onnx)
    finally:
        if world.active:
            distributed.shutdown()
    return clf


def read_channels(train: str | Path, validation: str | Path | None, mode: LabelMode
                  ) -> tuple[Channel, Channel | None]:
    """The training channel and the validation channel (if any), every row checked, labels read as `mode` says."""
    def read(path: str | Path) -> Channel:
        return read_channel(path, multi_label=mode.multi_label, delimiter=mode.delimiter)

    return read(train), read(validation) if validation is not None else None


def log_data_checks(train: Channel, validation: Channel | None) -> None:
    """One line each for copies between training and validation rows and for conflicting labels: hashing only
    (data/quality.py), nothing refused."""
    splits = {"train": (train.texts, train.labels, train.lines)}
    if validation is not None:
        splits["validation"] = (validation.texts, validation.labels, validation.lines)
    for line in quality.training_lines(quality.inspect_splits(splits, flag_texts=False)):
        log.info("%s", line)


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    from textfit import __version__

    return {"textfit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version()}


def record_provenance(clf: TextClassifier, train: Channel, validation: Channel | None,
                      model: str | Path | None) -> None:
    """What the manifest says of where a fit's model came from: each channel's file and digest, the model trained
    further, the versions that trained it and when."""
    data = clf.manifest_["data"]
    data["train"] = {"file": str(train.path), "sha256": train.fingerprint, **data["train"]}
    if data.get("validation") is not None:
        source = validation or train  # a split of the training channel
        data["validation"] = {"file": str(source.path), "sha256": source.fingerprint, **data["validation"]}
    clf.manifest_["initialized_from"] = str(model) if model is not None else None
    _stamp(clf.manifest_)


def _stamp(manifest: dict[str, Any]) -> None:
    """The versions that trained the model and when, unless the job recorded them already."""
    manifest.setdefault("versions", _versions())
    manifest.setdefault("created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))


def load(path: str | Path, *, backend: str = "torch", quantized: bool = False,
         threads: int | None = None) -> TextClassifier:
    """Load a trained model (folder, model.tar.gz, or an s3:// URI of either); see TextClassifier.load."""
    with remote.local_copy(path) as local:
        return TextClassifier.load(local, backend=backend, quantized=quantized, threads=threads)
