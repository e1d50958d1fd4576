"""Private files: a 077 umask at start-up, and the data directory, database and backups made private."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from app.core.settings import Settings

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
# SQLite's companions of the database file, each holding database pages.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
# Local copies that hold the whole database: restore's set-aside copies and their WALs.
BACKUP_GLOBS = ("{name}.before-restore-*",)


def private_umask() -> None:
    """Every file and directory this process creates from now on is its user's alone."""
    os.umask(PRIVATE_UMASK)


def _fix(path: Path, mode: int) -> bool:
    """Set `mode` on a path this user owns when it differs; True when it was changed."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) == mode:
        return False
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid() and os.geteuid() != 0:
        log.warning(
            "%s has mode %o and belongs to another user: not changed", path, stat.S_IMODE(info.st_mode)
        )
        return False
    os.chmod(path, mode)
    log.warning("%s had mode %o, readable by others; set to %o", path, stat.S_IMODE(info.st_mode), mode)
    return True


def database_files(db: Path) -> list[Path]:
    """The database, its WAL/SHM/journal, and local backup copies beside it."""
    files = [db, *(db.with_name(db.name + suffix) for suffix in SIDE_SUFFIXES)]
    for pattern in BACKUP_GLOBS:
        files += sorted(db.parent.glob(pattern.format(name=db.name)))
    return files


def secure_data(settings: Settings) -> list[Path]:
    """Make the SQLite data directory 0700 and the database, its side files and backups 0600;
    returns what changed. A no-op for another database (PostgreSQL keeps its own files)."""
    db_file = settings.sqlite_path
    if not db_file or db_file == ":memory:" or db_file.startswith("file:"):
        return []
    db = Path(db_file)
    folder = db.parent.resolve()
    changed: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    if folder in (Path.cwd().resolve(), Path.home().resolve(), Path("/")):
        # A database in the working or home directory: that folder is not ours to close.
        log.info("database folder %s is a shared folder: its mode is left alone", folder)
    elif _fix(folder, DIR_MODE):
        changed.append(folder)
    status = Path(settings.backup_status_path)
    for path in (*database_files(db), status):
        if path.exists() and _fix(path, FILE_MODE):
            changed.append(path)
    return changed
