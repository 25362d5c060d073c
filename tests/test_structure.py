"""The code's shape: the package reads as the pipeline, in layers, with no import cycles, and a command line that
starts light.

Layers, from the ground up: errors and hyperparameters; core (file shapes, ownership, the environment); data
(channels, encoding); model (architectures, pretrained checkpoints, the zoo and store, the artifact, ONNX);
reports (metrics, plots, the model card); training (the loop, recipes, kernels, optimizers, checkpoints,
distributed); the loaded model's predictions (predictor); the estimator (classifier); serving; jobs (train, tune, evaluate, predict, SageMaker, remote);
the CLI. A module may import its own layer and those below, never one above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import textfit

PACKAGE = Path(textfit.__file__).parent
LAYERS = (("errors",), ("hyperparameters",), ("core",), ("data",), ("model",), ("reports",), ("training",),
          ("explain",), ("predictor",), ("classifier",), ("serving",), ("jobs",), ("cli", "__main__", "spark", "ray"))
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _name(path: Path) -> str:
    """textfit.data.channels for src/textfit/data/channels.py."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The textfit modules a module imports, at its top or inside functions (type-checking blocks aside)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("textfit"):
            for alias in node.names:  # `from textfit.data import channels` imports the module textfit.data.channels
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("textfit."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found - {"textfit"}


def import_graph() -> dict[str, set[str]]:
    paths = {_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(ast.parse(path.read_text()), modules) - {name} for name, path in paths.items()
            if name != "textfit"}  # the package's face loads its public names lazily, from above every layer


def layer(module: str) -> int:
    """The layer of textfit.X or textfit.X.Y: X's."""
    return RANK[module.split(".")[1]]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer() -> None:
    graph = import_graph()
    assert len(graph) > 35
    assert sorted({m.split(".")[1] for m in graph} - set(RANK)) == []
    assert "textfit.training.loop" in graph["textfit.classifier"]  # the graph sees `from pkg import module`


def test_nothing_below_imports_anything_above() -> None:
    upward = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_the_layer_check_catches_an_upward_import() -> None:
    tree = ast.parse("from textfit.serving import server\nfrom textfit.data.channels import read_channel\n")
    found = _imports(tree, {"textfit.serving.server", "textfit.data.channels"})
    assert found == {"textfit.serving.server", "textfit.data.channels"}
    assert [d for d in found if layer(d) > RANK["model"]] == ["textfit.serving.server"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_cli_or_the_server() -> None:
    graph = import_graph()
    assert [m for m, deps in graph.items() if "textfit.cli" in deps] == ["textfit.__main__"]
    assert sorted(m for m, deps in graph.items() if "textfit.serving.server" in deps) == ["textfit.cli"]


def test_the_old_module_names_still_import_the_new_modules_with_a_warning() -> None:
    code = ("import warnings\nwarnings.simplefilter('error')\nimport textfit.data.channels as new\n"
            "try:\n    import textfit.channels\nexcept DeprecationWarning as w:\n    print(w)\n"
            "warnings.simplefilter('ignore')\nfrom textfit.channels import read_channel\n"
            "import textfit.checkpoint as old\nimport textfit.model.pretrained as pretrained\n"
            "print(read_channel is new.read_channel, old is pretrained)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "textfit.channels is now textfit.data.channels; the old name goes in the next release", "True True"]
    for old, new in textfit.MOVED.items():
        assert (PACKAGE / f"{new.replace('.', '/')}.py").is_file(), new
        assert not (PACKAGE / f"{old}.py").exists(), old


def test_listing_models_and_help_do_not_import_torch() -> None:
    code = ("import io, sys, contextlib\nfrom textfit.cli import build_parser, main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    main(['models', 'list'])\n"
            "    build_parser().format_help()\n"
            "assert 'tensorflow-tc-bert-en-uncased-L-12-H-768-A-12-2' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'starlette', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
