"""The layering DESIGN.md promises: no import cycles between crescendo's packages or modules."""

from __future__ import annotations

import ast
from pathlib import Path

import crescendo

SRC = Path(crescendo.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every crescendo module `path` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            if c.startswith("crescendo"):
                found.add(c)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _unit(module: str) -> str:
    """The package a module belongs to (crescendo.engine.stats -> crescendo.engine); top-level
    modules are their own unit."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_cycle_between_packages():
    graph = _graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        unit = _unit(module)
        if unit == "crescendo":
            continue  # the top-level __init__ re-exports the entry points lazily
        packages.setdefault(unit, set()).update(_unit(t) for t in targets if _unit(t) not in (unit, "crescendo"))
    assert _cycle(packages) is None, " -> ".join(_cycle(packages) or [])


def test_no_cycle_between_modules():
    graph = {m: {t for t in ts if t != "crescendo"} for m, ts in _graph().items() if m != "crescendo"}
    # a package's __init__ re-exports its children; a child importing a sibling through the package
    # is an edge to the sibling, not a cycle through __init__
    inits = {m for m in graph if (SRC.parent / m.replace(".", "/") / "__init__.py").exists()}
    graph = {m: ts - inits for m, ts in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
