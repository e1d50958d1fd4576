"""SQLite backups to S3, restore and the restore drill: `python -m app.backup backup|restore|verify`."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from app import backup_crypto, file_modes, schema_head
from app.backup_status import (
    ATTEMPT,
    GOOD,
    RESTORE,
    VERIFY,
    fsync_dir,
    iso,
    like_folder,
    read_status,
    record,
    utc_now,
)
from app.backup_status import load as load_status
from app.settings import Settings, SettingsError

log = logging.getLogger("app.backup")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_OFF = 3  # `enabled`: backups are off
PG_MESSAGE = (
    "DATABASE_URL is not SQLite: this tool backs up the SQLite file only; "
    "back PostgreSQL up with pg_dump (see the README, Backups)"
)
# A command waits this long for another one (a slow upload, the nightly drill) before giving up.
LOCK_WAIT_SECONDS = 300.0
# The hub rewrites the heartbeat row every HEARTBEAT_ROW_SECONDS; a row younger than this many
# intervals means it is running.
HEARTBEAT_FACTOR = 3
# Left behind only by a killed run; older than this they cannot belong to a live one.
STALE_TEMP_SECONDS = 6 * 3600
TEMP_SUFFIX = ".backup-tmp"
VERIFY_PREFIX = ".backup-verify-"
CHUNK = 1024 * 1024
# Every database the hub made has these; a file without them is some other SQLite database.
REQUIRED_TABLES = ("input_config", "output_config")
MIGRATIONS = Path(__file__).resolve().parent / "migrations" / "versions"
_REVISION_LINE = re.compile(r"""^revision(?:\s*:\s*str)?\s*=\s*["']([^"']+)["']""", re.MULTILINE)


class BackupError(Exception):
    """A command failed; the message is the one line the operator sees."""


class BadSettings(BackupError):
    """Settings that make the command impossible (exit 2)."""


class NoBackup(BackupError):
    """The object to restore does not exist (yet)."""


# ---- names ----------------------------------------------------------------------------------


def latest_key(settings: Settings) -> str:
    return f"{settings.app_name}.db.gz"


def dated_key(settings: Settings, kind: str, now: datetime) -> str:
    stamp = now.strftime("%y%m%d" if kind == "date" else "%y%m%d%H%M%S")
    return f"{settings.app_name}_{stamp}.db.gz"


def key_date(settings: Settings, key: str) -> date | None:
    """The date in a dated copy's key (YYMMDD or YYMMDDhhmmss), or None for any other key."""
    match = re.fullmatch(rf"{re.escape(settings.app_name)}_(\d{{6}})(\d{{6}})?\.db\.gz", key)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%y%m%d").date()
    except ValueError:
        return None


def known_revisions() -> frozenset[str]:
    """Every schema revision this code can open (its migrations), read without importing Alembic."""
    found = set()
    for script in MIGRATIONS.glob("*.py"):
        match = _REVISION_LINE.search(script.read_text(encoding="utf-8"))
        if match:
            found.add(match.group(1))
    return frozenset(found | {schema_head.HEAD_REVISION})


# ---- the SQLite side ------------------------------------------------------------------------


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


def _temp_file(folder: Path, stem: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=TEMP_SUFFIX, dir=folder)
    os.close(handle)
    return Path(name)


def _remove_stale_temps(folder: Path) -> None:
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in [*folder.glob(f".*{TEMP_SUFFIX}"), *folder.glob(f"{VERIFY_PREFIX}*")]:
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()


# ---- the S3 side ----------------------------------------------------------------------------


def _s3_client(settings: Settings) -> Any:
    from app import aws

    return aws.client(settings, "s3")


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def s3_problem(exc: BaseException, settings: Settings) -> str:
    """One line for a boto3/botocore failure; never the keys."""
    from botocore import exceptions as bce

    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, bce.ClientError) and isinstance(cause, bce.ClientError):
        exc = cause  # boto3's S3UploadFailedError wraps the ClientError
    endpoint = settings.aws_endpoint_url or f"AWS S3 ({settings.aws_region})"
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectTimeoutError | bce.ConnectionClosedError):
        return f"cannot reach S3 at {endpoint}: {exc}"
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or give the host a role)"
    code = _error_code(exc)
    if code == "NoSuchBucket":
        return f"bucket {settings.backup_s3_bucket!r} does not exist at {endpoint}"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return f"S3 refused the request ({code}): check the AWS keys and the bucket policy"
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return f"S3 error {code}: {message}".rstrip(": ")
    return f"S3 failed: {type(exc).__name__}: {exc}"


