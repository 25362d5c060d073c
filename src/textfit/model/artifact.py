"""The model artifact: a plain folder of safetensors and JSON, written atomically, read safely.

The folder is a Hugging Face checkpoint (`pipeline("text-classification", model=DIR)` loads it as it is)
plus textfit's labels file and manifest. Tarballs are extracted with no path outside the target, no links, and
bounded: in entries, and in bytes by the disk's free space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from textfit.core import shapes
from textfit.core.shapes import Maybe, require
from textfit.errors import ArtifactError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LABELS = "labels_info.json"
MANIFEST = "textfit.json"
REPORT = "validation_report.json"
CURVES = "training_curves.png"
CONFUSION = "confusion_matrix.png"
CARD = "README.md"
TOKENIZER_FILES = ("tokenizer_config.json",)
"""Files every saved tokenizer writes; the vocabulary files vary by tokenizer type."""
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model",
                    "tokenizer.model")
"""One of these holds the vocabulary: without it transformers would build an almost empty one."""
REQUIRED = (CONFIG, WEIGHTS, LABELS, MANIFEST, *TOKENIZER_FILES)
DIGESTS = "files"
"""The manifest's key for the sha256 of every file the model is made of, written at save, checked at load."""
CHECKED = (CONFIG, WEIGHTS, LABELS)
"""Besides the tokenizer files: what a prediction depends on, so what load verifies."""
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.endswith(TAR_SUFFIXES)


def missing_files(folder: Path) -> list[str]:
    return [name for name in REQUIRED if not (folder / name).is_file()]


def check_complete(folder: Path) -> None:
    """Raise one error that names every missing file."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such model folder; pass the output folder of `textfit train` or its tarball")
    missing = missing_files(folder)
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        missing.append("the tokenizer's vocabulary (tokenizer.json)")
    if missing:
        raise ArtifactError(
            f"{folder}: not a complete textfit model, missing {', '.join(missing)}; "
            "pass the output folder of `textfit train` (or its model.tar.gz)"
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


ONNX_FILES = ("onnx/model.onnx", "onnx/model.int8.onnx")


def model_files(folder: Path) -> list[str]:
    """The files a prediction depends on: config, weights, labels, every tokenizer file and ONNX graph present."""
    tokenizer = [name for name in (*TOKENIZER_FILES, *VOCABULARY_FILES, "special_tokens_map.json", "merges.txt",
                                   "added_tokens.json") if (folder / name).is_file()]
    return [*CHECKED, *tokenizer, *(name for name in ONNX_FILES if (folder / name).is_file())]


def refresh_digests(folder: Path) -> None:
    """Record the digests of a saved folder's files again, after a file was added to it (an ONNX export)."""
    manifest = read_json(folder / MANIFEST)
    manifest[DIGESTS] = digests(folder)
    with staged(folder / MANIFEST) as tmp:
        write_json(tmp, manifest)


def digests(folder: Path) -> dict[str, str]:
    """sha256 of each model file, for the manifest: load then knows a damaged or missing file by name."""
    return {name: sha256(folder / name) for name in model_files(folder)}


def verify(folder: Path, manifest: dict[str, Any], only: Collection[str] | None = None) -> None:
    """Check every file (or those named in `only`) against the digests written at save; one error naming each
    damaged or missing file.

    An artifact saved before digests existed has none to check; its files are still checked for presence.
    """
    recorded = manifest.get(DIGESTS)
    if recorded is None:
        return
    require(manifest, {DIGESTS: dict[str, str]}, folder / MANIFEST, ArtifactError, DAMAGED)
    outside = [name for name in recorded if Path(name).is_absolute() or ".." in Path(name).parts or not name]
    if outside:
        raise ArtifactError(f"{folder / MANIFEST}: field {DIGESTS!r} names {outside[0][:100]!r}, which is not a file "
                            f"of the model folder; {DAMAGED}")
    problems = []
    for name, expected in sorted(recorded.items()):
        if only is not None and name not in only:
            continue
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256(path) != expected:
            problems.append(f"{name} has changed since it was saved (damaged or edited)")
    if problems:
        raise ArtifactError(f"{folder}: {'; '.join(problems)}; restore the artifact from its model.tar.gz or "
                            "train it again")


