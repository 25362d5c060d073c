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

from tests.conftest import (
    FAST,
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    TOKENIZER_CORPUS,
    build_bpe_tokenizer,
    build_unigram_tokenizer,
    write_csv,
)
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


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_head_tail_reads_a_long_texts_first_and_last_tokens(kind: str, tiny_bert: Path, tmp_path: Path) -> None:
    """WordPiece, byte-level BPE (a space marks a word's start) and Unigram, through transformers' tokenizer
    and the ONNX server's: a long text's row is its first quarter of tokens and its last ones, as the whole
    text tokenizes, inside the same special tokens; the tail starts at a word; its spans are its words; a short
    text is as truncation reads it."""
    from transformers import AutoTokenizer

    from textfit.model.export import GraphTokenizer

    folder = {"wordpiece": lambda: tiny_bert, "bpe": lambda: build_bpe_tokenizer(tmp_path),
              "unigram": lambda: build_unigram_tokenizer(tmp_path)}[kind]()
    words = " ".join(TOKENIZER_CORPUS[:5]).split() if kind != "wordpiece" else POSITIVE + NEUTRAL + NEGATIVE
    text = " ".join(words * 6) + "  the END awful"[: None if kind != "wordpiece" else 0] + " bad sad"
    rows = []
    for tokenizer in (AutoTokenizer.from_pretrained(folder), GraphTokenizer(folder)):
        whole = tokenizer([text], truncation=True, max_length=10_000, return_special_tokens_mask=True)
        own = [i for i, s in zip(whole["input_ids"][0], whole["special_tokens_mask"][0]) if not s]
        plain = batching.encode(tokenizer, [text, "bad film"], 24)
        data = batching.encode(tokenizer, [text, "bad film"], 24, head_tail=True)
        row, first = data.input_ids[0], plain.input_ids[0]
        assert data.truncated == plain.truncated == 1 and data.input_ids[1] == plain.input_ids[1]
        before, after = (1, 1)  # <s> ... </s> and [CLS] ... [SEP]
        head, tail = batching.head_tail_split(before, after, 24)
        assert (head, tail) == (6, 16)
        assert row[: before + head] == first[: before + head] and row[-after:] == first[-after:]
        got_tail = row[before + head: len(row) - after]
        assert tail - 4 <= len(got_tail) <= tail and got_tail == own[len(own) - len(got_tail):]
        assert got_tail != first[before + head: len(first) - after]  # not what truncation reads
        (ids, spans, special), = batching.spans(tokenizer, [text], 24, head_tail=True)[0:1][0]
        assert ids == row and len(spans) == len(ids) and special[0] and special[-1] and not any(special[1:-1])
        tail_spans = spans[before + head: len(row) - after]
        assert text[tail_spans[0][0] - 1].isspace() or text[tail_spans[0][0]].isspace()  # a word's start
        assert tail_spans[-1][1] == len(text)
        rows.append(row)
    assert rows[0] == rows[1]


@pytest.fixture(scope="module")
def head_tail(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact trained with long_texts=head_tail on rows whose class shows only in their last words."""
    root = tmp_path_factory.mktemp("head_tail")
    write_csv(root / "train" / "data.csv", tail_rows(96, seed=1))
    write_csv(root / "validation" / "data.csv", VALIDATION)
    clf = TextClassifier(str(tiny_bert), {**SHORT_WINDOWS, "long_texts": "head_tail"}).fit(
        read_channel(root / "train"), validation=read_channel(root / "validation"))
    return save_artifact(clf, root / "model")


def test_a_head_tail_model_learns_from_the_tail_that_truncation_cuts(head_tail: Path, tiny_bert: Path,
                                                                    tmp_path: Path) -> None:
    write_csv(tmp_path / "train" / "data.csv", tail_rows(96, seed=1))
    truncating = TextClassifier(str(tiny_bert), {**SHORT_WINDOWS, "long_texts": "truncate"}).fit(
        read_channel(tmp_path / "train"))
    texts, truth = [t for _, t in VALIDATION], np.array([y for y, _ in VALIDATION])
    clf = TextClassifier.load(head_tail)
    assert clf.long_texts_ == "head_tail"
    assert np.mean(clf.predict_proba(texts).argmax(axis=1) == truth) >= 0.9
    assert np.mean(truncating.predict_proba(texts).argmax(axis=1) == truth) <= 0.75  # the first 16 tokens: neutral
    report = json.loads((head_tail / "validation_report.json").read_text())
    assert report["accuracy"] >= 0.9
    assert "read as its head and tail" in (head_tail / "README.md").read_text()


def test_head_tail_is_served_and_predicted_alike_on_both_back_ends(head_tail: Path, tmp_path: Path) -> None:
    from textfit.cli import main

    torch_clf, onnx_clf = TextClassifier.load(head_tail), TextClassifier.load(head_tail, backend="onnx")
    texts = [t for _, t in VALIDATION[:8]] + [TURNING]
    expected = torch_clf.predict_proba(texts)
    np.testing.assert_allclose(onnx_clf.predict_proba(texts), expected, atol=1e-5)
    assert not np.allclose(expected, torch_clf.predict_proba(texts, long_texts="truncate"), atol=1e-3)
    with TestClient(create_app(onnx_clf, ServeSettings(max_wait_ms=0))) as c:
        answer = c.post("/invocations", content=TURNING.encode(), headers={"Content-Type": "application/x-text"})
    np.testing.assert_allclose(answer.json()["probabilities"], expected[-1], atol=1e-5)
    (tmp_path / "in.txt").write_text(TURNING + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--model", str(head_tail), "--input", str(tmp_path / "in.txt"), "--output", str(out)]) == 0
    np.testing.assert_allclose(json.loads(out.read_text())["probabilities"], expected[-1], atol=1e-5)


def test_a_head_tail_explanation_scores_the_words_it_reads(head_tail: Path) -> None:
    """At 16 tokens (14 of the text's own: 4 head, 10 tail) a 24-word row is read as its first 4 and last 10
    words: those are explained, by both methods, and no word between."""
    clf = TextClassifier.load(head_tail)
    text = VALIDATION[0][1]
    read = text.split()[:4] + text.split()[14:]
    for method in ("gradient", "occlusion"):
        record, = clf.explain([text], method=method, all_labels=True)
        for words in record["explanations"].values():
            assert [w["word"] for w in words] == read
            assert all(text[w["start"]:w["end"]] == w["word"] for w in words)
            assert all(w["score"] != 0 for w in words)


def test_head_tail_keeps_a_whole_tail_of_a_text_without_spaces() -> None:
    """Chinese has no spaces between words: no tail token starts after one, and the tail is its last tokens
    still, not nothing (the search for a space gives up after WORD_SKIP characters)."""
    from transformers import AutoTokenizer

    from textfit.model import zoo

    tokenizer = AutoTokenizer.from_pretrained(zoo.resolve_model(None).path)
    text = "这部电影非常好看我很喜欢它的故事和演员" * 20 + "结局很糟糕"
    row = batching.encode(tokenizer, [text], 24, head_tail=True).input_ids[0]
    own = tokenizer([text], truncation=True, max_length=10_000)["input_ids"][0][1:-1]
    head, tail = batching.head_tail_split(1, 1, 24)
    assert len(row) == 24 and row[1:1 + head] == own[:head] and row[1 + head:-1] == own[-tail:]
