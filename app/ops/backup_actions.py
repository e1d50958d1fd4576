"""The backup tool's actions: back up, restore and verify, one at a time under a lock."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core import file_modes
from app.core.settings import Settings
from app.ops import backup_crypto
from app.ops.backup_files import (
    CHUNK,
    VERIFY_PREFIX,
    BackupError,
    BadSettings,
    DbCheck,
    check_db,
    heartbeat_age,
    known_revisions,
    remove_stale_temps,
    snapshot,
    temp_file,
)
from app.ops.backup_s3 import (
    apply_retention,
    dated_key,
    download,
    is_s3_error,
    latest_key,
    s3_client,
    s3_problem,
)
from app.ops.backup_status import (
    fsync_dir,
    iso,
    like_folder,
    utc_now,
)
from app.store import schema_head

# the backup tool logs as one logger, whichever of its modules speaks
log = logging.getLogger("app.ops.backup")
# Any here: the result documents written to the status file and returned as JSON.


PG_MESSAGE = (
    "DATABASE_URL is not SQLite: this tool backs up the SQLite file only; "
    "back PostgreSQL up with pg_dump (see the README, Backups)"
)
# A command waits this long for another one (a slow upload, the nightly drill) before giving up.
LOCK_WAIT_SECONDS = 300.0
# The hub rewrites the heartbeat row every HEARTBEAT_ROW_SECONDS; a row younger than this many
# intervals means it is running.
HEARTBEAT_FACTOR = 3


def make_result(
    ok: bool, key: str | None = None, size: int | None = None, error: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"time": iso(utc_now()), "ok": ok, "key": key, "bytes": size, "error": error, **extra}


@contextlib.contextmanager
def command_lock(settings: Settings, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """One backup, restore or verify at a time (scheduled, manual and drill runs can overlap)."""
    path = Path(settings.backup_status_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    # read-only is enough for flock, and works when root created the file at container start
    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        like_folder(lock_path)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackupError(
                        f"another backup, restore or verify held {lock_path} for {wait:g} s; gave up"
                    ) from None
                time.sleep(0.2)  # a lock held by another run, not a failure: a short steady poll
        yield
    finally:
        os.close(fd)  # closing releases the lock


def database_path(settings: Settings) -> Path:
    path = settings.sqlite_path
    if path is None:
        raise BadSettings(PG_MESSAGE)
    if path == ":memory:" or path.startswith("file:"):
        raise BadSettings(f"TABLESPACE_PATH/DATABASE_URL must name a SQLite file, not {path!r}")
    return Path(path)


def backup(settings: Settings, kind: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Snapshot, check, gzip and upload the database; then apply retention. Returns the result."""
    moment = now or utc_now()
    db = database_path(settings)
    bucket, key = settings.backup_s3_bucket, latest_key(settings)
    if not db.is_file() or db.stat().st_size == 0:
        raise BackupError(f"database {db} is missing or empty: nothing to back up")
    remove_stale_temps(db.parent)
    raw, packed = temp_file(db.parent, db.name), temp_file(db.parent, db.name + ".gz")
    sealed = temp_file(db.parent, db.name + ".enc")
    try:
        try:
            snapshot(db, raw, settings.db_timeout)
        except sqlite3.Error as exc:
            raise BackupError(
                f"could not snapshot {db}: {exc}; the backup in S3 was left as it was"
            ) from None
        try:
            checked = check_db(raw)
        except BackupError as exc:
            # the point of checking: a corrupt database must never replace the last good backup
            raise BackupError(
                f"snapshot of {db} refused: {exc}; the backup in S3 was left as it was"
            ) from None
        with (
            open(raw, "rb") as src,
            open(packed, "wb") as out,
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as zipped,
        ):
            shutil.copyfileobj(src, zipped, CHUNK)
        upload, content_type = packed, "application/gzip"
        if settings.backup_encryption_key:
            # Encrypted here, before it leaves: S3 (or whoever reads the bucket) sees only ciphertext.
            with open(packed, "rb") as src, open(sealed, "wb") as out:
                backup_crypto.encrypt_file(settings.backup_encryption_key, src, out)
            upload, content_type = sealed, "application/octet-stream"
        size = upload.stat().st_size
        metadata = {
            "sha256": checked.sha256,
            "schema-revision": checked.revision or "none",
            "db-bytes": str(checked.size),
            "created": iso(moment),
            "encryption": "fernet-chunked-1" if upload == sealed else "none",
        }
        from boto3.s3.transfer import TransferConfig

        s3 = s3_client(settings)
        # one thread: a Pi's upload is bound by its link, and fewer threads keep the job's memory low
        s3.upload_file(
            str(upload),
            bucket,
            key,
            ExtraArgs={"Metadata": metadata, "ContentType": content_type},
            Config=TransferConfig(use_threads=False),
        )
        dated = None
        if kind:
            dated = dated_key(settings, kind, moment)
            s3.copy_object(Bucket=bucket, Key=dated, CopySource={"Bucket": bucket, "Key": key})
    finally:
        for temp in (raw, packed, sealed):
            with contextlib.suppress(OSError):
                temp.unlink()
    result = make_result(True, key, size, dated_key=dated, sha256=checked.sha256, revision=checked.revision)
    try:
        result["deleted"] = apply_retention(settings, s3, moment.date())
    except Exception as exc:
        if not is_s3_error(exc):
            raise
        # the backup itself is safe in S3; only the clean-up failed, and the next run tries again
        result["warning"] = "retention: " + s3_problem(exc, settings)
        log.warning("backup uploaded, but old dated copies were not pruned: %s", result["warning"])
    return result


