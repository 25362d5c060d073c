"""The one error family of textfit: every mistake a user can fix raises one of these.

Library code raises; only the CLI (and later the server) catches, prints one line and exits non-zero.
"""

from __future__ import annotations


class TextfitError(Exception):
    """Base class: a problem the user can act on, with a message that says what, where and how to fix it."""


class DataError(TextfitError):
    """A data channel (data.csv, labels_info.json) is missing, malformed or unusable."""


class HyperparameterError(TextfitError):
    """A hyperparameter is unknown, of the wrong type or out of its valid range."""


class ModelNotFoundError(TextfitError):
    """A model_id or model path cannot be resolved offline."""


class ArtifactError(TextfitError):
    """A model artifact (folder or model.tar.gz) is incomplete, unsafe or incompatible."""


class RequestError(TextfitError):
    """A client's request to the server is unusable; `status` is the HTTP status that says why (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ReportError(TextfitError):
    """The model is saved, but something made after it (a report, a picture, the tarball, the upload) failed.

    The CLI exits with code 3 for it: the artifact is usable, the extra named in the message is not there.
    """


class TrainingInterrupted(TextfitError):
    """Training stopped on a signal after writing a checkpoint; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
