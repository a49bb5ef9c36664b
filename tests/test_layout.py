"""The import graph of `nmt` reads top-down: no cycles, lazy (function-level) imports included."""

import ast
from pathlib import Path

import nmt

PACKAGE = Path(nmt.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every nmt module `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}
    # A package's __init__ runs before its modules: importing nmt.x imports nmt.
    return {name: deps - {"nmt"} for name, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert {"nmt.rundir", "nmt.training", "nmt.translator", "nmt.corpus"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_lower_layers_stay_low():
    graph = import_graph()
    # Data never imports the model; training never imports the Translator; the run-directory
    # and text I/O modules import no other nmt module but config/errors.
    assert "nmt.model" not in graph["nmt.pipeline"] | graph["nmt.corpus"]
    assert "nmt.translator" not in graph["nmt.training"] | graph["nmt.checkpointing"]
    assert graph["nmt.rundir"] <= {"nmt.config", "nmt.errors"}
    assert graph["nmt.textio"] <= {"nmt.errors"}
