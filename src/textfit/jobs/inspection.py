"""`textfit inspect`: what is wrong with a data set before training on it.

The hashing checks (data/quality.py: duplicates, leaks between splits, conflicting labels, empty texts, markup and
encoding debris, class balance) and what needs the model's tokenizer and encoder:

- token lengths against max_seq_length (the share of each split a model would read only in part);
- likely label errors, by confident learning (Northcutt et al., 2021) as cleanlab implements it: out-of-sample
  probabilities for every training row from k-fold cross-validation, then `cleanlab.filter.find_label_issues`
  (for multi-label data, `cleanlab.multilabel_classification`), ranked by cleanlab's label quality score. The
  cheap default reads the frozen encoder's features (the mean of its token vectors) with a logistic regression
  per fold; `method="finetune"` fine-tunes the model in each fold instead (k trainings);
- optionally, near-duplicates by the encoder's embeddings above a stated cosine.

Nothing read is changed; `write_clean` writes a new channel without the duplicates and the rows chosen.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textfit.core import ownership
from textfit.data import batching, quality
from textfit.data.channels import Channel, read_channel
from textfit.errors import DataError, HyperparameterError, TextfitError
from textfit.model import artifact

log = logging.getLogger("textfit")

METHODS = ("probe", "finetune", "none")
FOLDS = 5
PROBE_REPEATS = 3
"""Shuffles of the k folds whose out-of-sample probabilities the probe averages: on Debian's descriptions with 5%
and 10% flipped labels, 3 raised the F1 of the flagged rows from 0.631, 0.725, 0.700 to 0.658, 0.754, 0.708."""
REPORT, ISSUES, PICTURE = "inspect.json", "label_issues.csv", "label_quality.png"
ACTIONS = ("drop", "keep", "relabel")
NEAR_PAIRS_SHOWN = 10_000
"""Near-duplicate pairs kept in inspect.json at most (the count is exact)."""


@dataclass
class LabelIssue:
    """A training row whose label is likely wrong."""

    line: int
    text: str
    given: str
    suggested: str
    score: float
    """cleanlab's label quality score of the given label, in [0, 1]: lower is more likely wrong."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NearPair:
    a: quality.Row
    b: quality.Row
    cosine: float

    def as_dict(self) -> dict[str, Any]:
        return {"a": asdict(self.a), "b": asdict(self.b), "cosine": round(self.cosine, 4)}


