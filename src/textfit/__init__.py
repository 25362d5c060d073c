"""textfit: fine-tune pretrained encoders for text classification, with SageMaker's contract, offline."""

from __future__ import annotations

__version__ = "0.1.0"

from textfit.channels import read_channel
from textfit.classifier import TextClassifier, load, train
from textfit.errors import TextfitError
from textfit.hyperparameters import Hyperparameters
from textfit.server import create_app

__all__ = ["Hyperparameters", "TextClassifier", "TextfitError", "__version__", "create_app", "load", "read_channel",
           "train"]