def check_intact(folder: Path, only: Collection[str] | None = None) -> dict[str, Any]:
    """The manifest of a model folder whose files are all there and as saved (the content of those in `only`,
    where given: the files a prediction will read); one error naming what is not."""
    manifest = read_json(folder / MANIFEST, MANIFEST_SHAPE) if (folder / MANIFEST).is_file() else None
    if manifest is not None:
        verify(folder, manifest, only)
    check_complete(folder)
    return manifest if manifest is not None else read_json(folder / MANIFEST, MANIFEST_SHAPE)


def graph_files(folder: Path) -> list[str]:
    """What a prediction on an ONNX graph reads besides the graph: the labels and the tokenizer's files (not the
    PyTorch weights or their config.json)."""
    return [name for name in model_files(folder) if name not in (CONFIG, WEIGHTS, *ONNX_FILES)]


def recorded_digest(manifest: dict[str, Any], folder: Path, path: Path) -> str | None:
    """The sha256 the manifest records for a file of the folder; None where it records none (an artifact saved
    before digests, or a file added without refreshing them)."""
    recorded = manifest.get(DIGESTS)
    if not isinstance(recorded, dict):
        return None
    value = recorded.get(path.relative_to(folder).as_posix())
    return value if isinstance(value, str) else None


def is_fine_tuned(folder: Path) -> bool:
    manifest = folder / MANIFEST
    return manifest.is_file() and bool(read_json(manifest, MANIFEST_SHAPE).get("fine_tuned"))


DAMAGED = "the artifact is damaged or edited: restore it from its model.tar.gz or train it again"

MANIFEST_SHAPE: dict[str, Any] = {
    "model_id": Maybe(str | None),
    "base_model": Maybe(str | None),
    "architecture": Maybe(str),
    "initialized_from": Maybe(str | None),
    "fine_tuned": Maybe(bool),
    "hyperparameters": Maybe(dict[str, str | int | float | bool]),
    "training_recipe": Maybe({"name": str, "reason": str, "head": str}),
    "classes": Maybe({"labels": list[str], "label_values": list[int | str]}),
    "epochs": Maybe(list[dict[str, float | None]]),
    "best_epoch": Maybe(int),
    "stopped_early": Maybe(bool),
    "data": Maybe(dict[str, Any]),
    "versions": Maybe(dict[str, str]),
    "created": Maybe(str),
    DIGESTS: Maybe(dict[str, str]),
    "thresholds": Maybe(dict[str, float]),
    "calibration": Maybe(dict[str, Any] | None),
    "workers": Maybe(int),
}
"""textfit.json: every field textfit writes, of the kind it writes; each may be absent (older artifacts)."""

LABELS_SHAPE = {"labels": list[str], "label_values": list[int | str]}
"""labels_info.json of an artifact: the class names and the label values, one each per class."""