def _is_s3_error(exc: BaseException) -> bool:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError | Boto3Error)


class _Counting:
    """Wraps a response body to count the compressed bytes read through it."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._body.read(size)
        self.count += len(data)
        return data


class _Prefixed:
    """A reader that gives back bytes already read from a stream before the rest of it."""

    def __init__(self, head: bytes, body: Any) -> None:
        self._head = head
        self._body = body

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            data: bytes = self._body.read(size)
            return data
        if size < 0:
            data, self._head = self._head + self._body.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


def download(
    s3: Any, bucket: str, key: str, dest: Path, encryption_key: str = ""
) -> tuple[dict[str, str], int]:
    """Stream s3://bucket/key (decrypted when it was encrypted) through gunzip into dest; returns
    (metadata, bytes downloaded). Plain and encrypted backups both restore, told apart by their
    first bytes.

    Raises NoBackup when the key is missing, BackupError("corrupt …") for bad gzip data, and
    BackupError for an encrypted backup without the right key.
    """
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _error_code(exc) in ("NoSuchKey", "404"):
            raise NoBackup(f"no backup at s3://{bucket}/{key}") from None
        raise
    body = _Counting(response["Body"])
    head = body.read(len(backup_crypto.MAGIC))
    try:
        if head == backup_crypto.MAGIC:
            source: Any = backup_crypto.DecryptingReader(encryption_key, body)
        else:
            source = _Prefixed(head, body)
        with gzip.GzipFile(fileobj=source, mode="rb") as unzipped, open(dest, "wb") as out:
            shutil.copyfileobj(unzipped, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
    except backup_crypto.DecryptError as exc:
        raise BackupError(f"s3://{bucket}/{key}: {exc}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise BackupError(f"corrupt download s3://{bucket}/{key}: not a complete gzip file ({exc})") from None
    metadata = {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}
    return metadata, body.count


# ---- the status file ------------------------------------------------------------------------


def _result(
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
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ---- the commands ---------------------------------------------------------------------------


def _database_path(settings: Settings) -> Path:
    path = settings.sqlite_path
    if path is None:
        raise BadSettings(PG_MESSAGE)
    if path == ":memory:" or path.startswith("file:"):
        raise BadSettings(f"TABLESPACE_PATH/DATABASE_URL must name a SQLite file, not {path!r}")
    return Path(path)


def backup(settings: Settings, kind: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Snapshot, check, gzip and upload the database; then apply retention. Returns the result."""
    moment = now or utc_now()
    db = _database_path(settings)
    bucket, key = settings.backup_s3_bucket, latest_key(settings)
    if not db.is_file() or db.stat().st_size == 0:
        raise BackupError(f"database {db} is missing or empty: nothing to back up")
    _remove_stale_temps(db.parent)
    raw, packed = _temp_file(db.parent, db.name), _temp_file(db.parent, db.name + ".gz")
    sealed = _temp_file(db.parent, db.name + ".enc")
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

        s3 = _s3_client(settings)
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
    result = _result(True, key, size, dated_key=dated, sha256=checked.sha256, revision=checked.revision)
    try:
        result["deleted"] = apply_retention(settings, s3, moment.date())
    except Exception as exc:
        if not _is_s3_error(exc):
            raise
        # the backup itself is safe in S3; only the clean-up failed, and the next run tries again
        result["warning"] = "retention: " + s3_problem(exc, settings)
        log.warning("backup uploaded, but old dated copies were not pruned: %s", result["warning"])
    return result


