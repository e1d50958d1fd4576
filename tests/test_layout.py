"""The layout holds: app/ modules sit in role folders, imports point down the flow, no import circles.

Read over the source with ast (nothing is imported), so a violation names its file and line. Every
import statement counts, at module level, inside functions and under TYPE_CHECKING: an import that
only dodges a circle at run time still ties the two modules together. docs/architecture.md
explains the folders; ALLOWED below is the authority on who may import whom.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "pylib")

# Folder -> the folders it may import (besides itself and pylib). Lowest first, in the order a device
# message flows: sources hand it to the engine, the engine decides and hands triggers to the outputs.
# Sources and outputs never import each other: they meet the engine on the inproc channels declared
# in core. The store imports nothing above core.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "store": {"core"},
    "protocols": {"core"},
    "engine": {"core", "store", "protocols"},
    "sources": {"core", "store", "protocols", "engine"},
    # The bot (outputs/telegram) also answers questions about the hub's upkeep: backups, public address.
    "outputs": {"core", "store", "protocols", "engine", "ops"},
    "ops": {"core", "store", "protocols", "engine"},
    "web": {"core", "store", "protocols", "engine", "ops"},
}
# app/'s top: the package, the process (python -m app) and the Hub that starts every thread.
TOP = {"app", "app.__main__", "app.hub"}

Graph = dict[str, dict[str, int]]  # module -> {module of ours it imports: first line}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (Alembic's migrations are scripts)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
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


def imports(known: dict[str, Path]) -> Graph:
    """Module -> {module of ours it imports: first line}, from every import statement anywhere in the file."""
    graph: Graph = {}
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
                # `from app import web` imports the module app.web; `from app.hub import Hub` imports app.hub.
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                module = _ours(target, known)
                if module is not None and module != name:
                    edges.setdefault(module, node.lineno)
        graph[name] = edges
    return graph


def folder(module: str) -> str | None:
    """The role folder of an app module (app.engine.processor -> engine); None for pylib and the top."""
    parts = module.split(".")
    return parts[1] if parts[0] == "app" and module not in TOP else None


def wrong_direction(graph: Graph) -> list[str]:
    """Each import that does not point down the flow, as 'importer -> imported (line n): why'."""
    wrong = []
    for source, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            where = f"{source} -> {target} (line {line})"
            if source.startswith("pylib") and target.startswith("app"):
                wrong.append(f"{where}: pylib knows nothing of app")
            elif target in TOP and source not in TOP:
                wrong.append(f"{where}: nothing imports the top of app")
            else:
                src, dst = folder(source), folder(target)
                if src and dst and src != dst and dst not in ALLOWED.get(src, set()):
                    wrong.append(f"{where}: {src} may import only {sorted(ALLOWED.get(src, ())) or 'pylib'}")
    return wrong


def cycles(graph: Graph) -> list[list[str]]:
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


KNOWN = modules()
GRAPH = imports(KNOWN)


def test_the_scan_sees_the_packages_and_their_imports() -> None:
    assert {"app.hub", "app.core.settings", "app.engine.processor", "pylib.wire"} <= set(KNOWN)
    # Function-level and relative imports are seen (the lazy 1Password import, a package's own modules).
    assert "app.core.onepassword" in GRAPH["app.core.settings_sources"]
    assert "app.protocols.g1" in GRAPH["app.protocols"]
    assert "pylib.wire" in GRAPH["app.protocols.g1"]
    assert "app.core.channels" in GRAPH["app.sources.heartbeat"]


def test_every_app_module_sits_in_a_role_folder() -> None:
    stray = [m for m in KNOWN if m.startswith("app.") and m not in TOP and folder(m) not in ALLOWED]
    assert stray == [], f"modules outside the role folders {sorted(ALLOWED)}"
    assert {f"app.{name}" for name in ALLOWED} <= set(KNOWN), "each role folder is a package"


def test_imports_point_down_the_flow() -> None:
    assert wrong_direction(GRAPH) == []


def test_no_module_of_app_or_pylib_imports_itself_back() -> None:
    found = [
        " / ".join(f"{a} -> {b} (line {GRAPH[a][b]})" for a in group for b in group if b in GRAPH[a])
        for group in cycles(GRAPH)
    ]
    assert found == []


def test_tests_mirror_the_folders() -> None:
    """A test folder is named after what it tests: a folder of app/ (or pylib), with an __init__.py."""
    wrong = []
    for test_dir in sorted({p.parent for p in (ROOT / "tests").rglob("test_*.py")} - {ROOT / "tests"}):
        rel = test_dir.relative_to(ROOT / "tests")
        mirrored = ROOT / "pylib" if rel.parts[0] == "pylib" else ROOT / "app" / rel
        if not mirrored.is_dir():
            wrong.append(f"tests/{rel.as_posix()} mirrors nothing in app/ or pylib/")
        if not (test_dir / "__init__.py").is_file():
            wrong.append(f"tests/{rel.as_posix()} has no __init__.py (tests import as tests.<folder>.<name>)")
    assert wrong == []


def test_cycles_finds_a_circle_through_three_modules() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_checks_catch_an_upward_import_and_a_lazy_circle(tmp_path: Path) -> None:
    """On a made-up tree: a store module imports the engine, which imports it back inside a function."""
    (tmp_path / "app" / "store").mkdir(parents=True)
    (tmp_path / "app" / "engine").mkdir()
    (tmp_path / "pylib").mkdir()
    (tmp_path / "app" / "store" / "db.py").write_text("from app.engine import rules\n")
    (tmp_path / "app" / "engine" / "rules.py").write_text("def f():\n    from app.store.db import x\n")
    (tmp_path / "pylib" / "wire.py").write_text("import app.engine.rules\n")
    graph = imports(modules(tmp_path))
    assert cycles(graph) == [["app.engine.rules", "app.store.db"]]
    assert wrong_direction(graph) == [
        "app.store.db -> app.engine.rules (line 1): store may import only ['core']",
        "pylib.wire -> app.engine.rules (line 1): pylib knows nothing of app",
    ]