@dataclass
class Inspection:
    """Every finding of an inspection; `records(kind)` gives each kind as rows (pandas.DataFrame(records))."""

    findings: quality.Findings
    label_issues: list[LabelIssue] = field(default_factory=list)
    method: dict[str, Any] = field(default_factory=dict)
    lengths: dict[str, dict[str, Any]] = field(default_factory=dict)
    near_duplicates: list[NearPair] = field(default_factory=list)
    near_count: int = 0
    scores: np.ndarray | None = None
    """cleanlab's label quality score of every training row (None without label errors)."""
    score_lines: list[int] = field(default_factory=list)
    """The line of each score's row."""
    multi_label: bool = False
    seconds: float = 0.0

    KINDS = ("duplicates", "leaks", "conflicts", "label_issues", "texts", "near_duplicates", "classes", "lengths")

    def records(self, kind: str) -> list[dict[str, Any]]:
        """One flat dict a row for `kind` (one of KINDS): what a notebook turns into a DataFrame."""
        f = self.findings
        if kind in ("duplicates", "leaks", "conflicts"):
            return [{"group": i, "text": g.text, "exact": g.exact, "split": r.split, "line": r.line, "label": label}
                    for i, g in enumerate(getattr(f, kind)) for r, label in zip(g.rows, g.labels)]
        if kind == "label_issues":
            return [issue.as_dict() for issue in self.label_issues]
        if kind == "texts":
            return [flag.as_dict() for flag in f.flags]
        if kind == "near_duplicates":
            return [{"split_a": p.a.split, "line_a": p.a.line, "split_b": p.b.split, "line_b": p.b.line,
                     "cosine": p.cosine} for p in self.near_duplicates]
        if kind == "classes":
            return [{"split": s, "label": label, "rows": n} for s, counts in f.class_counts.items()
                    for label, n in counts.items()]
        if kind == "lengths":
            return [{"split": s, **v} for s, v in self.lengths.items()]
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(self.KINDS)}")

    def to_frame(self, kind: str) -> Any:
        """`records(kind)` as a pandas DataFrame (pandas must be installed)."""
        import pandas as pd

        return pd.DataFrame(self.records(kind))

    def summary(self) -> list[str]:
        """One line per kind of finding, with its count."""
        lines = quality.summary_lines(self.findings)
        for split, counts in self.findings.class_counts.items():
            if counts:
                most, least = max(counts.values()), min(counts.values())
                lines.append(f"Classes ({split}): {len(counts)}, {most} to {least} rows a class"
                             + (f" ({most / max(least, 1):.1f}x imbalance)" if least and most >= 3 * least else ""))
        for split, v in self.lengths.items():
            lines.append(f"Lengths ({split}): {v['truncated']} of {v['rows']} texts ({100 * v['share_truncated']:.1f}%) "
                         f"are longer than max_seq_length={v['max_seq_length']} tokens; median {v['median_tokens']}, "
                         f"95th percentile {v['p95_tokens']}")
        if self.method.get("name") not in (None, "none"):
            lines.append(f"Label issues: {len(self.label_issues)} of {self.findings.rows['train']} training rows are "
                         f"likely mislabelled ({self.method['description']})")
        for entry in self.method.get("per_label", []):
            if entry["rows"] and entry["given"] != entry["suggested"]:
                lines.append(f"Label issues ({entry['label']}): {entry['rows']} rows likely "
                             + ("carry it wrongly" if entry["given"] else "miss it"))
        if self.method.get("near_cosine") is not None:
            lines.append(f"Near-duplicates: {self.near_count} pairs of texts at cosine >= {self.method['near_cosine']} "
                         "that are not copies")
        return lines

    def as_dict(self) -> dict[str, Any]:
        f = self.findings
        return {"rows": f.rows, "multi_label": self.multi_label, "method": self.method, "seconds": round(self.seconds, 2),
                "summary": self.summary(), "duplicates": quality.groups_as_dicts(f.duplicates),
                "leaks": quality.groups_as_dicts(f.leaks), "conflicts": quality.groups_as_dicts(f.conflicts),
                "classes": f.class_counts, "texts": [flag.as_dict() for flag in f.flags], "lengths": self.lengths,
                "label_issues": [i.as_dict() for i in self.label_issues],
                "near_duplicates": {"count": self.near_count, "pairs": [p.as_dict() for p in self.near_duplicates]}}


# ------------------------------------------------------------------------------------------ the encoder's part


def _encoder(model_id: str | None, allow_network: bool) -> tuple[Any, Any, str, Any]:
    """(encoder, tokenizer, model id, config) of a zoo id, a local checkpoint or an artifact folder."""
    from textfit.model import pretrained
    from textfit.model.zoo import resolve_model

    resolved = resolve_model(model_id, allow_network=allow_network)
    path = resolved.path
    return (pretrained.load_encoder(path), pretrained.load_tokenizer(path, allow_network), resolved.model_id,
            pretrained.load_config(path, allow_network))


def _lengths(data: batching.Encoded, texts: Sequence[str], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """How long the texts are in tokens, and how many a model reading max_length tokens reads only in part."""
    full = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]]
    arr = np.asarray(full or [0])
    return {"rows": len(texts), "max_seq_length": max_length, "truncated": int((arr > max_length).sum()),
            "share_truncated": float((arr > max_length).mean()) if full else 0.0,
            "median_tokens": int(np.median(arr)), "p95_tokens": int(np.percentile(arr, 95))}


def embed(encoder: Any, data: batching.Encoded, batch_size: int = 64) -> np.ndarray:
    """The mean of each row's token vectors, L2-normalised (the sentence-embedding reading of the encoder)."""
    import torch

    from textfit.model.architectures import mean_of_tokens

    encoder.eval()
    out = np.zeros((len(data), encoder.config.hidden_size), dtype=np.float32)
    names = {"input_ids", "attention_mask", "token_type_ids"}
    with torch.inference_mode():
        for group in batching.plan_batches([len(ids) for ids in data.input_ids], batch_size, shuffle=False):
            arrays = batching.pad(data, group)
            inputs = {k: torch.from_numpy(v) for k, v in arrays.items() if k in names}
            hidden = encoder(**inputs).last_hidden_state
            out[group] = mean_of_tokens(hidden, inputs["attention_mask"]).numpy()
    return out


