"""`textfit evaluate`: score a trained model on labelled data, as tables, metrics.json and pictures."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from textfit import artifact, metrics, plots
from textfit.channels import Channel, read_channel
from textfit.classifier import TextClassifier
from textfit.errors import DataError

log = logging.getLogger("textfit")


def true_classes(channel: Channel, clf: TextClassifier) -> list[int]:
    """Class indices of a channel's labels: label values as in the training data, or class names."""
    index = {str(value): i for i, value in enumerate(clf.label_values_)}
    index.update({name: i for i, name in enumerate(clf.classes_)})
    unknown = [(line, label) for line, label in zip(channel.lines, channel.labels) if str(label) not in index]
    if unknown:
        line, label = unknown[0]
        raise DataError(f"{channel.path}, line {line}: label {label!r} is not a class of this model "
                        f"({', '.join(map(str, clf.label_values_))}); {len(unknown)} row(s) have unknown labels")
    return [index[str(label)] for label in channel.labels]


def evaluate(clf: TextClassifier, data: str | Path, output: str | Path | None = None, *,
             long_texts: str = "truncate") -> metrics.Report:
    """Every quality number of `clf` on a labelled channel; with `output`, metrics.json and PNG plots there.

    Raises:
        DataError: the data breaks a rule of the channel format, or holds a label the model does not know.
    """
    channel = read_channel(data)
    y = np.asarray(true_classes(channel, clf))
    proba = clf.predict_proba(channel.texts, long_texts=long_texts)
    result = metrics.report(y, proba, clf.classes_)
    if output is not None:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        artifact.write_json(folder / "metrics.json", {**result.as_dict(), "data": str(channel.path),
                                                      "data_sha256": channel.fingerprint})
        for path in plots.report_figures(result, y, proba, folder):
            log.info("Wrote %s", path)
    return result
