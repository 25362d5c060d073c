"""textfit: fine-tune pretrained encoders for text classification, with SageMaker's contract, offline.

The public names load on first use, so that `textfit --help` and `textfit models list` start without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Hyperparameters": "textfit.hyperparameters",
    "TextClassifier": "textfit.classifier",
    "TextfitError": "textfit.errors",
    "create_app": "textfit.server",
    "load": "textfit.job",
    "read_channel": "textfit.channels",
    "train": "textfit.job",
}
__all__ = ["Hyperparameters", "TextClassifier", "TextfitError", "__version__", "create_app", "load", "read_channel",
           "train"]

if TYPE_CHECKING:
    from textfit.channels import read_channel
    from textfit.classifier import TextClassifier
    from textfit.errors import TextfitError
    from textfit.hyperparameters import Hyperparameters
    from textfit.job import load, train
    from textfit.server import create_app


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textfit' has no attribute {name!r}")
