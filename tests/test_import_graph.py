"""The library's import graph has no loops, counting imports inside functions too (a lazy import is still a
dependency: it only moves the failure from import time to call time), and the layers stay in order."""

from __future__ import annotations

import ast
from pathlib import Path

import livo

PACKAGE_ROOT = Path(livo.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = ("livo",) + path.relative_to(PACKAGE_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the livo modules it imports anywhere in its body (importing a.b.c also runs a.b's __init__)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if not target.startswith("livo"):
                    continue
                resolved = _resolve(target, modules)
                if resolved is None:
                    continue
                graph[name].add(resolved)
                parent = resolved.rpartition(".")[0]
                while parent:  # the parent packages' __init__ run first
                    graph[name].add(parent)
                    parent = parent.rpartition(".")[0]
    for name, edges in graph.items():
        edges.discard(name)
        edges.discard("livo")  # livo/__init__ is the public façade; it imports lazily by name, never at module level
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for succ in graph[todo.pop()]:
            if succ not in seen:
                seen.add(succ)
                todo.append(succ)
    return seen


def test_the_import_graph_has_no_loops() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_object_store_is_below_every_stage() -> None:
    graph = import_graph()
    below = _reachable(graph, "livo.store")
    for stage in ("livo.registry", "livo.data", "livo.training", "livo.evaluation", "livo.commands"):
        assert not {m for m in below if m == stage or m.startswith(stage + ".")}, (stage, sorted(below))
    users = {m for m, edges in graph.items() if "livo.store" in edges}
    for stage in ("livo.data.dataset", "livo.training.checkpoint", "livo.evaluation.report", "livo.registry.lineage"):
        assert stage in users


def test_presets_and_the_toy_world_do_not_import_each_other() -> None:
    graph = import_graph()
    assert "livo.presets" not in _reachable(graph, "livo.toy.base_model")
    assert "livo.tokenization" in graph["livo.toy.base_model"] and "livo.tokenization" in graph["livo.presets"]


def test_lineage_does_not_import_registration() -> None:
    graph = import_graph()
    assert "livo.registry.registration" not in _reachable(graph, "livo.registry.lineage")
