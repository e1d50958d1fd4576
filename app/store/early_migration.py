"""Start the database migration child before the hub's heavy imports, so the two overlap at start-up.

A SQLite file that does not exist yet is instead made from app/store/schema_head.sql, the schema the
migrations produce, so a first start runs no migration at all.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from app.core.settings import sqlite_file
from app.store.schema_head import HEAD_REVISION

URL_VARIABLE = "EVENT_PROCESSOR_MIGRATE_URL"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# The database the migrations leave at HEAD_REVISION, as sqlite3's iterdump() writes it;
# `python -m app.store.schema_snapshot` writes it again after a migration is added.
SNAPSHOT = Path(__file__).with_name("schema_head.sql")
_REVISION_ROW = re.compile(r"""^INSERT INTO "alembic_version" VALUES\('([^']+)'\);$""", re.MULTILINE)


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


def snapshot_revision(script: str) -> str | None:
    """The revision a schema snapshot stamps (its alembic_version row), or None."""
    rows = _REVISION_ROW.findall(script)
    return rows[0] if len(rows) == 1 else None


def create_from_snapshot(path: str) -> bool:
    """Make the SQLite file `path`, which must not exist, at HEAD_REVISION; False when it cannot.

    Running the migrations costs a child process about a second of CPU (SQLAlchemy, Alembic and every
    revision), which on a first start competes with the hub's own imports on a Pi's few cores; the
    snapshot is one sqlite3 script. It is used only when it stamps HEAD_REVISION (a migration added
    without a new snapshot falls back to the child), and the file is built aside and linked into
    place, so a crash or a concurrent start never leaves a half-made database under the real name.
    """
    try:
        script = SNAPSHOT.read_text(encoding="utf-8")
    except OSError:
        return False
    if snapshot_revision(script) != HEAD_REVISION:
        return False
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.new")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(temp)
        try:
            conn.executescript(script)
        finally:
            conn.close()
        os.link(temp, target)  # fails if the file appeared meanwhile: that one is kept and checked
    except (OSError, sqlite3.Error):
        return False
    finally:
        temp.unlink(missing_ok=True)
    return True


def child_env(url: str) -> dict[str, str]:
    # The URL travels in the environment, not on the command line, where `ps` would show a password;
    # the child must import this very package, wherever the hub was started from.
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, URL_VARIABLE: url, "PYTHONPATH": path}


def start(url: str) -> subprocess.Popen[str] | None:
    """Start `python -m app.store.db` for url unless a SQLite file is already current (or in memory).

    A SQLite file that does not exist yet is made from the snapshot instead, with no child.
    """
    path = sqlite_file(url)
    if path is not None:
        if path == ":memory:":
            return None
        if not Path(path).exists() and create_from_snapshot(path):
            return None
        if sqlite_at_head(path):
            return None
    elif url.startswith("sqlite"):  # in memory, or a form this check does not read
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "app.store.db"],
        env=child_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