def read_json(path: Path, shape: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON object of the artifact, of `shape` where one is given; one line naming the file and field if not."""
    return shapes.read(path, shape or {}, ArtifactError, DAMAGED)


def read_labels(path: Path) -> dict[str, list[Any]]:
    """labels_info.json as textfit writes it: the class names and the label values, one each per class."""
    data = read_json(path, LABELS_SHAPE)
    names, values = data["labels"], data["label_values"]
    if not names or len(names) != len(values):
        raise ArtifactError(f"{path}: fields 'labels' and 'label_values' hold {len(names)} and {len(values)} "
                            f"items, expected one each per class (at least one); {DAMAGED}")
    return {"labels": names, "label_values": values}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


MAX_MEMBERS = 10_000
"""Entries a model tarball may hold: a model folder has a few dozen files."""
MAX_EXTRACTED_BYTES = 64 << 30
"""What a model tarball may extract to, at most (an XLM-R XL classifier with its ONNX graphs is about 30 GB)."""
KEEP_FREE_BYTES = 1 << 30
"""Disk space an extraction leaves free: a tarball whose files would take more is refused before any is written."""


MAX_NAME_CHARS = 4096
"""The longest entry name a model tarball may hold (PATH_MAX): a model folder's paths are a few dozen characters."""
MAX_NAME_PARTS = 32
"""The most folders deep an entry may be: a model folder's files are at most two deep."""
MAX_PART_CHARS = 255
"""The longest name of one file or folder (NAME_MAX)."""


def _shown(name: str) -> str:
    """An entry name for a message: a name built to be huge is cut, so that the message stays one short line."""
    return repr(name) if len(name) <= 100 else f"{name[:60]!r}... ({len(name):,} characters)"


def _name_problem(name: str) -> str | None:
    """Why an entry name is refused before any path handling (a 100,000-character or 50,000-folder-deep name
    makes path resolution and folder creation recurse past Python's limit)."""
    if len(name) > MAX_NAME_CHARS:
        return f"its name is {len(name):,} characters long, more than {MAX_NAME_CHARS:,}"
    parts = name.split("/")
    if len(parts) > MAX_NAME_PARTS:
        return f"its name is {len(parts):,} folders deep, more than {MAX_NAME_PARTS}"
    if any(len(part) > MAX_PART_CHARS for part in parts):
        return f"a part of its name is longer than {MAX_PART_CHARS} characters"
    if "\0" in name:
        return "its name holds a NUL character"
    return None


def _safe_members(tar: tarfile.TarFile, dest: Path, tarball: Path) -> list[tarfile.TarInfo]:
    """The members, vetted before anything is written. Read one header at a time, so that a tarball built to
    exhaust the disk (a few kilobytes of gzip inflating to terabytes) or the memory (millions of entries) is
    refused at its first entry past the bounds, without inflating the rest. Entry names are bounded in length
    and depth before any path is built from them."""
    members: list[tarfile.TarInfo] = []
    root = dest.resolve()
    where = _existing_ancestor(dest)
    free = shutil.disk_usage(where).free - KEEP_FREE_BYTES
    room = min(MAX_EXTRACTED_BYTES, free)
    why = (f"the {_gb(free)} free in {where}, keeping {_gb(KEEP_FREE_BYTES)}; free some space or extract it "
           "yourself and pass the folder" if free < MAX_EXTRACTED_BYTES else "the most a model tarball may hold")
    total = 0
    entries = iter(tar)
    while True:
        try:
            member = next(entries, None)
        except RecursionError:  # tarfile reads a chain of extended headers recursively: thousands exhaust the stack
            raise ArtifactError(f"{tarball}: refusing to extract: an entry's headers nest past Python's recursion "
                                "limit; a model tarball holds plain files and folders") from None
        if member is None:
            return members
        if len(members) == MAX_MEMBERS:
            raise ArtifactError(f"{tarball}: refusing to extract more than {MAX_MEMBERS:,} entries; a model "
                                "tarball holds a model folder's few dozen files")
        if (bad_name := _name_problem(member.name)) is not None:
            raise ArtifactError(f"{tarball}: refusing to extract {_shown(member.name)}: {bad_name}; a model "
                                "tarball holds a model folder's files")
        total += member.size
        if total > room:
            raise ArtifactError(f"{tarball}: refusing to extract: its files come to more than {_gb(room)}, {why}")
        if member.issym() or member.islnk():
            raise ArtifactError(f"refusing to extract {_shown(member.name)}: links are not allowed in a model "
                                "tarball")
        if not (member.isfile() or member.isdir()):
            raise ArtifactError(f"refusing to extract {_shown(member.name)}: only files and folders are allowed")
        target = (dest / member.name).resolve()
        if os.path.isabs(member.name) or (target != root and root not in target.parents):
            raise ArtifactError(f"refusing to extract {_shown(member.name)}: it points outside the target folder")
        members.append(member)


def safe_extract(tarball: Path, dest: Path) -> None:
    """Extract a model tarball: regular files and folders only, every path inside `dest`.

    The members are vetted here on every Python; where tarfile has extraction filters (3.11.4 and later) the
    "data" filter applies as well. Whatever is wrong with the file is one line: tarfile's message for a file no
    decompression opens lists each one tried, a line each.
    """
    try:
        with contextlib.ExitStack() as stack:
            try:
                tar = stack.enter_context(tarfile.open(tarball))
            except tarfile.ReadError:
                with open(tarball, "rb") as f:
                    head = f.read(6)
                compressed = next((name for magic, name in ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"),
                                                            (b"\xfd7zXZ\x00", "xz")) if head.startswith(magic)), None)
                what = ("the file is not a tarball (gzip, bz2, xz or plain tar); pass a model folder or the "
                        "model.tar.gz written by textfit train" if compressed is None else
                        f"a {compressed} file that holds no tar archive, or only the start of one; check that it is "
                        "a complete .tar.gz written by textfit train, or pass a model folder")
                raise ArtifactError(f"{tarball}: cannot read the tarball: {what}") from None
            members = _safe_members(tar, dest, tarball)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python before 3.11.4: the vetting above is the filter
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError, zlib.error, RecursionError) as exc:  # Recursion: chained headers
        reason = " ".join(str(exc).split()) or "truncated"
        raise ArtifactError(f"{tarball}: cannot read the tarball ({type(exc).__name__}: {reason}); "
                            "check that it is a complete .tar.gz") from None


