"""Texts longer than max_seq_length: long_texts=auto chooses from the training texts, the artifact keeps the
choice, every way of predicting honours it, and a text is read as at most MAX_WINDOWS windows."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import FAST, NEGATIVE, NEUTRAL, POSITIVE, write_csv
from textfit import TextClassifier
from textfit.classifier import LONG_TEXT_SHARE, WINDOW_BELOW_ROWS_PER_CLASS, _long_texts
from textfit.data import batching
from textfit.data.channels import read_channel
from textfit.hyperparameters import Hyperparameters
from textfit.jobs.train import save_artifact
from textfit.serving.server import ServeSettings, create_app

# 16 tokens a window: the rows below (24 words) are all longer, the short ones (6 words) none.
SHORT_WINDOWS = {**FAST, "epochs": "6", "learning_rate": "0.002", "max_seq_length": "16"}


def long_rows(n: int, words: int = 24, seed: int = 0) -> list[tuple[int, str]]:
    """Separable rows of `words` words, the sentiment words spread over the whole text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        text = [rng.choice(NEUTRAL) for _ in range(words)]
        for at in rng.sample(range(words), 6):
            text[at] = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append((label, " ".join(text)))
    return rows


@pytest.fixture(scope="module")
def windowed(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact trained on rows that are all longer than its max_seq_length (long_texts left to auto)."""
    root = tmp_path_factory.mktemp("windowed")
    write_csv(root / "train" / "data.csv", long_rows(96))
    write_csv(root / "validation" / "data.csv", VALIDATION)
    clf = TextClassifier(str(tiny_bert), SHORT_WINDOWS).fit(read_channel(root / "train"), validation=read_channel(root / "validation"))
    return save_artifact(clf, root / "model")


def tail_rows(n: int, seed: int) -> list[tuple[int, str]]:
    """Rows whose first 20 words are neutral: a model that reads 16 tokens of them cannot tell their class."""
    rng = random.Random(seed)
    return [(i % 2, " ".join([rng.choice(NEUTRAL) for _ in range(20)] + rng.sample(POSITIVE if i % 2 else NEGATIVE, 4)))
            for i in range(n)]


VALIDATION = tail_rows(32, seed=3)


# A text whose start says "good" and whose long end says "bad": windows and truncation disagree on it.
TURNING = " ".join(["good great film"] * 5 + ["bad awful terrible plot"] * 20)


def test_auto_reads_texts_as_windows_when_the_training_texts_are_long(windowed: Path) -> None:
    clf = TextClassifier.load(windowed)
    assert clf.long_texts_ == "window"
    assert json.loads((windowed / "textfit.json").read_text())["hyperparameters"]["long_texts"] == "window"
    default = clf.predict_proba([TURNING])
    np.testing.assert_allclose(default, clf.predict_proba([TURNING], long_texts="window"), atol=1e-6)
    assert not np.allclose(default, clf.predict_proba([TURNING], long_texts="truncate"), atol=1e-3)
    assert f"read as overlapping windows of 16 tokens (up to {batching.MAX_WINDOWS})" in \
        (windowed / "README.md").read_text()


def test_auto_is_logged_and_keeps_truncation_for_short_texts(tiny_bert: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    write_csv(tmp_path / "long" / "data.csv", long_rows(24))
    clf = TextClassifier(str(tiny_bert), {**SHORT_WINDOWS, "epochs": "1"}).fit(read_channel(tmp_path / "long"))
    assert clf.long_texts_ == "window" and clf.hyperparameters_.long_texts == "window"
    assert "long_texts: window (100% of the training texts are longer than max_seq_length=16 tokens" in caplog.text
    caplog.clear()
    write_csv(tmp_path / "short" / "data.csv", long_rows(24, words=6))
    clf = TextClassifier(str(tiny_bert), {**SHORT_WINDOWS, "epochs": "1"}).fit(read_channel(tmp_path / "short"))
    assert clf.long_texts_ == "truncate"
    assert "long_texts: truncate (0% of the training texts" in caplog.text
    caplog.clear()
    forced = TextClassifier(str(tiny_bert), {**SHORT_WINDOWS, "epochs": "1", "long_texts": "Window"})
    assert forced.fit(read_channel(tmp_path / "short")).long_texts_ == "window"  # given, not chosen: no auto line
    assert "long_texts: " not in caplog.text


@pytest.mark.parametrize(("long", "per_class", "expected"),
                         [(0, 50, "truncate"), (24, 50, "truncate"), (25, 50, "window"), (100, 99, "window"),
                          (100, 100, "truncate"), (25, 1000, "truncate")])
def test_the_share_of_long_texts_and_the_size_decide(long: int, per_class: float, expected: str) -> None:
    """Windows for small sets of long texts; a large set keeps truncation (measured lower with windows)."""
    assert LONG_TEXT_SHARE == 0.25 and WINDOW_BELOW_ROWS_PER_CLASS == 100
    data = batching.Encoded([[1, 2]] * 100, [0] * 100, 0, False, truncated=long)
    assert _long_texts(Hyperparameters(), data, per_class).long_texts == expected
    assert _long_texts(Hyperparameters(long_texts="truncate"), data, per_class).long_texts == "truncate"
    assert _long_texts(Hyperparameters(long_texts="window"), data, per_class).long_texts == "window"


def test_an_artifact_from_before_long_texts_truncates(windowed: Path, tmp_path: Path) -> None:
    old = shutil.copytree(windowed, tmp_path / "old")
    manifest = json.loads((old / "textfit.json").read_text())
    del manifest["hyperparameters"]["long_texts"]
    (old / "textfit.json").write_text(json.dumps(manifest))
    clf = TextClassifier.load(old)
    assert clf.long_texts_ == "truncate"
    np.testing.assert_allclose(clf.predict_proba([TURNING]), clf.predict_proba([TURNING], long_texts="truncate"),
                               atol=1e-6)


def test_the_validation_report_is_of_the_windows(windowed: Path) -> None:
    clf = TextClassifier.load(windowed)
    report = json.loads((windowed / "validation_report.json").read_text())
    truth = np.array([y for y, _ in VALIDATION])
    texts = [t for _, t in VALIDATION]

    def log_loss(proba: np.ndarray) -> float:
        return float(-np.mean(np.log(proba[np.arange(len(truth)), truth])))

    assert report["log_loss"] == pytest.approx(log_loss(clf.predict_proba(texts, long_texts="window")), rel=1e-4)
    assert report["log_loss"] != pytest.approx(log_loss(clf.predict_proba(texts, long_texts="truncate")), rel=1e-3)


def test_server_and_cli_follow_the_model_unless_told(windowed: Path, tmp_path: Path) -> None:
    from textfit.cli import main

    clf = TextClassifier.load(windowed)
    windows = clf.predict_proba([TURNING], long_texts="window")[0]
    prefix = clf.predict_proba([TURNING], long_texts="truncate")[0]
    for settings, expected in ((ServeSettings(max_wait_ms=0), windows),
                               (ServeSettings(max_wait_ms=0, long_texts="truncate"), prefix)):
        with TestClient(create_app(clf, settings)) as c:
            answer = c.post("/invocations", content=TURNING.encode(), headers={"Content-Type": "application/x-text"})
        np.testing.assert_allclose(answer.json()["probabilities"], expected, atol=1e-5)
    (tmp_path / "in.txt").write_text(TURNING + "\n")
    for extra, expected in (([], windows), (["--long-texts", "truncate"], prefix)):
        out = tmp_path / f"out{len(extra)}.jsonl"
        assert main(["predict", "--model", str(windowed), "--input", str(tmp_path / "in.txt"), "--output", str(out),
                     *extra]) == 0
        np.testing.assert_allclose(json.loads(out.read_text())["probabilities"], expected, atol=1e-5)


def test_a_text_is_read_as_at_most_max_windows_windows(tiny_bert: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    huge = " ".join(["good film"] * 200_000)  # 400,000 words: 26,000 windows of 16 tokens if nothing cut it
    data = batching.encode(tokenizer, ["bad film", huge, "good " * 20], 16, window_overlap=4)
    owners = list(data.owners)
    assert owners.count(0) == 1 and owners.count(1) == batching.MAX_WINDOWS and owners.count(2) == 2
    assert owners == sorted(owners)
    assert all(len(ids) <= 16 for ids in data.input_ids)
