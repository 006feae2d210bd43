"""The import graph of lamm_cl: no module imports one that imports it back, lazily or not.

Built from the source with ``ast`` (nothing is imported): every explicit import statement of
every module under ``lamm_cl/`` and ``strategies/`` (installed as ``lamm_cl.strategies``),
module-level or inside a function, ``TYPE_CHECKING`` blocks included. ``from pkg import name``
counts as importing the submodule ``pkg.name`` when there is one, else ``pkg``. A package's
implicit import of its parent ``__init__`` does not count.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"lamm_cl": ROOT / "lamm_cl", "lamm_cl.strategies": ROOT / "strategies"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of lamm_cl and the built-in strategies."""
    mods: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([prefix, *parts])] = f
    return mods


MODULES = _modules()


def _package(name: str) -> str:
    """The package a module's relative imports start from."""
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _targets(name: str, node: ast.AST) -> list[str]:
    """The lamm_cl modules one import statement of module ``name`` imports."""
    found: list[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            mod = alias.name
            while mod and mod not in MODULES:  # `import lamm_cl.x.attr`-style names: the longest module prefix
                mod = mod.rpartition(".")[0]
            if mod:
                found.append(mod)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = _package(name)
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = ".".join(p for p in (base, node.module) if p)
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:
                found.append(sub)
            elif base in MODULES:
                found.append(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the lamm_cl modules it imports explicitly (self-imports left out); a fresh copy per call."""
    return {name: set(targets) for name, targets in _parsed_graph().items()}


@functools.lru_cache(maxsize=1)
def _parsed_graph() -> dict[str, set[str]]:  # every module parsed once per session, not once per test
    graph: dict[str, set[str]] = {}
    for name, f in MODULES.items():
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        graph[name] = {t for node in ast.walk(tree) for t in _targets(name, node) if t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) through each strongly connected group of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # a shortest path back to the group's first module
        members, start = set(group), group[0]
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        cycle = [*paths[v], start]
                        break
                    if w not in paths:
                        paths[w] = [*paths[v], w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def test_graph_sees_function_level_and_from_imports():
    # the parser itself: a known lazy import and a known `from pkg import submodule`
    graph = import_graph()
    assert "lamm_cl.config" in graph["lamm_cl.sweep.spec"]  # module-level `from lamm_cl.config import ...`
    assert "lamm_cl.sweep.job" in graph["lamm_cl.sweep.launchers"]  # function-level `from lamm_cl.sweep import job`
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _strategy_imports() -> list[str]:
    graph = import_graph()
    strategies = {m for m in MODULES if m.startswith("lamm_cl.strategies.")}
    return [f"{m} imports {t}" for m in sorted(strategies) for t in sorted(graph[m] & strategies)]


def test_no_strategy_imports_another():
    # what strategies share lives in the library (lamm_cl.strategy_kit), so each file stands alone
    found = _strategy_imports()
    assert not found, "\n".join(found)
