"""The code's shape: no import cycles between textfit's modules, and a command line that starts light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import textfit

PACKAGE = Path(textfit.__file__).parent


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(tree: ast.AST) -> set[str]:
    """The textfit modules a module imports, at its top or inside functions (type-checking blocks aside)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "textfit":
                found.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").is_file())
            elif node.module.startswith("textfit."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("textfit."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return {name: _imports(ast.parse(path.read_text())) - {name} for name, path in modules.items()}


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


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 20 and graph["classifier"] >= {"architectures", "training", "inference"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_cli_or_the_server() -> None:
    graph = import_graph()
    assert [m for m, deps in graph.items() if "cli" in deps] == []
    assert sorted(m for m, deps in graph.items() if "server" in deps) == ["cli"]


def test_listing_models_and_help_do_not_import_torch() -> None:
    code = ("import io, sys, contextlib\nfrom textfit.cli import build_parser, main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    main(['models', 'list'])\n"
            "    build_parser().format_help()\n"
            "assert 'tensorflow-tc-bert-en-uncased-L-12-H-768-A-12-2' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'starlette', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
