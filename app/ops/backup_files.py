"""The backup tool's local side: its errors, SQLite snapshots and checks, and its temporary files."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from app.store import schema_head

# the backup tool logs as one logger, whichever of its modules speaks
log = logging.getLogger("app.ops.backup")


class BackupError(Exception):
    """A command failed; the message is the one line the operator sees."""


class BadSettings(BackupError):
    """Settings that make the command impossible (exit 2)."""


class NoBackup(BackupError):
    """The object to restore does not exist (yet)."""


# Left behind only by a killed run; older than this they cannot belong to a live one.
STALE_TEMP_SECONDS = 6 * 3600
TEMP_SUFFIX = ".backup-tmp"
VERIFY_PREFIX = ".backup-verify-"
CHUNK = 1024 * 1024
# Every database the hub made has these; a file without them is some other SQLite database.
REQUIRED_TABLES = ("input_config", "output_config")
MIGRATIONS = Path(__file__).resolve().parents[1] / "store" / "migrations" / "versions"
_REVISION_LINE = re.compile(r"""^revision(?:\s*:\s*str)?\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def known_revisions() -> frozenset[str]:
    """Every schema revision this code can open (its migrations), read without importing Alembic."""
    found = set()
    for script in MIGRATIONS.glob("*.py"):
        match = _REVISION_LINE.search(script.read_text(encoding="utf-8"))
        if match:
            found.add(match.group(1))
    return frozenset(found | {schema_head.HEAD_REVISION})


@dataclass(frozen=True)
class DbCheck:
    """What a database file passed: integrity_check ok, its revision, hash, size and row counts."""

    revision: str | None
    sha256: str
    size: int
    rows: dict[str, int] = field(default_factory=dict)


def _uri(path: str | Path, mode: str) -> str:
    # mode=rw never creates a missing file, so a typo in a path cannot leave an empty database behind
    return f"file:{quote(str(Path(path).resolve()))}?mode={mode}"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(source: str | Path, dest: str | Path, timeout: float) -> None:
    """A consistent copy of a live database with the SQLite backup API.

    One step copies every page inside a single read transaction, so the copy is one moment of the
    database while the hub keeps writing (WAL lets the writer go on). The copy is switched to a
    rollback journal so it is one self-contained file.
    """
    # timeout is SQLite's busy timeout: a checkpoint holding a lock briefly makes this wait, not fail
    src = sqlite3.connect(_uri(source, "rw"), uri=True, timeout=timeout)
    try:
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def check_db(path: str | Path, count_rows: bool = False) -> DbCheck:
    """integrity_check, the hub's tables and the schema revision; raises BackupError on any failure."""
    try:
        conn = sqlite3.connect(_uri(path, "rw"), uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open it as SQLite: {exc}") from None
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            report = " / ".join(" ".join(str(p).split()) for p in problems[:3])
            raise BackupError(f"integrity_check failed: {report[:300]}")
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master"
                " WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            raise BackupError(f"not an event-processor database (no {', '.join(missing)} table)")
        revision = None
        if "alembic_version" in tables:
            versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
            revision = versions[0] if len(versions) == 1 else None
        rows = {}
        if count_rows:
            for table in tables:
                quoted = '"' + table.replace('"', '""') + '"'
                rows[table] = int(conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])
    except sqlite3.Error as exc:
        raise BackupError(f"not a usable SQLite database: {exc}") from None
    finally:
        conn.close()
    return DbCheck(revision, sha256_of(path), Path(path).stat().st_size, rows)


def heartbeat_age(path: str | Path, now: float) -> float | None:
    """Seconds since the hub last wrote its heartbeat row, or None when there is none to read."""
    try:
        # rw, not ro: a stopped hub's WAL-mode file without its -shm cannot be opened read-only
        conn = sqlite3.connect(_uri(path, "rw"), uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT ts FROM heartbeat WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        # a corrupt file is the usual reason to restore: say so, and let the restore go ahead
        log.warning("could not read the heartbeat row of %s (%s); assuming the hub is stopped", path, exc)
        return None
    finally:
        conn.close()
    return None if row is None or row[0] is None else now - float(row[0])


def temp_file(folder: Path, stem: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=TEMP_SUFFIX, dir=folder)
    os.close(handle)
    return Path(name)


def remove_stale_temps(folder: Path) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in [*folder.glob(f".*{TEMP_SUFFIX}"), *folder.glob(f"{VERIFY_PREFIX}*")]:
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