def _check_download(path: Path, metadata: dict[str, str], count_rows: bool) -> tuple[DbCheck, str | None]:
    """Raise BackupError unless the downloaded file is a sound database this code can open; return
    the check and a note about an older schema."""
    try:
        checked = check_db(path, count_rows=count_rows)
    except BackupError as exc:
        raise BackupError(f"corrupt download refused: {exc}") from None
    expected = metadata.get("sha256")
    if expected and expected != checked.sha256:
        raise BackupError("corrupt download refused: its sha256 does not match the one recorded at upload")
    note = None
    head = schema_head.HEAD_REVISION
    if checked.revision is None:
        note = "the original's schema (no alembic_version): the hub migrates it at start"
    elif checked.revision not in known_revisions():
        raise BackupError(
            f"backup has schema revision {checked.revision}, newer than this code knows ({head}): "
            "update the hub first"
        )
    elif checked.revision != head:
        note = f"older schema {checked.revision} (this code is at {head}): the hub migrates it at start"
    return checked, note


def restore(
    settings: Settings, if_missing: bool = False, key: str | None = None, force: bool = False
) -> dict[str, Any] | None:
    """Replace the database with a backup; None when nothing needed doing. Raises BackupError."""
    db = database_path(settings)
    if if_missing and db.is_file() and db.stat().st_size > 0:
        log.info("database %s exists (%d bytes): nothing restored", db, db.stat().st_size)
        return None
    if not if_missing and not force and db.is_file():
        age = heartbeat_age(db, time.time())
        limit = HEARTBEAT_FACTOR * settings.heartbeat_row_seconds
        if age is not None and -limit < age < limit:
            raise BackupError(
                f"the hub looks alive (heartbeat row written {max(age, 0):.0f} s ago): stop it first, "
                "or use --force and restart it straight after"
            )
    bucket = settings.backup_s3_bucket
    key = key or latest_key(settings)
    db.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(db.parent)
    temp = temp_file(db.parent, db.name)
    try:
        metadata, size = download(s3_client(settings), bucket, key, temp, settings.backup_encryption_key)
        checked, note = _check_download(temp, metadata, count_rows=False)
        stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
        # the database is its user's alone, whatever mode the replaced file had
        os.chmod(temp, file_modes.FILE_MODE)
        kept = _set_aside(db, stamp)
        like_folder(temp)
        os.replace(temp, db)
        fsync_dir(db.parent)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
    if note:
        log.info("%s", note)
    return make_result(
        True, key, size, previous=str(kept) if kept else None, revision=checked.revision, note=note
    )


def _set_aside(db: Path, stamp: str) -> Path | None:
    """Keep the file being replaced (with its WAL) as <db>.before-restore-<stamp>; clear stale
    -wal/-shm/-journal files, which SQLite would otherwise apply to the restored file."""
    kept = None
    if db.is_file() and db.stat().st_size > 0:
        kept = db.with_name(f"{db.name}.before-restore-{stamp}")
        n = 0
        while kept.exists() or kept.with_name(kept.name + "-wal").exists():
            # two restores within a second must not overwrite the first one's copy
            n += 1
            kept = db.with_name(f"{db.name}.before-restore-{stamp}-{n}")
        try:
            os.link(db, kept)  # the old inode stays under the new name; nothing is copied
        except OSError:
            shutil.copy2(db, kept)
        os.chmod(kept, file_modes.FILE_MODE)
    for suffix in ("-wal", "-shm", "-journal"):
        side = db.with_name(db.name + suffix)
        if not side.exists():
            continue
        if kept is not None and suffix == "-wal" and side.stat().st_size > 0:
            # the WAL may hold the old file's last commits; beside the kept copy SQLite still reads them
            os.replace(side, kept.with_name(kept.name + "-wal"))
            os.chmod(kept.with_name(kept.name + "-wal"), file_modes.FILE_MODE)
        else:
            side.unlink()
    return kept


def verify(settings: Settings) -> dict[str, Any]:
    """The restore drill: download the latest backup and prove it would restore. Raises BackupError."""
    db = database_path(settings)
    key = latest_key(settings)
    folder = db.parent if db.parent.is_dir() else Path(tempfile.gettempdir())
    # beside the database rather than /tmp, which is RAM (tmpfs) in the container
    remove_stale_temps(folder)
    with tempfile.TemporaryDirectory(prefix=VERIFY_PREFIX, dir=folder) as scratch:
        temp = Path(scratch) / "restored.db"
        metadata, size = download(
            s3_client(settings), settings.backup_s3_bucket, key, temp, settings.backup_encryption_key
        )
        checked, note = _check_download(temp, metadata, count_rows=True)
        if not metadata.get("sha256"):
            # sound, but the drill cannot prove it is the file that was uploaded
            raise BackupError("the backup carries no sha256 metadata: it was not made by this tool")
    return make_result(
        True,
        key,
        size,
        revision=checked.revision,
        note=note,
        rows=checked.rows,
        created=metadata.get("created"),
    )
