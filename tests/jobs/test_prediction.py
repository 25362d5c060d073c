"""Batch prediction of files: every input format, streaming, order, labels scored, worker processes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from textfit.errors import DataError
from textfit.jobs.prediction import CHUNK, InputRecord, predict_file, read_records


def test_read_records_in_every_format(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('1,"good, very good"\n0,bad\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "good", "label": 1}\n"bad"\n', encoding="utf-8")
    (tmp_path / "c.txt").write_text("good\n\nbad\n", encoding="utf-8")
    assert [(r.text, r.label) for r in read_records(tmp_path / "a.csv")] == [("good, very good", "1"), ("bad", "0")]
    assert [(r.text, r.label) for r in read_records(tmp_path / "b.jsonl")] == [("good", "1"), ("bad", None)]
    assert [(r.text, r.line) for r in read_records(tmp_path / "c.txt")] == [("good", 1), ("bad", 3)]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_read_records_of_a_file_with_a_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    (tmp_path / "a.csv").write_text('1,"caf\u00e9, cr\u00e8me"\n0,na\u00efve\n', encoding=encoding)
    (tmp_path / "b.txt").write_text("caf\u00e9\nna\u00efve\n", encoding=encoding)
    assert [(r.text, r.label) for r in read_records(tmp_path / "a.csv")] == [("caf\u00e9, cr\u00e8me", "1"),
                                                                              ("na\u00efve", "0")]
    assert [r.text for r in read_records(tmp_path / "b.txt")] == ["caf\u00e9", "na\u00efve"]


def test_read_records_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("good\n1,bad,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.csv, line 2: expected a text, or label,text"):
        list(read_records(tmp_path / "a.csv"))
    (tmp_path / "b.jsonl").write_text('"ok"\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b.jsonl, line 2: expected a string"):
        list(read_records(tmp_path / "b.jsonl"))


def test_predict_file_streams_in_order_and_scores_labels(tiny_artifact: Path, tmp_path: Path) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    texts = [" ".join(["good great lovely", "bad awful poor"][i % 2].split()[: 1 + i % 3]) for i in range(2500)]
    rows = [f"{1 - i % 2},{t}" for i, t in enumerate(texts)]  # labels: 1 for the good texts
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = io.StringIO()
    summary = predict_file(clf, read_records(tmp_path / "in.csv"), out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == summary.records == summary.labelled == 2500  # more than one chunk of 1024
    expected = clf.predict_proba(texts)
    np.testing.assert_allclose([r["probabilities"] for r in records], expected, atol=1e-5)
    assert [r["label"] for r in records[:2]] == ["1", "0"]
    assert summary.correct == sum(r["label"] == r["predicted_label"] for r in records)


def test_each_record_names_its_input_line_past_blank_lines_and_a_header(tiny_artifact: Path,
                                                                         tmp_path: Path) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    (tmp_path / "in.csv").write_text('label,text\n1,good film\n\n0,"bad\nfilm"\n\n\n1,lovely\n', encoding="utf-8")
    out = io.StringIO()
    predict_file(clf, read_records(tmp_path / "in.csv"), out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["line"], r["label"]) for r in records] == [(2, "1"), (4, "0"), (8, "1")]
    (tmp_path / "in.txt").write_text("good\n\n  \nbad\n", encoding="utf-8")
    out = io.StringIO()
    predict_file(clf, read_records(tmp_path / "in.txt"), out)
    assert [json.loads(line)["line"] for line in out.getvalue().splitlines()] == [1, 4]


def test_predict_file_streams(tiny_artifact: Path) -> None:
    """Records are pulled a chunk at a time: the first output is written before the input is exhausted."""
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    pulled = 0

    def endless() -> Iterator[InputRecord]:
        nonlocal pulled
        while True:
            pulled += 1
            yield InputRecord("good film", None, pulled)

    class StopAfterFirstChunk(io.StringIO):
        def write(self, s: str) -> int:
            raise StopIteration(pulled)

    with pytest.raises(StopIteration) as info:
        predict_file(clf, endless(), StopAfterFirstChunk())
    assert info.value.value == CHUNK  # not a record more than one chunk was read


def test_predict_with_workers_writes_one_output_in_order(tiny_artifact: Path, tmp_path: Path) -> None:
    from textfit.cli import main

    texts = [" ".join(["good great", "bad awful", "lovely", "poor sad"][i % 4].split()) + f" film {i % 7}"
             for i in range(301)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["-q", "predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "two.jsonl"), "--workers", "2"]) == 0
    assert main(["-q", "predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "one.jsonl")]) == 0
    one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(two) == 301
    assert [r["line"] for r in two] == [r["line"] for r in one] == list(range(1, 302))
    np.testing.assert_allclose([r["probabilities"] for r in two], [r["probabilities"] for r in one], atol=1e-5)


def test_predict_and_evaluate_say_how_many_texts_were_truncated(tiny_artifact: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """On the command line's stderr, where the user reads it (the CLI's log lines do not propagate to the root
    logger, so caplog sees them only when an earlier test left the logger otherwise)."""
    from textfit.cli import main

    long_text = " ".join(["good", "film"] * 150)  # 300 words: over the 128 tokens of max_seq_length
    (tmp_path / "in.csv").write_text(f"1,{long_text}\n0,bad awful film\n1,good film\n")
    assert main(["predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.csv"), "--output",
                 str(tmp_path / "out.jsonl")]) == 0
    assert "1 of 3 texts are longer than max_seq_length=128 tokens" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_artifact), "--data", str(tmp_path / "in.csv")]) == 0
    assert "1 of 3 texts are longer than max_seq_length=128 tokens" in capsys.readouterr().err
    assert main(["predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.csv"), "--output",
                 str(tmp_path / "w.jsonl"), "--long-texts", "window"]) == 0
    err = capsys.readouterr().err
    assert "longer than" not in err and "Wrote 3 predictions" in err  # windows use all of each text


def test_a_header_row_is_recognised_as_train_does(tiny_artifact: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    (tmp_path / "in.csv").write_text("label,text\n1,good great film\n0,bad awful plot\n")
    out = io.StringIO()
    summary = predict_file(clf, read_records(tmp_path / "in.csv"), out)
    assert summary.records == 2 and summary.labelled == 2 and summary.accuracy == 1.0
    assert "line 1 looks like a header row" in caplog.text
    (tmp_path / "plain.csv").write_text("2,good great film\n1,good film\n0,bad awful plot\n")  # 2: unknown, no header
    assert predict_file(clf, read_records(tmp_path / "plain.csv"), io.StringIO()).records == 3


def test_a_lone_text_header_is_skipped_as_train_decides_headers(tiny_artifact: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    (tmp_path / "in.csv").write_text("text\nhello\nworld\n")
    out = io.StringIO()
    summary = predict_file(clf, read_records(tmp_path / "in.csv"), out)
    assert summary.records == 2 and [json.loads(line)["line"] for line in out.getvalue().splitlines()] == [2, 3]
    assert "line 1 looks like a header row ('text' is a column name); it is skipped" in caplog.text
    (tmp_path / "in.txt").write_text("text\nhello\nworld\n")  # plain lines have no header: every line is a text
    assert predict_file(clf, read_records(tmp_path / "in.txt"), io.StringIO()).records == 3
    (tmp_path / "one.csv").write_text("hello\nworld\n")  # a first text that names no column is a text
    assert predict_file(clf, read_records(tmp_path / "one.csv"), io.StringIO()).records == 2


def test_predict_of_a_one_column_csv_with_a_header_through_the_cli(tiny_artifact: Path, tmp_path: Path) -> None:
    from textfit.cli import main

    (tmp_path / "in.csv").write_text("text\nhello\nworld\n")
    assert main(["-q", "predict", "--model", str(tiny_artifact), "--input", str(tmp_path / "in.csv"),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    assert [json.loads(line)["line"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [2, 3]


def test_a_header_of_names_over_name_labels_is_skipped(tiny_artifact: Path, tmp_path: Path) -> None:
    from textfit import TextClassifier

    clf = TextClassifier.load(tiny_artifact)
    (tmp_path / "in.csv").write_text("label,text\npos,good great film\nneg,bad awful plot\n")
    assert predict_file(clf, read_records(tmp_path / "in.csv"), io.StringIO()).records == 2
