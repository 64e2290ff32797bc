"""The engine's modules import each other without cycles and never import the window's toolkit. Imports are read
from the source (ast), at module level and inside functions alike: a function-level import that closes a cycle is
still a cycle, only deferred."""
from __future__ import annotations

import ast
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1] / "trainer"
UI_PACKAGES = ("tkinter", "_tkinter", "customtkinter", "app")


def module_name(path: Path, root: Path = TRAINER.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path = TRAINER.parent) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file under root, relative ones resolved; `from a import
    b` gives a.b as well as a, so that importing a submodule by name counts."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def trainer_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(TRAINER.rglob("*.py"))}


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {trainer module it imports: line of the first such import}."""
    modules = trainer_modules()
    graph = {}
    for name, path in modules.items():
        edges = {}
        for target, line in imported_names(path):
            if target in modules and target != name and target != "trainer":
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_find_cycle_names_a_cycle_and_accepts_a_tree():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert describe(["a", "b", "c", "a"], graph) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    assert find_cycle({"a": {"b": 1, "c": 2}, "b": {"c": 3}, "c": {}}) == []


def test_imported_names_reads_every_form_of_import_at_any_depth(tmp_path):
    package = tmp_path / "trainer"
    package.mkdir()
    (package / "x.py").write_text("import trainer.a\nfrom trainer import b\n\ndef f():\n    from trainer.c import d\n"
                                  "    from . import e\n")
    names = {name for name, _ in imported_names(package / "x.py", tmp_path)}
    assert {"trainer.a", "trainer.b", "trainer.c", "trainer.e"} <= names


def test_trainer_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert {"trainer.train.loop", "trainer.data.data", "trainer.data.cache", "trainer.errors"} <= set(graph)
    cycle = find_cycle(graph)
    assert not cycle, f"import cycle: {describe(cycle, graph)}"


def test_trainer_never_imports_the_window_toolkit():
    """Also inside functions, which an import of every module (tests/gui/test_imports.py) does not run."""
    found = [f"{path.name}:{line}: {name}" for path in trainer_modules().values()
             for name, line in imported_names(path) if name.split(".")[0] in UI_PACKAGES]
    assert found == []
