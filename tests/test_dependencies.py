"""Every third-party module our code imports is declared in pyproject.toml, not borrowed from another's."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"app", "pylib", "tests", "bench"}
# Imported only where it happens to be installed: sentry-sdk compresses with br only when brotli is
# present, and the recording server in test_observability.py then needs it to read the body.
INSTALLED_OR_UNUSED = {"brotli"}
# Typeshed's own stub-only module: imported under TYPE_CHECKING for the type checker, it is part of
# every type checker's standard library stubs and never loaded at run time.
TYPE_CHECKER_STDLIB = {"_typeshed"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_normal(re.match(r"[A-Za-z0-9_.-]+", r).group()) for r in requirements}


def third_party_imports(*folders: str) -> dict[str, set[str]]:
    """Top-level module name -> the files importing it, for every absolute import anywhere in the files."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in OURS | TYPE_CHECKER_STDLIB | {
                        "__future__"
                    }:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def undeclared(folders: tuple[str, ...], declared: set[str]) -> dict[str, list[str]]:
    """Modules whose distribution is not among `declared`: module -> its distributions and a file."""
    owners = packages_distributions()
    missing: dict[str, list[str]] = {}
    for module, files in third_party_imports(*folders).items():
        if module in INSTALLED_OR_UNUSED:
            continue
        distributions = {_normal(d) for d in owners.get(module, [])}
        if not distributions & declared:
            missing[module] = [*sorted(distributions), min(files)]
    return missing


def test_runtime_code_imports_only_declared_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert undeclared(("app", "pylib"), _declared(project["dependencies"])) == {}


def test_tests_and_bench_import_only_declared_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"]) | _declared(project["optional-dependencies"]["dev"])
    assert undeclared(("tests", "bench"), declared) == {}


def test_the_scan_finds_a_dependency_that_arrives_only_through_another() -> None:
    # httpx comes with python-telegram-bot too; without its own line it would be reported.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"]) - {"httpx"}
    assert undeclared(("app",), declared) == {"httpx": ["httpx", "app/core/onepassword.py"]}
