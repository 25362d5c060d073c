"""Which files are textfit's: the rule that keeps every write away from what a user owns.

Every folder textfit writes as a whole (a model artifact, a checkpoint folder, a tuning output, an evaluation
output, a store entry) holds a marker, `.textfit`, that names its kind and the entries textfit put there. A folder
textfit is asked to write into must be new, empty, or textfit's own of the same kind with nothing else in it;
anything else is refused before any work starts, with one line naming what is in the way. Replacing a folder
removes only the entries the marker names. Folders written before the marker existed are recognised by the
files only textfit writes there (a manifest with `fine_tuned`, a checkpoint's JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from textfit.errors import ArtifactError

MARKER = ".textfit"
ARTIFACT, CHECKPOINT, TUNING, EVALUATION, STORE = "artifact", "checkpoint", "tuning", "evaluation", "store"
INSPECTION = "inspection"

# The entries each kind of folder held before the marker existed: a folder of one of these kinds written by an
# earlier textfit is still textfit's to replace.
_ARTIFACT_NAMES = frozenset({
    "config.json", "model.safetensors", "labels_info.json", "textfit.json", "validation_report.json",
    "training_curves.png", "confusion_matrix.png", "README.md", "onnx", "tokenizer.json", "tokenizer_config.json",
    "vocab.txt", "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "spiece.model"})
TUNING_NAMES = frozenset({
    "study.db", "study.db-journal", "study.db-wal", "study.db-shm", "trials", "trials.csv", "best",
    "optimization_history.png", "val_accuracy_by_trial.png", "val_f1_micro_by_trial.png", "val_f1_macro_by_trial.png"})
"""Every entry a tuning job writes into its output folder (tuning.py)."""
_LEGACY: dict[str, tuple[str, frozenset[str] | None]] = {
    ARTIFACT: ("textfit.json", _ARTIFACT_NAMES),
    CHECKPOINT: ("checkpoint.json", frozenset({"checkpoint.json", "checkpoint.safetensors"})),
    STORE: ("textfit-store.json", None),  # a store entry is a copy of a checkpoint: every entry is textfit's
    TUNING: ("study.db", TUNING_NAMES),  # SQLite, not JSON: its presence is the witness
}


def _read_marker(folder: Path) -> tuple[str, frozenset[str]] | None:
    """The kind and entries a marker names; None where there is none, or it is not one textfit wrote."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not (isinstance(data, dict) and data.get("written_by") == "textfit" and isinstance(data.get("kind"), str)
            and isinstance(data.get("files"), list) and all(isinstance(n, str) for n in data["files"])):
        return None
    return data["kind"], frozenset(data["files"]) | {MARKER}


def _legacy(folder: Path) -> tuple[str, frozenset[str]] | None:
    """An unmarked folder that only textfit writes: an artifact (its manifest says fine_tuned) or a checkpoint."""
    for kind, (witness, names) in _LEGACY.items():
        if kind == TUNING:
            if (folder / witness).is_file() and names is not None:
                return kind, names
            continue
        try:
            data = json.loads((folder / witness).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and _witnessed(kind, data):
            return kind, frozenset(p.name for p in folder.iterdir()) if names is None else names
    return None


def _witnessed(kind: str, data: dict[str, object]) -> bool:
    if kind == ARTIFACT:
        return data.get("fine_tuned") is True
    if kind == CHECKPOINT:
        return "fingerprint" in data and "loop" in data
    return "model_id" in data and "sha256" in data


def owner(folder: Path) -> tuple[str, frozenset[str]] | None:
    """(kind, the entries textfit wrote) of a folder textfit wrote; None for anyone else's."""
    return _read_marker(folder) or _legacy(folder)


def foreign_entries(folder: Path) -> list[str]:
    """The entries of `folder` that textfit did not write, sorted."""
    found = owner(folder)
    mine = found[1] if found else frozenset()
    return sorted(p.name for p in folder.iterdir() if p.name not in mine)


def mark(folder: Path, kind: str, extra: Iterable[str] = ()) -> None:
    """Record `folder`'s entries (and `extra` names about to be added) as textfit's, as a folder of `kind`."""
    names = sorted({p.name for p in folder.iterdir() if p.name != MARKER} | set(extra))
    (folder / MARKER).write_text(json.dumps({"written_by": "textfit", "kind": kind, "files": names}, indent=1) + "\n",
                                 encoding="utf-8")


def add_entries(folder: Path, names: Iterable[str]) -> None:
    """Record entries textfit has just added to one of its folders (an ONNX export into an artifact)."""
    found = owner(folder)
    if found is not None:
        mark(folder, found[0], extra=names)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_writable(folder: Path, kind: str, flag: str, *, replace: bool = True) -> None:
    """Refuse, with one line, a folder textfit may not write into as a folder of `kind`.

    It must be new, empty, or textfit's own of that kind holding nothing else; with replace=False an own folder is
    refused too (the caller's flag, --overwrite, allows it).
    """
    if not folder.exists():
        if folder.is_symlink():
            raise ArtifactError(f"{flag} {folder}: a broken link; remove it or choose another folder")
        return
    if not folder.is_dir():
        raise ArtifactError(f"{flag} {folder}: exists and is not a folder; choose a new or empty folder")
    entries = [p.name for p in folder.iterdir()]
    if not entries:
        return
    found = owner(folder)
    if found is None or found[0] != kind:
        what = f"a textfit {found[0]} folder" if found else f"files textfit did not write ({_listing(sorted(entries))})"
        raise ArtifactError(f"{flag} {folder}: the folder holds {what}; textfit writes only into a new or empty "
                            "folder or one it wrote itself: choose another")
    foreign = sorted(set(entries) - found[1])
    if foreign:
        raise ArtifactError(f"{flag} {folder}: besides textfit's files the folder holds {_listing(foreign)}, which "
                            "textfit did not write; move them out or choose another folder")
    if not replace:
        raise ArtifactError(f"{flag} {folder}: the folder holds an earlier textfit {kind}; choose another or pass "
                            "--overwrite to replace it")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_apart(folder: Path, flag: str, others: Iterable[tuple[str, Path | None]]) -> None:
    """`folder` may not be, contain or lie inside any of `others` (the data channels, the output)."""
    mine = folder.resolve()
    for name, other in others:
        if other is None:
            continue
        theirs = other.resolve()  # a channel may be a CSV file: then the folder may not be it or hold it
        if _inside(mine, theirs) or _inside(theirs, mine):
            raise ArtifactError(f"{flag} {folder}: it overlaps {name} {other}; a checkpoint folder must lie apart "
                                "from the data and the output: choose another")


def check_predictions_file(path: Path, flag: str = "--output") -> None:
    """A predictions file replaces only an earlier one (JSON Lines of textfit's records), never another file."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_file() and not path.is_symlink():
        try:
            with path.open("rb") as f:
                first = json.loads(f.readline(1 << 20))
        except (OSError, ValueError, RecursionError):
            first = None
        if isinstance(first, dict) and "probabilities" in first:
            return
    raise ArtifactError(f"{flag} {path}: exists and is not a predictions file textfit wrote; choose a new file "
                        "(textfit replaces only its own output)")
