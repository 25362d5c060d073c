"""The hashing checks: duplicates, leaks between splits, conflicting labels, flagged texts, with their lines."""

from __future__ import annotations

from pathlib import Path

from textfit.data import quality
from textfit.data.channels import read_channel


def _write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def test_duplicates_leaks_and_conflicts_are_found_with_their_record_lines(tmp_path: Path) -> None:
    train = read_channel(_write(tmp_path / "train" / "data.csv", (
        'pos,"a quoted\ntext over two lines"\n'      # lines 1-2
        "neg,a dull plot\n"                           # line 3
        'neg,"a quoted\ntext over two lines"\n'       # lines 4-5: the same text, another label
        "pos,A  DULL plot\n"                          # line 6: line 3 but for case and spacing, another label
        "pos,a fine film\n")))                        # line 7
    test = read_channel(_write(tmp_path / "test" / "data.csv", "pos,a fine film\nneg,unseen words\n"))
    found = quality.inspect_splits({"train": (train.texts, train.labels, train.lines),
                                    "test": (test.texts, test.labels, test.lines)})
    by_text = {g.text: g for g in found.duplicates}
    quoted = by_text["a quoted\ntext over two lines"]
    assert [r.line for r in quoted.rows] == [1, 4] and quoted.exact and quoted.labels == ["pos", "neg"]
    spaced = by_text["a dull plot"]
    assert [r.line for r in spaced.rows] == [3, 6] and not spaced.exact
    assert found.duplicate_rows("train") == 2 and found.duplicate_rows("test") == 0
    assert [(g.text, [(r.split, r.line) for r in g.rows]) for g in found.leaks] == [
        ("a fine film", [("train", 7), ("test", 1)])]
    assert found.leaked_rows("test") == 1
    assert sorted(g.text for g in found.conflicts) == ["a dull plot", "a quoted\ntext over two lines"]
    lines = quality.summary_lines(found)
    assert "Leaks: 1 of 2 test texts appear in train (word for word, or but for case and spacing)" in lines
    assert "Conflicts: 2 texts appear with different labels (4 rows)" in lines
    assert found.class_counts["train"] == {"pos": 3, "neg": 2}


def test_a_clean_set_has_no_findings(tmp_path: Path) -> None:
    rows = "".join(f"{i % 2},text number {i} with words\n" for i in range(50))
    train = read_channel(_write(tmp_path / "t" / "data.csv", rows))
    found = quality.inspect_splits({"train": (train.texts, train.labels, train.lines)})
    assert not found.duplicates and not found.leaks and not found.conflicts and not found.flags
    assert quality.training_lines(found) == ["Duplicates: 0 training rows repeat another",
                                             "Conflicts: 0 texts appear with different labels"]


def test_validation_copies_are_what_training_logs(tmp_path: Path) -> None:
    found = quality.inspect_splits({"train": (["a", "b c", "d"], ["x", "y", "x"], [1, 2, 3]),
                                    "validation": (["B  C", "e"], ["y", "x"], [1, 2])}, flag_texts=False)
    assert quality.training_lines(found)[0].startswith("Duplicates: 1 of 2 validation texts appear in the training data")


def test_text_flags() -> None:
    assert quality.text_flag("") == "empty" and quality.text_flag(" ?! - ") == "empty"
    assert quality.text_flag("ok") == "near-empty"
    assert quality.text_flag("refund") is None  # one real word is a text
    assert quality.text_flag("<div><span>hi</span></div>") == "markup"
    assert quality.text_flag("see https://example.org/page for the whole story of the match and its players") is None
    assert quality.text_flag("https://example.org/a/very/long/path/to/a/page") == "markup"  # a link alone
    assert quality.text_flag("cafÃ© au lait") == "debris"  # UTF-8 read as Latin-1
    assert quality.text_flag("itâ€™s fine") == "debris"  # UTF-8 read as cp1252
    assert quality.text_flag("bad \ufffd byte") == "debris"
    assert quality.text_flag("a normal sentence, with café and naïve words") is None


def test_multi_label_rows_compare_as_label_sets(tmp_path: Path) -> None:
    train = read_channel(_write(tmp_path / "m" / "data.csv", "a|b,same text\nb,same text\n,other\n"),
                         multi_label=True)
    found = quality.inspect_splits({"train": (train.texts, train.labels, train.lines)})
    assert [g.labels for g in found.conflicts] == [["a|b", "b"]]
    assert found.class_counts["train"] == {"b": 2, "a": 1}
