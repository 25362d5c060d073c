from __future__ import annotations

import codecs
from collections import Counter
from pathlib import Path

import pytest

from textfit.data.channels import class_set, encode_labels, multi_label_split, read_channel, stratified_split
from textfit.errors import DataError


def write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_real_csv_semantics(tmp_path: Path) -> None:
    write(tmp_path, '0,plain text\n1,"with, a comma"\n0,"two\nlines"\n1,"a ""quote"""\n\n')
    ch = read_channel(tmp_path)
    assert ch.texts == ["plain text", "with, a comma", "two\nlines", 'a "quote"']
    assert ch.labels == [0, 1, 0, 1]
    assert ch.lines == [1, 2, 3, 5]  # a quoted newline makes row 4 start on line 5


def test_utf8_bom_and_a_csv_file_path(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff1,caf\u00e9 cr\u00e8me\n0,na\u00efve\n", name="reviews.csv")
    ch = read_channel(path)
    assert ch.labels == [1, 0] and ch.texts[0] == "caf\u00e9 cr\u00e8me"


@pytest.mark.parametrize(("bom", "encoding"), [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")])
def test_utf16_with_its_byte_order_mark_is_read(tmp_path: Path, bom: bytes, encoding: str) -> None:
    write(tmp_path, bom + '1,"caf\u00e9, cr\u00e8me"\r\n0,na\u00efve\r\n'.encode(encoding))
    ch = read_channel(tmp_path)
    assert ch.labels == [1, 0] and ch.texts == ["caf\u00e9, cr\u00e8me", "na\u00efve"]


@pytest.mark.parametrize(("separator", "name"), [(";", "a semicolon"), ("\t", "a tab"), ("|", "a bar")])
def test_another_separator_is_named_with_the_fix(tmp_path: Path, separator: str, name: str) -> None:
    write(tmp_path, f"pos{separator}great film\nneg{separator}dull\n")
    with pytest.raises(DataError) as info:
        read_channel(tmp_path)
    assert str(info.value) == (f"{tmp_path / 'data.csv'}: 2 rows have one column (lines 1, 2): the columns seem "
                               f"separated by {name}: data.csv separates the label from the text by a comma, "
                               'as in 1,"a text"')
    write(tmp_path, f"pos{separator}great film\n")
    with pytest.raises(DataError) as info:
        read_channel(tmp_path)
    assert f"line 1: expected 2 columns (label,text) but found 1; the columns seem separated by {name}" in str(info.value)


def test_a_one_column_row_of_prose_is_not_taken_for_another_separator(tmp_path: Path) -> None:
    write(tmp_path, "0,a\nno label here; just words\n")
    with pytest.raises(DataError) as info:
        read_channel(tmp_path)
    assert "line 2: expected 2 columns (label,text) but found 1; quote a text that contains commas" in str(info.value)


def test_labels_one_to_n_map_to_indices_with_names(tmp_path: Path) -> None:
    write(tmp_path, "3,c\n1,a\n2,b\n1,a again\n")
    write(tmp_path, '{"1": "low", "2": "mid", "3": "high"}', name="labels_info.json")
    ch = read_channel(tmp_path)
    classes = class_set(ch)
    assert classes.values == [1, 2, 3] and classes.names == ["low", "mid", "high"]
    assert encode_labels(ch, classes, origin="x") == [2, 0, 1, 0]


def test_names_keyed_by_index_or_as_a_list(tmp_path: Path) -> None:
    write(tmp_path, "1,a\n2,b\n")
    write(tmp_path, '{"0": "first", "1": "second"}', name="labels_info.json")
    assert class_set(read_channel(tmp_path)).names == ["first", "second"]
    write(tmp_path, '["neg", "pos"]', name="labels_info.json")
    assert class_set(read_channel(tmp_path)).names == ["neg", "pos"]


def test_string_labels_become_the_classes(tmp_path: Path) -> None:
    write(tmp_path, "sport,a match\npolitics,a vote\nsport,a goal\n")
    classes = class_set(read_channel(tmp_path))
    assert classes.values == ["politics", "sport"] and classes.names == ["politics", "sport"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"label,text\n0,a\n1,b\n", "line 1: this looks like a header row ('label' is not a label)"),
        (b"0,a\n1,b,c\n", 'line 2: expected 2 columns (label,text) but found 3; quote a text that contains commas'),
        (b"0,a\n1\n", "line 2: expected 2 columns (label,text) but found 1"),
        (b"0,a\n1,b\nx,c\n1,d\n", "line 3: label 'x' is not an integer"),
        (b"0,a\n1,  \n", "line 2: the text is empty"),
        (b"0,ok\n1,fine\n0,caf\xe9\n", "line 3: the file is not valid UTF-8 (byte 0xe9)"),
        (b'0,a\n1,"unclosed\n', "malformed CSV"),
    ],
)
def test_bad_files_name_file_line_and_fix(tmp_path: Path, content: bytes, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DataError) as info:
        read_channel(tmp_path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        read_channel(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data.csv in this folder"):
        read_channel(tmp_path / "empty")


def test_single_class(tmp_path: Path) -> None:
    write(tmp_path, "1,a\n1,b\n")
    with pytest.raises(DataError, match="every row has label 1; a classifier needs at least 2 classes"):
        class_set(read_channel(tmp_path))


def test_validation_labels_missing_from_training(tmp_path: Path) -> None:
    classes = class_set(read_channel(write(tmp_path, "0,a\n1,b\n")))
    val = read_channel(write(tmp_path, "0,a\n2,c\n", name="val.csv"))
    with pytest.raises(DataError, match=r"val.csv, line 2: label 2 is not among the classes"):
        encode_labels(val, classes, origin="the training data")


def test_stratified_split_keeps_class_shares_and_is_reproducible() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 10
    train, val = stratified_split(labels, 0.2, seed=3, path=Path("d.csv"))
    assert len(val) == 20 and sorted(train + val) == list(range(100))
    assert Counter(labels[i] for i in val) == {0: 12, 1: 6, 2: 2}
    assert stratified_split(labels, 0.2, seed=3, path=Path("d.csv")) == (train, val)
    assert stratified_split(labels, 0.2, seed=4, path=Path("d.csv")) != (train, val)


def test_too_few_rows_for_the_split() -> None:
    with pytest.raises(DataError, match="3 rows are too few to hold out validation_split_ratio=0.1"):
        stratified_split([0, 1, 1], 0.1, seed=0, path=Path("d.csv"))
    with pytest.raises(DataError, match="raise validation_split_ratio"):
        stratified_split([0, 1, 1], 0.1, seed=0, path=Path("d.csv"))
    with pytest.raises(DataError, match="of 4 rows leaves 0 to train on, fewer than the 2 classes; lower "
                                        "validation_split_ratio"):
        stratified_split([0, 1, 0, 1], 0.9, seed=0, path=Path("d.csv"))


def test_the_split_holds_out_scikit_learns_class_shares() -> None:
    import numpy as np
    from sklearn.model_selection import StratifiedShuffleSplit

    labels = [0] * 60 + [1] * 30 + [2] * 10
    _, theirs = next(StratifiedShuffleSplit(n_splits=1, test_size=20, random_state=3).split(np.zeros(100), labels))
    _, ours = stratified_split(labels, 0.2, seed=3, path=Path("d.csv"))
    assert Counter(labels[i] for i in ours) == Counter(labels[i] for i in theirs) == {0: 12, 1: 6, 2: 2}


def test_the_split_takes_what_scikit_learn_refuses() -> None:
    """Why the single-label split stays by hand (channels.py): a class with one row, and fewer validation rows
    than classes, are data textfit splits; scikit-learn's stratified splitters refuse both."""
    import numpy as np
    from sklearn.model_selection import StratifiedShuffleSplit

    for labels, reason in (([0] * 5 + [1] * 4 + [2], "only 1 member"), ([0, 1, 2] * 4, "test_size = 2 should be")):
        with pytest.raises(ValueError, match=reason):
            next(StratifiedShuffleSplit(n_splits=1, test_size=2, random_state=0).split(np.zeros(len(labels)), labels))
        train, val = stratified_split(labels, 0.2, seed=0, path=Path("d.csv"))
        assert len(val) == 2 and {labels[i] for i in train} == set(labels)  # every class keeps a training row


ROWS = [[0], [0, 1], [], [0], [2], [1, 2], [0, 2], [1], [0], [], [2], [0, 1, 2]]


def test_the_multi_label_split_is_iterative_stratification() -> None:
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    train, val = multi_label_split(ROWS, 3, 0.25, seed=42, path=Path("d.csv"))
    matrix = np.zeros((len(ROWS), 3), dtype=np.int8)
    for i, row in enumerate(ROWS):
        matrix[i, row] = 1
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=3, random_state=42)
    assert (train, val) == tuple(part.tolist() for part in next(splitter.split(np.zeros(len(ROWS)), matrix)))
    assert sorted(train + val) == list(range(len(ROWS))) and len(val) == 3
    assert {label for i in train for label in ROWS[i]} == {0, 1, 2}
    assert multi_label_split(ROWS, 3, 0.25, seed=42, path=Path("d.csv")) == (train, val)


def test_the_multi_label_split_of_one_label_and_its_errors() -> None:
    rows = [[0], [], [0], [], [0], [], [0], [], [0], []]  # one label: still a multi-label target for iterstrat
    train, val = multi_label_split(rows, 1, 0.2, seed=0, path=Path("d.csv"))
    assert len(val) == 2 and any(rows[i] for i in train)
    with pytest.raises(DataError, match="3 rows are too few to hold out validation_split_ratio=0.1"):
        multi_label_split([[0], [1], [0, 1]], 2, 0.1, seed=0, path=Path("d.csv"))
    with pytest.raises(DataError, match="label index 0 has no training row once validation_split_ratio=0.9"):
        multi_label_split([[0], [1]], 2, 0.9, seed=0, path=Path("d.csv"))


def test_a_field_of_any_size_is_read(tmp_path: Path) -> None:
    """A real corpus has e-mails over csv's default 128 KiB field limit: valid CSV, so valid data."""
    huge = "word " * 60_000  # 300 KB, quoted, with commas and newlines inside
    (tmp_path / "data.csv").write_text(f'0,"{huge}, and more\nlines"\n1,short text\n0,another\n1,more\n',
                                       encoding="utf-8")
    channel = read_channel(tmp_path)
    assert len(channel.texts[0]) > 300_000 and channel.labels == [0, 1, 0, 1]
    (tmp_path / "bad.csv").write_text('0,"unterminated\n1,text\n')
    with pytest.raises(DataError, match=r"bad.csv, line \d+: malformed CSV"):
        read_channel(tmp_path / "bad.csv")


def _train_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str) -> list[str]:
    """`textfit train` on a data.csv: exit code 2, nothing written, and the lines it printed on stderr."""
    from textfit.cli import main

    (tmp_path / "data").mkdir(exist_ok=True)
    write(tmp_path / "data", content)
    assert main(["train", "--train", str(tmp_path / "data"), "--output", str(tmp_path / "model")]) == 2
    assert not (tmp_path / "model").exists()
    return capsys.readouterr().err.splitlines()


def test_many_one_column_rows_are_one_line_with_the_count_and_the_first_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "".join(f"{i % 2},a text {i}\n" if i % 3 else f"a text {i} with no label\n" for i in range(1, 121))
    assert _train_error(capsys, tmp_path, rows) == [
        f"error: {tmp_path / 'data' / 'data.csv'}: 40 rows have one column (lines 3, 6, 9, ...): each row needs label,text"]


def test_many_three_column_rows_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "0,good\n" + "".join(f"1,bad,and worse {i}\n" for i in range(40))
    assert _train_error(capsys, tmp_path, rows) == [
        f"error: {tmp_path / 'data' / 'data.csv'}: 40 rows have 3 columns (lines 2, 3, 4, ...): quote a text that contains "
        'commas: 1,"like, this"']


def test_mixed_labels_are_one_line_naming_the_fewer_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "".join(f"{i % 3},a text {i}\n" for i in range(30)) + "".join(f"x{i},a text\n" for i in range(7))
    assert _train_error(capsys, tmp_path, rows) == [
        f"error: {tmp_path / 'data' / 'data.csv'}: 7 rows have a label that is not an integer (lines 31, 32, 33, ...): labels "
        "must be all integers (class indices) or all class names"]
    rows = "".join(f"name{i % 3},a text {i}\n" for i in range(30)) + "4,a text\n7,another\n"
    assert _train_error(capsys, tmp_path, rows) == [
        f"error: {tmp_path / 'data' / 'data.csv'}: 2 rows have an integer label among class names (lines 31, 32): labels "
        "must be all integers (class indices) or all class names"]


def test_many_empty_texts_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "0,good\n1,bad\n" + "".join(f"{i % 2},  \n" for i in range(25))
    assert _train_error(capsys, tmp_path, rows) == [
        f"error: {tmp_path / 'data' / 'data.csv'}: 25 rows have an empty text (lines 3, 4, 5, ...): remove them or give "
        "them a text"]


def test_a_mix_of_kinds_is_one_line_the_most_common_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ("0,good\n" + "1,a,b\n" + "0,\n" + "".join(f"lonely {i}\n" for i in range(5)) + "1,c,d,e\n"
            + "0,fine\n")
    assert _train_error(capsys, tmp_path, rows) == [
        f"error: {tmp_path / 'data' / 'data.csv'}: 5 rows have one column (lines 4, 5, 6, ...): each row needs label,text; "
        "and 3 other problems (first at line 2)"]
    assert _train_error(capsys, tmp_path, "0,good\nlonely\n1,a,b\n1,fine\n") == [
        f"error: {tmp_path / 'data' / 'data.csv'}, line 2: expected 2 columns (label,text) but found 1; quote a text that "
        'contains commas: 1,"like, this"; and 1 other problem (line 3)']


def test_a_header_of_column_names_is_refused_whatever_the_labels(tmp_path: Path) -> None:
    write(tmp_path, "label,text\nsport,a match\npolitics,a vote\n")
    with pytest.raises(DataError, match=r"line 1: this looks like a header row \('label' is a column name\)"):
        read_channel(tmp_path)
    write(tmp_path, "y,a yes\nn,a no\ny,another yes\n")  # a class named like a column, used again: data
    assert read_channel(tmp_path).labels == ["y", "n", "y"]
