"""Start the database migration child before the hub's heavy imports, so the two overlap at start-up."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from app.schema_head import HEAD_REVISION
from app.settings import sqlite_file

URL_VARIABLE = "EVENT_PROCESSOR_MIGRATE_URL"
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def sqlite_at_head(path: str) -> bool:
    """True when the SQLite file already carries the newest revision (read with the stdlib only)."""
    if not Path(path).is_file():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return False
    return rows == [(HEAD_REVISION,)]


def child_env(url: str) -> dict[str, str]:
    # The URL travels in the environment, not on the command line, where `ps` would show a password;
    # the child must import this very package, wherever the hub was started from.
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, URL_VARIABLE: url, "PYTHONPATH": path}


def start(url: str) -> subprocess.Popen[str] | None:
    """Start `python -m app.db` for url unless a SQLite file is already current (or in memory)."""
    path = sqlite_file(url)
    if path is not None:
        if path == ":memory:" or sqlite_at_head(path):
            return None
    elif url.startswith("sqlite"):  # in memory, or a form this check does not read
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "app.db"],
        env=child_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