def _gb(n: int) -> str:
    return f"{max(n, 0) / (1 << 30):.1f} GiB"


def _model_root(folder: Path) -> Path:
    """SageMaker tars the folder's contents; a tarball of the folder itself has one subfolder: accept both."""
    if (folder / CONFIG).is_file():
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / CONFIG).is_file():
        return subdirs[0]
    return folder


@contextlib.contextmanager
def opened(path: str | Path) -> Iterator[Path]:
    """A folder holding the model: the folder itself, or a tarball extracted to a temporary folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path}: no such model folder or tarball")
    if path.is_dir():
        yield _model_root(path)
        return
    if not is_tarball(path):
        raise ArtifactError(f"{path}: expected a model folder or a .tar.gz of one")
    with tempfile.TemporaryDirectory(prefix="textfit-model-") as tmp:
        safe_extract(path, Path(tmp))
        yield _model_root(Path(tmp))


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(output: Path, overwrite: bool, *, inputs: tuple[Path, ...] = (), needed_bytes: int = 0,
                 tarball: Path | None = None) -> None:
    """Fail before training, not after it, when the output folder cannot be written: not a folder, holding
    anything but an earlier textfit artifact (that one only with --overwrite), inside the training data, in a
    folder this user cannot write, or on a disk without room for the model. With `tarball`, the same for the
    tarball written beside it."""
    from textfit.core import ownership

    if output.exists() and not output.is_dir():
        raise ArtifactError(f"{output}: exists and is not a folder; choose another --output")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite and ownership.owner(output) is not None:
            raise ArtifactError(f"{output}: the folder exists and is not empty; choose another --output or pass "
                                "--overwrite")
        ownership.check_writable(output, ownership.ARTIFACT, "--output", replace=overwrite)
    if tarball is not None:
        check_tarball_output(tarball, overwrite)
    target = output.resolve()
    for data in inputs:
        folder = data.resolve()
        if folder.is_dir() and (target == folder or folder in target.parents):
            raise ArtifactError(f"{output}: the output would be inside the data folder {folder}; choose an --output "
                                "outside it")
    where = _existing_ancestor(output)
    try:
        handle, probe = tempfile.mkstemp(prefix=".textfit-probe-", dir=where)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise ArtifactError(f"{output}: cannot write in {where} ({exc.strerror}); choose another --output") from None
    free = shutil.disk_usage(where).free
    if needed_bytes and free < needed_bytes:
        raise ArtifactError(f"{output}: the model needs about {needed_bytes / 1e6:.0f} MB but {where} has "
                            f"{free / 1e6:.0f} MB free; free some space or choose another --output")


def _is_textfit_tarball(path: Path) -> bool:
    """A model.tar.gz that textfit wrote: its entries include the manifest (or the ownership marker, first)."""
    from textfit.core import ownership

    try:
        with tarfile.open(path) as tar:
            for count, member in enumerate(tar):
                if member.name in (ownership.MARKER, MANIFEST):
                    return True
                if count > 200:
                    return False
    except (tarfile.TarError, OSError, EOFError, zlib.error, RecursionError):
        return False
    return False


def check_tarball_output(tarball: Path, overwrite: bool) -> None:
    """The tarball beside an artifact replaces only an earlier textfit tarball, and only with --overwrite."""
    if not tarball.exists() and not tarball.is_symlink():
        return
    if not tarball.is_file() or tarball.is_symlink() or not _is_textfit_tarball(tarball):
        raise ArtifactError(f"{tarball}: exists and is not a model tarball textfit wrote; move it or choose another "
                            "--output")
    if not overwrite:
        raise ArtifactError(f"{tarball}: exists; choose another --output or pass --overwrite to replace it")


def _move_into_place(tmp: Path, output: Path) -> None:
    """Put the staged folder where `output` is. An existing folder is replaced only when everything in it is
    textfit's (the callers check that before any work; this is the last guard): nothing else is ever removed."""
    from textfit.core import ownership

    if not output.exists() and not output.is_symlink():
        os.replace(tmp, output)
        return
    if output.is_symlink() or not output.is_dir():
        raise ArtifactError(f"{output}: exists and is not a folder; nothing was replaced, choose another place")
    foreign = ownership.foreign_entries(output)
    if foreign:
        raise ArtifactError(f"{output}: holds {', '.join(foreign[:3])}, which textfit did not write; nothing was "
                            "replaced, move them out or choose another place")
    if not any(output.iterdir()):
        with contextlib.suppress(OSError):  # a mount point (SageMaker's /opt/ml/model) cannot be replaced
            os.replace(tmp, output)  # rename(2) replaces an empty folder atomically
            return
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-{os.getpid()}-", dir=output.parent))
        try:
            os.replace(output, old / output.name)
        except OSError:
            old.rmdir()
        else:
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
            return
    for item in output.iterdir():  # fill the folder in place: textfit's own entries out, the new ones in
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    for item in tmp.iterdir():
        shutil.move(str(item), output / item.name)
    tmp.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ordinary_modes(path: Path) -> None:
    """0644 files and 0755 folders (less the umask): temporary files and mkdtemp are private, an output is not."""
    mask = _umask()
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for item in path.rglob("*"):
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
    else:
        path.chmod(0o666 & ~mask)