def _folds(y: np.ndarray, multi_label: bool, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified folds (iterative stratification for multi-label rows)."""
    if multi_label:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        return list(MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y))
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    if counts[counts > 0].min() < k:  # a class rarer than k: plain k-fold (StratifiedKFold would warn and skew)
        from sklearn.model_selection import KFold

        return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(y))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y))


def _probe_probabilities(feats: np.ndarray, y: np.ndarray, n_classes: int, multi_label: bool,
                         folds: list[tuple[np.ndarray, np.ndarray]], seed: int) -> np.ndarray:
    """Out-of-fold probabilities of a logistic regression on the features: each row's from a model that did not
    see it. A class absent from a fold's training rows gets probability 0 there."""
    from sklearn.linear_model import LogisticRegression

    proba = np.zeros((len(y), n_classes), dtype=np.float64)
    for train, held in folds:
        if multi_label:
            for j in range(n_classes):
                target = y[train, j]
                if target.min() == target.max():  # a label always (or never) on in this fold
                    proba[held, j] = float(target[0])
                    continue
                lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(feats[train], target)
                proba[held, j] = lr.predict_proba(feats[held])[:, 1]
            continue
        lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(feats[train], y[train])
        proba[np.ix_(held, lr.classes_)] = lr.predict_proba(feats[held])
    return proba


def _finetune_probabilities(texts: list[str], labels: list[Any], classes: list[str], model_id: str | None,
                            hyperparameters: dict[str, object], multi_label: bool,
                            folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Out-of-fold probabilities of the model fine-tuned on the other folds (k trainings)."""
    from textfit.classifier import TextClassifier

    proba = np.zeros((len(texts), len(classes)), dtype=np.float64)
    for i, (train, held) in enumerate(folds, 1):
        log.info("Fold %d/%d: fine-tuning on %d rows", i, len(folds), len(train))
        clf = TextClassifier(model_id, {**hyperparameters, "multi_label": str(multi_label)})
        clf.fit([texts[j] for j in train], [labels[j] for j in train])
        columns = np.asarray([classes.index(c) for c in clf.classes_])
        proba[np.ix_(held, columns)] = clf.predict_proba([texts[j] for j in held])
    return proba


def _label_issues(texts: list[str], lines: list[int], y: np.ndarray, proba: np.ndarray, classes: list[str],
                  multi_label: bool) -> tuple[list[LabelIssue], np.ndarray]:
    """cleanlab's label issues, most likely first, with the label the probabilities suggest."""
    try:
        if multi_label:
            from cleanlab.multilabel_classification.filter import find_label_issues
            from cleanlab.multilabel_classification.rank import get_label_quality_scores
        else:
            from cleanlab.filter import find_label_issues
            from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise TextfitError("finding label errors needs cleanlab: pip install 'textfit[inspect]' (or pass "
                           "--label-errors none)") from None
    if multi_label:
        given: Any = [list(np.flatnonzero(row)) for row in y]
        ranked = find_label_issues(labels=given, pred_probs=proba, return_indices_ranked_by="self_confidence",
                                   n_jobs=1)
        scores = get_label_quality_scores(given, proba)
    else:
        given = y
        ranked = find_label_issues(labels=y, pred_probs=proba, return_indices_ranked_by="self_confidence", n_jobs=1)
        scores = get_label_quality_scores(y, proba)
    issues = []
    for i in ranked:
        if multi_label:
            shown = "|".join(classes[j] for j in given[i])
            suggested = "|".join(classes[j] for j in np.flatnonzero(proba[i] >= 0.5))
        else:
            shown, suggested = classes[int(y[i])], classes[int(proba[i].argmax())]
        issues.append(LabelIssue(lines[i], texts[i], shown, suggested, round(float(scores[i]), 6)))
    issues.sort(key=lambda issue: issue.score)  # cleanlab ranks by the same score: ties keep their order
    return issues, np.asarray(scores, dtype=np.float64)


def _per_label(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """cleanlab's per-label summary of a multi-label set: for each label, the rows estimated to miss it
    (given without, likely with) and to carry it wrongly (given with, likely without)."""
    from cleanlab.multilabel_classification.dataset import common_multilabel_issues

    table = common_multilabel_issues(labels=[list(np.flatnonzero(row)) for row in y], pred_probs=proba,
                                     class_names=classes)
    return [{"label": str(r["Class Name"]), "given": bool(r["In Given Label"]),
             "suggested": bool(r["In Suggested Label"]), "rows": int(r["Num Examples"]),
             "share": float(r["Issue Probability"])} for r in table.to_dict("records")]


def _near_duplicates(feats: np.ndarray, rows: list[quality.Row], keys: list[bytes], cosine: float,
                     cells: int = 20_000_000) -> tuple[list[NearPair], int]:
    """Pairs of rows whose embeddings are at `cosine` or above and whose normalised texts differ, compared in
    blocks of at most `cells` similarities (80 MB of float32, whatever the number of rows)."""
    pairs: list[NearPair] = []
    count = 0
    chunk = max(1, cells // max(1, len(feats)))
    for start in range(0, len(feats), chunk):
        block = feats[start:start + chunk] @ feats.T
        for a, b in zip(*np.nonzero(block >= cosine)):
            i, j = start + int(a), int(b)
            if j <= i or keys[i] == keys[j]:
                continue
            count += 1
            if len(pairs) < NEAR_PAIRS_SHOWN:
                pairs.append(NearPair(rows[i], rows[j], float(block[a, b])))
    pairs.sort(key=lambda p: -p.cosine)
    return pairs, count


# ------------------------------------------------------------------------------------------ the job


def _channels(train: str | Path, validation: str | Path | None, test: str | Path | None, multi_label: bool,
              delimiter: str) -> dict[str, Channel]:
    read = {"train": train, "validation": validation, "test": test}
    return {split: read_channel(path, multi_label=multi_label, delimiter=delimiter)
            for split, path in read.items() if path is not None}


def inspect(train: str | Path, validation: str | Path | None = None, test: str | Path | None = None, *,
            model_id: str | None = None, output: str | Path | None = None, multi_label: bool = False,
            label_delimiter: str = "|", label_errors: str = "probe", folds: int = FOLDS,
            max_seq_length: int | None = None, near: float | None = None, seed: int = 0,
            hyperparameters: Mapping[str, object] | None = None, allow_network: bool = False) -> Inspection:
    """Inspect the channels (as `textfit inspect` does) and, with `output`, write inspect.json, label_issues.csv and
    label_quality.png there.

    Args:
        label_errors: "probe" (the frozen encoder's features, a logistic regression per fold: the cheap default),
            "finetune" (the model fine-tuned per fold with `hyperparameters`), or "none".
        folds: k of the k-fold cross-validation giving every training row out-of-sample probabilities.
        max_seq_length: the length texts are measured against (default: the model's).
        near: also report pairs of texts whose embeddings' cosine is at least this (0.9 to 1).

    >>> found = textfit.inspect("data/train", test="data/test/data.csv")  # doctest: +SKIP
    >>> pandas.DataFrame(found.records("label_issues")).head()  # doctest: +SKIP
    """
    if label_errors not in METHODS:
        raise HyperparameterError(f"label_errors={label_errors!r} is not one of {', '.join(METHODS)}")
    if not 2 <= folds <= 20:
        raise HyperparameterError(f"folds={folds} is out of range; use 2 to 20")
    if near is not None and not 0.5 <= near <= 1.0:
        raise HyperparameterError(f"near={near} is out of range; use a cosine from 0.5 to 1")
    if output is not None:
        ownership.check_writable(Path(output), ownership.INSPECTION, "--output")
    started = time.perf_counter()
    channels = _channels(train, validation, test, multi_label, label_delimiter)
    findings = quality.inspect_splits({s: (c.texts, c.labels, c.lines) for s, c in channels.items()})
    found = Inspection(findings, multi_label=multi_label)
    if label_errors != "none" or near is not None or max_seq_length is not None or model_id is not None:
        _with_model(found, channels, model_id, label_errors, folds, max_seq_length, near, seed,
                    dict(hyperparameters or {}), allow_network)
    found.seconds = time.perf_counter() - started
    if output is not None:
        write_report(found, Path(output))
    return found


def _with_model(found: Inspection, channels: dict[str, Channel], model_id: str | None, label_errors: str, folds: int,
                max_seq_length: int | None, near: float | None, seed: int, hyperparameters: dict[str, object],
                allow_network: bool) -> None:
    from textfit.data.channels import class_set, encode_labels
    from textfit.model import architectures
    from textfit.model.zoo import defaults_for

    encoder, tokenizer, resolved_id, config = _encoder(model_id, allow_network)
    length = max_seq_length or int(defaults_for(resolved_id).get("max_seq_length", 128))
    limit = architectures.position_limit(config)
    length = min(length, limit) if limit else length
    types = "token_type_ids" in architectures.input_names(encoder, tokenizer)
    encoded = {s: batching.encode(tokenizer, c.texts, length, token_types=types) for s, c in channels.items()}
    found.lengths = {s: _lengths(encoded[s], c.texts, tokenizer, length) for s, c in channels.items()}
    found.method = {"name": label_errors, "model_id": resolved_id, "max_seq_length": length, "near_cosine": near}
    train = channels["train"]
    need_train_features = label_errors == "probe" or near is not None
    feats = {s: embed(encoder, encoded[s]) for s in channels if s == "train" and need_train_features
             or near is not None}
    if label_errors != "none":
        classes = class_set(train)
        ids = encode_labels(train, classes, origin=f"the training data ({train.path})")
        n = len(classes.names)
        if n < 2:
            raise DataError(f"{train.path}: one class only ({classes.names[0]}); label errors need two or more")
        y = np.zeros((len(ids), n), dtype=np.int64) if found.multi_label else np.asarray(ids)
        if found.multi_label:
            for i, row in enumerate(ids):
                y[i, row] = 1
        k = min(folds, len(train.texts))
        fold_list = _folds(y, found.multi_label, k, seed)
        if label_errors == "probe":
            # the mean over PROBE_REPEATS shuffles of the folds: one shuffle's probabilities carry the luck of which
            # rows shared a fold, and the regression is cheap next to the encoder (docs/benchmarks.md)
            runs = [_probe_probabilities(feats["train"], y, n, found.multi_label,
                                         _folds(y, found.multi_label, k, seed + r) if r else fold_list, seed)
                    for r in range(PROBE_REPEATS)]
            proba = np.mean(runs, axis=0)
            description = (f"cleanlab's confident learning on {k}-fold out-of-sample probabilities (the mean of "
                           f"{PROBE_REPEATS} shuffles) of a logistic regression on the frozen encoder's mean token "
                           f"vectors ({resolved_id})")
        else:
            labels = [list(label) if isinstance(label, tuple) else label for label in train.labels]
            proba = _finetune_probabilities(train.texts, labels, classes.names, model_id, hyperparameters,
                                            found.multi_label, fold_list)
            description = f"cleanlab's confident learning on {k}-fold out-of-sample probabilities of {resolved_id} " \
                          "fine-tuned on the other folds"
        if found.multi_label:  # per label: how many rows likely lack it, and how many likely carry it wrongly
            found.method["per_label"] = _per_label(y, proba, classes.names)
        found.label_issues, found.scores = _label_issues(train.texts, train.lines, y, proba, classes.names, found.multi_label)
        found.method.update(folds=k, description=description, library="cleanlab")
        found.score_lines = list(train.lines)
        found.method["out_of_fold_accuracy"] = None if found.multi_label else float((proba.argmax(1) == y).mean())
    if near is not None:
        rows = [quality.Row(s, line) for s, c in channels.items() for line in c.lines]
        keys = [quality.key(quality.normalise(t)) for c in channels.values() for t in c.texts]
        found.near_duplicates, found.near_count = _near_duplicates(
            np.concatenate([feats[s] for s in channels]), rows, keys, near)


def write_report(found: Inspection, folder: Path) -> None:
    """inspect.json, label_issues.csv (what a person reviews and edits: `action` drop, keep or relabel) and the
    label-quality picture, into `folder`, each file written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    with artifact.staged(folder / REPORT) as tmp:
        artifact.write_json(tmp, found.as_dict())
    with artifact.staged(folder / ISSUES) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "text", "given", "suggested", "score", "action"])
        for issue in found.label_issues:
            writer.writerow([issue.line, issue.text, issue.given, issue.suggested, f"{issue.score:.6f}", "drop"])
    written = [REPORT, ISSUES]
    if found.scores is not None:
        from textfit.reports import plots

        flagged = set(i.line for i in found.label_issues)
        lines = found.score_lines
        try:
            plots.label_quality(found.scores, np.asarray([line in flagged for line in lines]),
                                [(i.given, i.suggested) for i in found.label_issues], folder / PICTURE)
            written.append(PICTURE)
        except Exception as exc:  # a picture is not the findings: they are written already
            log.warning("%s could not be drawn (%s: %s)", PICTURE, type(exc).__name__, exc)
    ownership.mark(folder, ownership.INSPECTION)


def read_decisions(path: Path) -> dict[int, tuple[str, str]]:
    """An edited label_issues.csv: line -> (action, suggested label). Rows deleted from the file are kept."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); pass the label_issues.csv that inspect wrote") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"line", "action", "suggested"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"{path}, line 1: no column {', '.join(sorted(missing))}; the header inspect writes is "
                        "line,text,given,suggested,score,action")
    out: dict[int, tuple[str, str]] = {}
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        try:
            line = int(str(row["line"]).strip())
        except ValueError:
            raise DataError(f"{where}: line {row['line']!r} is not a number; keep the line column as written") from None
        action = str(row["action"] or "").strip().lower()
        if action not in ACTIONS:
            raise DataError(f"{where}: action {row['action']!r} is not one of {', '.join(ACTIONS)}")
        out[line] = (action, str(row["suggested"] or "").strip())
    return out


def write_clean(train: str | Path, output: str | Path, *, decisions: str | Path | None = None,
                found: Inspection | None = None, below: float | None = None, multi_label: bool = False,
                label_delimiter: str = "|") -> dict[str, int]:
    """A new training channel at `output`/data.csv: without exact and normalised duplicates (the first row of each
    kept), without the rows whose action is drop (an edited label_issues.csv, `decisions`) or whose label quality
    is below `below` (from `found`), with the suggested label where the action is relabel. Returns the counts."""
    channel = read_channel(train, multi_label=multi_label, delimiter=label_delimiter)
    out = Path(output)
    ownership.check_writable(out, ownership.INSPECTION, "--write-clean")
    if out.resolve() == channel.path.parent.resolve():
        raise DataError(f"--write-clean {out}: the folder of the training data; choose a new folder")
    plan: dict[int, tuple[str, str]] = read_decisions(Path(decisions)) if decisions is not None else {}
    if below is not None:
        if found is None:
            raise HyperparameterError("a score threshold needs the inspection's label issues")
        plan.update({i.line: ("drop", i.suggested) for i in found.label_issues if i.score < below})
    seen: set[bytes] = set()
    counts = {"kept": 0, "duplicates": 0, "dropped": 0, "relabelled": 0}
    out.mkdir(parents=True, exist_ok=True)
    with artifact.staged(out / "data.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for text, label, line in zip(channel.texts, channel.labels, channel.lines):
            near = quality.key(quality.normalise(text))
            if near in seen:
                counts["duplicates"] += 1
                continue
            seen.add(near)
            action, suggested = plan.get(line, ("keep", ""))
            if action == "drop":
                counts["dropped"] += 1
                continue
            value = label_delimiter.join(label) if isinstance(label, tuple) else label
            if action == "relabel" and suggested:
                value, counts["relabelled"] = suggested, counts["relabelled"] + 1
            writer.writerow([value, text])
            counts["kept"] += 1
    labels_info = channel.path.parent / "labels_info.json"
    if channel.names and labels_info.is_file():  # the class names travel with the channel
        (out / "labels_info.json").write_bytes(labels_info.read_bytes())
    ownership.mark(out, ownership.INSPECTION)
    return counts
