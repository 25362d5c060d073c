"""Every `textfit` command in the README parses, and the README's Python API example runs."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from textfit.cli import build_parser

README = Path(__file__).parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#", 1)[0].strip()
            if command.startswith("textfit "):
                commands.append(command)
    return commands


def test_the_readme_shows_commands() -> None:
    names = {shlex.split(c)[1] for c in readme_commands()}
    assert {"train", "predict", "serve", "export", "tune", "models"} <= names


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command: str) -> None:
    build_parser().parse_args(shlex.split(command)[1:])


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text(encoding="utf-8")
    example = re.search(r"## Python API\n\n.*?```python\n(.*?)```", text, flags=re.S)
    assert example is not None
    root = README.parent
    monkeypatch.chdir(tmp_path)
    # the example's own channel (labels_info.json included): 200 rows a class, the fine-tuning recipe, as a
    # user running the example gets (fewer rows would take the small-data recipe)
    shutil.copytree(root / "examples" / "reviews", tmp_path / "examples" / "reviews")
    namespace: dict[str, object] = {}
    exec(compile(example.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "model" / "onnx" / "model.onnx").is_file() and (tmp_path / "model" / "README.md").is_file()
    assert (tmp_path / "runs" / "api-model" / "textfit.json").is_file()
    assert namespace["clf"].classes_ == ["negative", "positive"]  # as the example's comments show
