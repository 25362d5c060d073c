"""Remote locations (s3://, gs://, any fsspec scheme) for channels, models and outputs, staged through local files.

SageMaker users keep their data and models in S3. textfit reads a remote channel or model into a temporary
folder, and writes an artifact locally (atomically) before uploading it: training code only sees local paths.
Credentials and endpoints come from the usual places (AWS_* variables, ~/.aws), as for the AWS CLI.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textfit.errors import DataError


def is_remote(location: str | Path | None) -> bool:
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:
        raise DataError(f"{uri}: remote locations need fsspec; install textfit[s3]") from None
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise DataError(f"{uri}: no filesystem for this scheme ({exc}); for s3:// install textfit[s3]") from None


@contextlib.contextmanager
def local_copy(location: str | Path) -> Iterator[Path]:
    """A local path holding what `location` holds: the path itself, or a temporary download of a remote one."""
    if not is_remote(location):
        yield Path(str(location).removeprefix("file://"))
        return
    uri = str(location)
    fs, path = _filesystem(uri)
    with tempfile.TemporaryDirectory(prefix="textfit-remote-") as tmp:
        target = Path(tmp) / (Path(path.rstrip("/")).name or "data")
        try:
            if fs.isdir(path):
                fs.get(path.rstrip("/") + "/", str(target) + "/", recursive=True)
            elif fs.isfile(path):
                fs.get(path, str(target))
            else:
                raise DataError(f"{uri}: no such object or prefix; check the bucket and the path (a folder "
                                "channel needs its trailing /)")
        except (OSError, PermissionError) as exc:
            raise DataError(f"{uri}: cannot download ({exc}); check the credentials and the endpoint") from None
        yield target


def upload(local: Path, uri: str) -> None:
    """Copy a local file or folder to a remote location (a folder's files go under the prefix)."""
    fs, path = _filesystem(uri)
    try:
        if local.is_dir():
            fs.put(str(local).rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
        else:
            fs.put(str(local), path)
    except (OSError, PermissionError) as exc:
        raise DataError(f"{uri}: cannot upload ({exc}); check the credentials and the endpoint") from None
