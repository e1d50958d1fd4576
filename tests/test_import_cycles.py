"""No import circles among the app/ and pylib/ modules, counting imports in functions and TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "pylib")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (Alembic's migrations are scripts)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _ours(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours an imported name lands in (a name imported from a module: that module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(known: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Module -> {module of ours it imports: first line}, from every import statement anywhere in the file.

    Imports inside functions and under TYPE_CHECKING count: one that only dodges a circle at run time
    still ties the two modules together.
    """
    graph: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package[: len(package) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                # `from app import db` imports the module app.db; `from app.db import engine` imports app.db.
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                module = _ours(target, known)
                if module is not None and module != name:
                    edges.setdefault(module, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return groups


def test_the_scan_sees_the_packages_and_their_imports() -> None:
    known = modules()
    graph = imports(known)
    assert {"app.settings", "app.onepassword", "app.protocols", "pylib.wire"} <= set(known)
    # Function-level and relative imports are seen (the lazy 1Password import, a package's own modules).
    assert "app.onepassword" in graph["app.settings"]
    assert "app.protocols.g1" in graph["app.protocols"]
    assert "pylib.wire" in graph["app.protocols.g1"]


def test_cycles_finds_a_circle_through_three_modules() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_of_app_or_pylib_imports_itself_back() -> None:
    graph = imports(modules())
    found = [
        " / ".join(f"{a} -> {b} (line {graph[a][b]})" for a in group for b in group if b in graph[a])
        for group in cycles(graph)
    ]
    assert found == []
