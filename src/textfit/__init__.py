"""textfit: fine-tune pretrained encoders for text classification, with SageMaker's contract, offline.

The public names load on first use, so that `textfit --help` and `textfit models list` start without torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "Hyperparameters": "textfit.hyperparameters",
    "TextClassifier": "textfit.classifier",
    "TextfitError": "textfit.errors",
    "create_app": "textfit.serving.server",
    "inspect": "textfit.jobs.inspection",
    "load": "textfit.jobs.train",
    "read_channel": "textfit.data.channels",
    "train": "textfit.jobs.train",
}
__all__ = ["Hyperparameters", "TextClassifier", "TextfitError", "__version__", "create_app", "inspect", "load",
           "read_channel", "train"]

if TYPE_CHECKING:
    from textfit.classifier import TextClassifier
    from textfit.data.channels import read_channel
    from textfit.errors import TextfitError
    from textfit.hyperparameters import Hyperparameters
    from textfit.jobs.inspection import inspect
    from textfit.jobs.train import load, train
    from textfit.serving.server import create_app


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textfit' has no attribute {name!r}")


# Where each module of the flat layout went when the package took the shape of its stages (data, model,
# reports, training, serving, jobs). The old names import the new modules, with a DeprecationWarning, for one
# release. (textfit.training was the training loop's module; it is now the stage's package: its loop is
# textfit.training.loop.)
MOVED = {
    "shapes": "core.shapes", "ownership": "core.ownership", "environment": "core.environment",
    "channels": "data.channels", "batching": "data.batching",
    "architectures": "model.architectures", "checkpoint": "model.pretrained", "zoo": "model.zoo",
    "store": "model.store", "artifact": "model.artifact", "export": "model.export",
    "metrics": "reports.metrics", "plots": "reports.plots", "card": "reports.card",
    "recipes": "training.recipes", "kernels": "training.kernels", "optimizers": "training.optimizers",
    "checkpoints": "training.checkpoints", "distributed": "training.distributed",
    "server": "serving.server", "connections": "serving.connections", "inference": "serving.inference",
    "job": "jobs.train", "tuning": "jobs.tuning", "evaluation": "jobs.evaluation", "prediction": "jobs.prediction",
    "sagemaker": "jobs.sagemaker", "remote": "jobs.remote",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import textfit.channels` (an old name) gives textfit.data.channels itself, not a copy, and warns once."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix(f"{__name__}.")
        return importlib.util.spec_from_loader(fullname, self) if old in MOVED and old != fullname else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        new = f"{__name__}.{MOVED[module.__name__.removeprefix(f'{__name__}.')]}"
        warnings.warn(f"{module.__name__} is now {new}; the old name goes in the next release", DeprecationWarning,
                      stacklevel=2)
        # the import system hands out what sys.modules holds under the name once this returns: the new module
        sys.modules[module.__name__] = importlib.import_module(new)


sys.meta_path.append(_MovedModules())