def _remove_stale(target: Path) -> None:
    """Temporary siblings left by runs that were killed while writing `target` (their process is gone)."""
    from textfit.core import ownership

    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.removeprefix(f".{target.name}.tmp-").split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            if ownership.owner(stale) is not None:  # staged folders are marked from the start
                shutil.rmtree(stale, ignore_errors=True)
        elif stale.is_file():
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged(target: Path, *, folder: bool = False, kind: str | None = None) -> Iterator[Path]:
    """The one way textfit writes an output: into a temporary sibling of `target` (same filesystem, so the final
    rename is atomic), moved into place only when the block succeeds; on failure nothing is left. Temporary
    siblings of killed runs into the same place are removed first.

    A folder is written as one of textfit's of `kind` (ownership.py): marked as such, and it replaces only an
    existing folder that holds nothing but textfit's files.
    """
    from textfit.core import ownership

    if folder and kind is None:
        raise ValueError("a staged folder needs its kind")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    prefix = f".{target.name}.tmp-{os.getpid()}-"
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        ownership.mark(tmp, str(kind))  # from the start: a killed run's leftover is known as textfit's
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(handle)
        tmp = Path(name)
    try:
        yield tmp
        if folder:
            ownership.mark(tmp, str(kind))
        _ordinary_modes(tmp)
        if folder:
            _move_into_place(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_atomically(output: Path, write: Callable[[Path], None], *, overwrite: bool = False,
                     tarball: Path | None = None) -> None:
    """Write the artifact into a temporary sibling folder, then rename it into place: never a half artifact.

    Raises:
        ArtifactError: the folder cannot be written (no space, no permission); nothing is left behind.
    """
    from safetensors import SafetensorError

    check_output(output, overwrite, tarball=tarball)
    try:
        with staged(output, folder=True, kind="artifact") as tmp:
            write(tmp)
            check_complete(tmp)
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ArtifactError(f"{output}: cannot write the model ({reason}); free some space or choose another "
                            "--output") from None


def tarball_path(folder: Path) -> Path:
    """Where `--tar` writes the tarball of an artifact folder: beside it, SageMaker's model.tar.gz form."""
    return folder.with_name(folder.name + ".tar.gz")


def tarball_failures(folder: Path, tarball: Path) -> list[str]:
    """Write the tarball of a saved model folder; what failed, in words (the model itself is already saved)."""
    try:
        write_tarball(folder, tarball)
    except OSError as exc:
        return [f"{tarball.name} could not be written ({exc.strerror or exc})"]
    return []


def write_tarball(folder: Path, tarball: Path) -> None:
    """SageMaker's model.tar.gz: the folder's files at the top level of the archive."""
    with staged(tarball) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)
