"""`textfit evaluate --explain N`: the page of explained errors and correct predictions, rendered by a real
headless Chromium with no network, and read as a person would: every text there, words shaded in colour."""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import forkserver
from tests.conftest import make_rows, write_csv
from textfit.reports import page


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        if os.environ.get("CI"):  # .ci/run installs Debian's chromium: in CI this test may not quietly skip
            pytest.fail("no chromium although .ci/run should have installed it")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return found


def _headless(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Chromium with every network path closed: a page that needed anything from outside would render without it."""
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-dev-shm-usage", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                           f"--user-data-dir={cwd / 'profile'}", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


class _Texts(html.parser.HTMLParser):
    """The text content of each `class="text"` element, and the background colours of its spans."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.colours: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if self.depth:
            self.depth += 1
            if tag == "span" and "background" in (values.get("style") or ""):
                self.colours.append(values["style"] or "")
        elif tag == "div" and values.get("class") == "text":
            self.depth = 1
            self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.texts[-1] += data


def test_the_page_shows_every_text_in_colour_in_a_real_browser(tiny_artifact: Path, tmp_path: Path) -> None:
    rows = make_rows(40, seed=5)
    rows = [(1 - int(y), t) if i < 6 else (y, t) for i, (y, t) in enumerate(rows)]  # six wrong labels: errors
    rows[7] = (rows[7][0], 'a <b>"tagged"</b> & emoji 😀 line\nand a second line')  # markup stays text
    write_csv(tmp_path / "data" / "data.csv", rows)
    done = forkserver.run([sys.executable, "-m", "textfit", "evaluate", "--model", str(tiny_artifact), "--data",
                           str(tmp_path / "data"), "--output", str(tmp_path / "eval"), "--explain", "4"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["explanations_page"] == "explanations.html"  # the report links the page
    source = (tmp_path / "eval" / "explanations.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<script""", source, re.I)  # nothing to fetch, no code

    dom = _headless("--dump-dom", (tmp_path / "eval" / "explanations.html").as_uri(), cwd=tmp_path)
    assert dom.returncode == 0 and "<h1>" in dom.stdout, dom.stderr[-2000:]
    parsed = _Texts()
    parsed.feed(dom.stdout)
    shown = set(parsed.texts)
    assert source.count('class="item"') == 8 and len(parsed.texts) >= 8  # 4 errors, 4 right; an error has 2 rows
    assert "Most confident errors (4)" in dom.stdout and "Correct predictions (4)" in dom.stdout
    texts = [t for _, t in rows]
    assert all(t in texts for t in shown)  # each shaded text is one of the data's, character for character
    assert any("rgba(0, 150, 60" in c for c in parsed.colours) and any("rgba(210, 30, 45" in c for c in parsed.colours)

    shot = _headless("--screenshot=" + str(tmp_path / "page.png"), "--window-size=1200,4000",
                     (tmp_path / "eval" / "explanations.html").as_uri(), cwd=tmp_path)
    assert shot.returncode == 0, shot.stderr[-2000:]
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(tmp_path / "page.png").convert("RGB")).reshape(-1, 3).astype(int)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    greenish = int(((g > r + 30) & (g > b + 20)).sum())
    reddish = int(((r > g + 40) & (r > b + 40)).sum())
    assert greenish > 200 and reddish > 200, (greenish, reddish)  # shading a person can see, both ways


def test_every_errors_text_appears_once_with_both_labels_shaded(tiny_artifact: Path, tmp_path: Path) -> None:
    from textfit import TextClassifier
    from textfit.jobs.evaluation import evaluate

    rows = make_rows(30, seed=2)
    rows = [(1 - int(y), t) if i < 3 else (y, t) for i, (y, t) in enumerate(rows)]
    write_csv(tmp_path / "data" / "data.csv", rows)
    evaluate(TextClassifier.load(tiny_artifact), tmp_path / "data", tmp_path / "eval", explain=2)
    source = (tmp_path / "eval" / "explanations.html").read_text(encoding="utf-8")
    errors = source.split("Correct predictions")[0]
    assert errors.count('class="item"') == 2 and errors.count("(predicted)") == 2 and errors.count("(given)") == 2
    assert page.shaded("a <b>", [{"word": "b", "start": 3, "end": 4, "score": 1.0}]).startswith("a &lt;<span")


def test_explain_needs_an_output_folder(tiny_artifact: Path, tmp_path: Path) -> None:
    write_csv(tmp_path / "data" / "data.csv", make_rows(10))
    done = forkserver.run([sys.executable, "-m", "textfit", "evaluate", "--model", str(tiny_artifact), "--data",
                           str(tmp_path / "data"), "--explain", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--output" in done.stderr and "Traceback" not in done.stderr
