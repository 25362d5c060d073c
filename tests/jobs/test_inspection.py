"""`textfit inspect`: duplicates, leaks, conflicts and likely label errors, on the command line and in Python; the
inputs untouched, a clean channel written on request; the cheap checks in every `textfit train`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NEGATIVE, POSITIVE, make_rows, write_csv
from textfit.cli import main
from textfit.jobs.inspection import inspect

TOPICS = {
    "sport": ["the team won the match", "a late goal decided the final", "the striker scored twice",
              "the coach praised his players", "fans filled the stadium for the derby"],
    "money": ["shares fell on the stock market", "the bank raised interest rates", "inflation hit a new high",
              "profits rose in the third quarter", "investors sold their bonds"],
    "science": ["the telescope found a distant planet", "researchers sequenced the genome",
                "the experiment measured the particle", "a new vaccine passed its trial", "the probe reached Mars"],
}


def _topic_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = sorted(TOPICS)
    return [(names[i % 3], f"{rng.choice(TOPICS[names[i % 3]])} {rng.choice(['today', 'again', 'this week'])} "
                           f"({i})") for i in range(n)]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[int]]:
    """150 rows of three topics, 8 of them given another topic's label: their lines. No two flipped rows share a
    sentence: two copies of a sentence under one wrong label would be a second reading, not an error."""
    rows = _topic_rows(150)
    order = list(range(150))
    random.Random(3).shuffle(order)
    flipped: set[int] = set()
    for i in order:
        if len(flipped) < 8 and all(rows[i][1].split(" (")[0].rsplit(" ", 1)[0] not in rows[j][1] for j in flipped):
            flipped.add(i)
    names = sorted(TOPICS)
    for i in flipped:
        rows[i] = (names[(names.index(rows[i][0]) + 1) % 3], rows[i][1])
    path = write_csv(tmp_path_factory.mktemp("noisy") / "train" / "data.csv", rows)
    return path.parent, {i + 1 for i in flipped}


def test_flipped_labels_are_ranked_first(noisy: tuple[Path, set[int]]) -> None:
    folder, flipped = noisy
    found = inspect(folder)
    ranked = [issue.line for issue in found.label_issues]
    assert set(ranked[: len(flipped)]) == flipped, (ranked, flipped)
    first = found.label_issues[0]
    names = sorted(TOPICS)
    assert first.suggested == names[(names.index(first.given) - 1) % 3]  # the topic it was flipped from
    assert found.scores is not None and len(found.scores) == 150
    assert found.method["folds"] == 5 and found.method["out_of_fold_accuracy"] > 0.85


def test_the_command_reports_writes_and_never_changes_its_inputs(noisy: tuple[Path, set[int]], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder, flipped = noisy
    rows = list(csv.reader(io.StringIO((folder / "data.csv").read_text(encoding="utf-8"))))
    test = write_csv(tmp_path / "test" / "data.csv", [tuple(rows[0]), tuple(rows[1]), ("sport", "a new text")])
    val = write_csv(tmp_path / "val" / "data.csv", [(rows[2][0], rows[2][1].upper())])
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "data.csv", test, val)}
    out = tmp_path / "report"
    assert main(["inspect", "--train", str(folder), "--validation", str(val.parent), "--test", str(test),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Leaks: 2 of 3 test texts appear in train or validation" in printed
    assert "Leaks: 1 of 1 validation texts appear in train" in printed
    assert "Label issues: " in printed and "Duplicates: 0 train rows repeat another train row" in printed
    report = json.loads((out / "inspect.json").read_text())
    assert {(r["split"], r["line"]) for g in report["leaks"] for r in g["rows"]} >= {("train", 1), ("test", 1),
                                                                                      ("train", 3), ("validation", 1)}
    issues = list(csv.DictReader(io.StringIO((out / "label_issues.csv").read_text(encoding="utf-8"))))
    assert list(issues[0]) == ["line", "text", "given", "suggested", "score", "action"]
    assert {int(r["line"]) for r in issues} >= flipped
    assert all(rows[int(r["line"]) - 1] == [r["given"], r["text"]] for r in issues)  # line: the record's line
    assert (out / "label_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}

    # a person reviews the file: one row relabelled, one kept, the rest dropped as written
    issues[0]["action"], issues[1]["action"] = "relabel", "keep"
    decisions = tmp_path / "reviewed.csv"
    with decisions.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(issues[0]))
        writer.writeheader()
        writer.writerows(issues)
    clean = tmp_path / "clean"
    assert main(["inspect", "--train", str(folder), "--label-errors", "none", "--write-clean", str(clean),
                 "--decisions", str(decisions)]) == 0
    kept = list(csv.reader(io.StringIO((clean / "data.csv").read_text(encoding="utf-8"))))
    assert len(kept) == 150 - (len(issues) - 2)
    relabelled = [r for r in kept if r[1] == issues[0]["text"]]
    assert relabelled == [[issues[0]["suggested"], issues[0]["text"]]]
    assert [issues[1]["given"], issues[1]["text"]] in kept
    assert not any(r[1] == issues[2]["text"] for r in kept)
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}


def test_duplicates_are_left_out_of_the_clean_channel(tmp_path: Path) -> None:
    rows = [("a", "one text"), ("b", "two text"), ("a", "One  TEXT"), ("a", "three"), ("b", "two text")]
    folder = write_csv(tmp_path / "t" / "data.csv", rows).parent
    assert main(["inspect", "--train", str(folder), "--label-errors", "none", "--write-clean",
                 str(tmp_path / "c")]) == 0
    assert list(csv.reader(io.StringIO((tmp_path / "c" / "data.csv").read_text()))) == [["a", "one text"], ["b", "two text"],
                                                                      ["a", "three"]]


def test_multi_label_issues(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = []
    for i in range(120):
        labels = [name for name, on in (("good", i % 2 == 0), ("bad", i % 3 == 0)) if on]
        words = ["the", "film", rng.choice(["was", "is", "seemed"])]
        words += [rng.choice(POSITIVE)] if "good" in labels else []
        words += [rng.choice(NEGATIVE)] if "bad" in labels else []
        rows.append(("|".join(labels), " ".join(words) + f" {i}"))
    flipped = [4, 20, 50]  # "good" rows given no "good"
    for i in flipped:
        rows[i] = ("|".join(x for x in rows[i][0].split("|") if x != "good"), rows[i][1])
    folder = write_csv(tmp_path / "m" / "data.csv", rows).parent
    found = inspect(folder, multi_label=True)
    top = [issue.line for issue in found.label_issues[:6]]
    assert {i + 1 for i in flipped} <= set(top), (top, found.label_issues[:6])
    assert all("good" in issue.suggested for issue in found.label_issues if issue.line in {i + 1 for i in flipped})
    per_label = {(e["label"], e["given"], e["suggested"]): e["rows"] for e in found.method["per_label"]}
    assert per_label[("good", False, True)] >= len(flipped)  # the rows given without "good" that have it
    assert any(line.startswith("Label issues (good): ") and "miss it" in line for line in found.summary())


def test_fine_tuned_folds(tiny_bert: Path, tmp_path: Path) -> None:
    folder = write_csv(tmp_path / "t" / "data.csv", make_rows(80)).parent
    found = inspect(folder, model_id=str(tiny_bert), label_errors="finetune", folds=2,
                    hyperparameters={"epochs": "12", "batch_size": "8", "learning_rate": "0.002",
                                     "optimizer": "adam", "precision": "fp32", "training_recipe": "finetune",
                                     "validation_split_ratio": "0"})
    assert found.scores is not None and len(found.scores) == 80
    assert found.method["folds"] == 2 and "fine-tuned on the other folds" in found.method["description"]
    # two trainings on 40 rows each learnt the words (0.78-0.93 over seeds 0-2); a constant or a column mix-up
    # between a fold's classes and the data's would be 0.5 or below
    assert found.method["out_of_fold_accuracy"] > 0.7


def test_records_are_dataframe_rows(noisy: tuple[Path, set[int]]) -> None:
    folder, _ = noisy
    found = inspect(folder, label_errors="none")
    frame = found.to_frame("classes")
    assert sorted(frame["label"]) == sorted(TOPICS) and frame["rows"].sum() == 150
    assert found.records("label_issues") == [] and found.lengths == {}
    with pytest.raises(ValueError, match="unknown kind"):
        found.records("nothing")


@pytest.mark.parametrize(("args", "message"), [
    (["--folds", "1"], "must be an integer from 2 to 20"),
    (["--hp", "multi_label=maybe"], "multi_label"),
    (["--decisions", "{bad}", "--write-clean", "{clean}"], "action 'maybe' is not one of drop, keep, relabel"),
    (["--output", "{mine}"], "the folder holds files textfit did not write (thesis.txt)"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                               message: str) -> None:
    folder = write_csv(tmp_path / "t" / "data.csv", [("a", "x y"), ("b", "z w")]).parent
    (tmp_path / "bad.csv").write_text("line,text,given,suggested,score,action\n1,x y,a,b,0.1,maybe\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("mine")
    filled = [a.format(bad=tmp_path / "bad.csv", clean=tmp_path / "clean", mine=tmp_path / "mine") for a in args]
    try:
        code = main(["inspect", "--train", str(folder), "--label-errors", "none", *filled])
    except SystemExit as exc:  # argparse's own refusal of a flag's value
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "clean" / "data.csv").exists()
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "mine"


def test_a_bad_row_and_one_class_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad" / "data.csv"
    bad.parent.mkdir()
    bad.write_text("a,fine\nb\n")
    assert main(["inspect", "--train", str(bad.parent)]) == 2
    assert f"{bad}, line 2" in capsys.readouterr().err
    one = write_csv(tmp_path / "one" / "data.csv", [("a", f"text {i}") for i in range(10)]).parent
    assert main(["inspect", "--train", str(one)]) == 2
    assert "every row has label 'a'; a classifier needs at least 2 classes" in capsys.readouterr().err


def test_an_empty_split_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_csv(tmp_path / "t" / "data.csv", [("a", "x y"), ("b", "z w")]).parent
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.csv").write_text("")
    assert main(["inspect", "--train", str(folder), "--test", str(tmp_path / "empty"), "--label-errors", "none"]) == 2
    assert "the file is empty" in capsys.readouterr().err


def test_100000_rows_in_bounded_memory(tmp_path: Path) -> None:
    rng = random.Random(0)
    words = [w for words in TOPICS.values() for phrase in words for w in phrase.split()]
    rows = [(str(i % 7), " ".join(rng.choices(words, k=12)) + f" {i}") for i in range(100_000)]
    rows += rows[:500]  # 500 copies
    folder = write_csv(tmp_path / "big" / "data.csv", rows).parent
    # VmHWM: this process's peak (getrusage's ru_maxrss would carry the forking test process's across exec)
    code = ("import re, sys; from pathlib import Path; from textfit.cli import main; rc = main(sys.argv[1:]); "
            "print('RSS', re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())[1]); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "inspect", "--train", str(folder), "--label-errors", "none",
                           "--output", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Duplicates: 500 train rows repeat another train row (500 texts)" in done.stdout
    rss_mb = int(done.stdout.split("RSS")[1].split()[0]) / 1024
    assert rss_mb < 250, rss_mb  # the texts (9 MB of CSV), their keys and the findings (115 MB measured): no torch


def test_training_logs_copies_and_conflicts(tiny_bert: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    rows = make_rows(40)
    rows += [rows[0], (1 - int(rows[1][0]), rows[1][1])]  # a copy, and a conflicting copy  # type: ignore[call-overload]
    train = write_csv(tmp_path / "t" / "data.csv", rows).parent
    val = write_csv(tmp_path / "v" / "data.csv", [rows[2], rows[3], (0, "a text of its own")]).parent
    assert main(["train", "--train", str(train), "--validation", str(val), "--model-id", str(tiny_bert),
                 "--output", str(tmp_path / "m"), "--hp", "epochs=1", "--hp", "training_recipe=finetune",
                 "--onnx", "none"]) == 0
    assert "Duplicates: 2 of 3 validation texts appear in the training data" in caplog.text
    assert "Conflicts: 1 texts appear with different labels (2 rows" in caplog.text


def test_near_duplicates_by_embedding_leave_copies_out(tmp_path: Path) -> None:
    rows = [("sport", "the striker scored two goals in the final"), ("sport", "in the final the striker scored two goals"),
            ("money", "shares fell sharply on the stock market"), ("money", "Shares fell sharply on the stock  market"),
            ("science", "the telescope found a distant planet"), ("science", "a new vaccine passed its trial")]
    folder = write_csv(tmp_path / "t" / "data.csv", rows).parent
    found = inspect(folder, label_errors="none", near=0.9)
    assert [(p.a.line, p.b.line) for p in found.near_duplicates] == [(1, 2)]  # lines 3 and 4 are copies
    assert found.near_count == 1 and found.near_duplicates[0].cosine > 0.9
    assert "Near-duplicates: 1 pairs of texts at cosine >= 0.9 that are not copies" in found.summary()