def apply_retention(settings: Settings, s3: Any, today: date) -> list[str]:
    """Delete dated copies whose key date is more than BACKUP_RETENTION_DAYS before today."""
    cutoff = today - timedelta(days=settings.backup_retention_days)
    old = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.backup_s3_bucket, Prefix=f"{settings.app_name}_"):
        for item in page.get("Contents", []):
            day = key_date(settings, item["Key"])
            # the latest object and anything not named like a dated copy never match
            if day is not None and day < cutoff:
                old.append(item["Key"])
    for start in range(0, len(old), 1000):
        batch = old[start : start + 1000]
        response = s3.delete_objects(
            Bucket=settings.backup_s3_bucket,
            Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
        )
        errors = response.get("Errors") or []
        if errors:
            raise BackupError(f"could not delete {errors[0].get('Key')}: {errors[0].get('Message')}")
    for key in old:
        log.info("retention: deleted s3://%s/%s", settings.backup_s3_bucket, key)
    return old


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
    db = _database_path(settings)
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
    _remove_stale_temps(db.parent)
    temp = _temp_file(db.parent, db.name)
    try:
        metadata, size = download(_s3_client(settings), bucket, key, temp, settings.backup_encryption_key)
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
    return _result(
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
    db = _database_path(settings)
    key = latest_key(settings)
    folder = db.parent if db.parent.is_dir() else Path(tempfile.gettempdir())
    # beside the database rather than /tmp, which is RAM (tmpfs) in the container
    _remove_stale_temps(folder)
    with tempfile.TemporaryDirectory(prefix=VERIFY_PREFIX, dir=folder) as scratch:
        temp = Path(scratch) / "restored.db"
        metadata, size = download(
            _s3_client(settings), settings.backup_s3_bucket, key, temp, settings.backup_encryption_key
        )
        checked, note = _check_download(temp, metadata, count_rows=True)
        if not metadata.get("sha256"):
            # sound, but the drill cannot prove it is the file that was uploaded
            raise BackupError("the backup carries no sha256 metadata: it was not made by this tool")
    return _result(
        True,
        key,
        size,
        revision=checked.revision,
        note=note,
        rows=checked.rows,
        created=metadata.get("created"),
    )


# ---- the command line -----------------------------------------------------------------------


class _Redact(logging.Filter):
    """Blanks the AWS secret key and the database password should an error message ever quote them;
    lighter than app.observability's filter, which imports half the hub."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        values = [
            settings.aws_secret_access_key,
            settings.backup_encryption_key,
            urlsplit(settings.database_url).password or "",
        ]
        self._secrets = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self._secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact(settings))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.backup", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("backup", help="upload the latest copy (and a dated one with date or time)")
    make.add_argument(
        "kind", nargs="?", choices=("date", "time"), help="also keep a copy named by UTC date/time"
    )
    make.add_argument(
        "--if-due",
        action="store_true",
        help="only when the last attempt is BACKUP_LATEST_MINUTES old (for a scheduler asking each minute)",
    )
    again = commands.add_parser("restore", help="replace the database with a backup")
    again.add_argument("--if-missing", action="store_true", help="only when the database is missing or empty")
    again.add_argument("--from", dest="key", metavar="KEY", help="restore this object instead of the latest")
    again.add_argument("--force", action="store_true", help="even while the hub's heartbeat is fresh")
    commands.add_parser("verify", help="restore drill: download the latest backup and check it")
    commands.add_parser("status", help="print the recorded results as JSON")
    commands.add_parser("genkey", help="print a new key for BACKUP_ENCRYPTION_KEY")
    commands.add_parser(
        "enabled", help=f"exit 0 when backups are on, {EXIT_OFF} when off (the bucket may be in 1Password)"
    )
    return parser


# a scheduler starts a minute's job a moment late, so "5 minutes" must not wait for a sixth
DUE_SLACK_SECONDS = 30


def backup_due(settings: Settings, now: datetime | None = None) -> bool:
    """Whether the latest copy is due: no attempt recorded, or the last one BACKUP_LATEST_MINUTES ago."""
    data = load_status(Path(settings.backup_status_path))
    last = data.get(ATTEMPT)
    stamp = last.get("time") if isinstance(last, dict) else None
    if not isinstance(stamp, str):
        return True
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return True
    elapsed = ((now or utc_now()) - when).total_seconds()
    # a clock that went backwards makes the record "future": take a backup rather than wait for it
    return elapsed < 0 or elapsed >= settings.backup_latest_minutes * 60 - DUE_SLACK_SECONDS


def _describe(result: dict[str, Any]) -> str:
    parts = [f"s3 key {result.get('key')}", f"{result.get('bytes')} bytes"]
    if result.get("revision"):
        parts.append(f"schema {result['revision']}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`python -m app.backup`: settings from the environment, logs to stderr; returns the exit code."""
    if _parser().parse_args(argv).command == "genkey":  # before the settings: works without them
        print(backup_crypto.generate_key())
        return EXIT_OK
    file_modes.private_umask()  # temporary copies, the status file and a restored database: 0600
    from app import settings as settings_module

    try:
        settings = settings_module.load()
    except SettingsError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(settings)
    return run(argv, settings)


def run(argv: list[str] | None, settings: Settings) -> int:
    """The commands, for given settings; returns the exit code (0 ok, 1 failed, 2 bad usage or settings)."""
    args = _parser().parse_args(argv)
    if args.command == "genkey":
        print(backup_crypto.generate_key())
        return EXIT_OK
    if args.command == "status":
        print(
            json.dumps(
                {"summary": read_status(settings).as_dict(), **load_status(Path(settings.backup_status_path))}
            )
        )
        return EXIT_OK
    if args.command == "enabled":
        on = settings.backup_enabled and settings.sqlite_path is not None
        print(f"backups are {'on: s3://' + settings.backup_s3_bucket if on else 'off'}")
        return EXIT_OK if on else EXIT_OFF
    if not settings.backup_enabled:
        if args.command == "restore" and not args.if_missing:
            log.error("backup: setting BACKUP_S3_BUCKET: must be set to restore from S3")
            return EXIT_USAGE
        log.info("backups are off (BACKUP_S3_BUCKET is empty): nothing to %s", args.command)
        return EXIT_OK
    if args.command == "backup" and args.if_due and not backup_due(settings):
        return EXIT_OK  # quietly: the caller asks every minute
    try:
        _database_path(settings)
    except BadSettings as exc:
        if settings.sqlite_path is None and args.command == "restore" and args.if_missing:
            # The container runs this at every start; a PostgreSQL deployment must still start.
            log.info("restore at start skipped: %s", exc)
            return EXIT_OK
        log.error("backup: %s", exc)
        return EXIT_USAGE
    try:
        with command_lock(settings):
            return _run_locked(args, settings)
    except BackupError as exc:
        log.error("%s failed: %s", args.command, exc)
        return EXIT_FAILED


def _run_locked(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    fields = {"backup": (ATTEMPT,), "verify": (VERIFY,), "restore": (RESTORE,)}[command]
    where = f"s3://{settings.backup_s3_bucket}"
    try:
        if command == "backup":
            result = backup(settings, args.kind)
            record(settings, (ATTEMPT, GOOD), result)
            dated = f" and {result['dated_key']}" if result.get("dated_key") else ""
            log.info("backup uploaded to %s (%s)%s", where, _describe(result), dated)
        elif command == "verify":
            result = verify(settings)
            record(settings, fields, result)
            tables = ", ".join(f"{t} {n}" for t, n in sorted(result["rows"].items()))
            log.info("restore drill ok: %s; rows: %s", _describe(result), tables)
        else:
            outcome = restore(settings, args.if_missing, args.key, args.force)
            if outcome is not None:
                record(settings, fields, outcome)
                kept = (
                    f"; the replaced file is kept as {outcome['previous']}" if outcome.get("previous") else ""
                )
                log.info("restored %s from %s (%s)%s", settings.sqlite_path, where, _describe(outcome), kept)
                if args.force:
                    log.warning("restart the hub now: it still has the replaced file open")
        return EXIT_OK
    except NoBackup as exc:
        if command == "restore" and args.if_missing:
            record(settings, fields, _result(True, note=f"{exc}; a fresh database will be created"))
            log.info("%s yet: the hub will create a fresh database", exc)
            return EXIT_OK
        message = str(exc)
    except BackupError as exc:
        message = str(exc)
    except OSError as exc:
        message = f"local file problem: {exc}"
    except Exception as exc:
        if not _is_s3_error(exc):
            raise
        message = s3_problem(exc, settings)
        if command == "restore":
            message += "; the database was not touched"
    record(settings, fields, _result(False, error=message))
    log.error("%s failed: %s", command, message)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
