"""SQLite backups to S3, restore and the restore drill: `python -m app.ops.backup backup|restore|verify`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.core import file_modes
from app.core.settings import Settings, SettingsError
from app.ops import backup_crypto
from app.ops.backup_actions import backup, command_lock, database_path, make_result, restore, verify
from app.ops.backup_files import BackupError, BadSettings, NoBackup
from app.ops.backup_s3 import is_s3_error, s3_problem
from app.ops.backup_status import (
    ATTEMPT,
    GOOD,
    RESTORE,
    VERIFY,
    read_status,
    record,
    utc_now,
)
from app.ops.backup_status import load as load_status

log = logging.getLogger("app.ops.backup")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_OFF = 3  # `enabled`: backups are off


class _Redact(logging.Filter):
    """Blanks the AWS secret key and the database password should an error message ever quote them;
    lighter than app.ops.observability's filter, which imports half the hub."""

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


# The module's docstring, kept for --help: `python -OO` (as the hub runs) strips docstrings.
DESCRIPTION = (
    "SQLite backups to S3, restore and the restore drill: `python -m app.ops.backup backup|restore|verify`."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.ops.backup", description=DESCRIPTION)
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
    """`python -m app.ops.backup`: settings from the environment, logs to stderr; returns the exit code."""
    if _parser().parse_args(argv).command == "genkey":  # before the settings: works without them
        print(backup_crypto.generate_key())
        return EXIT_OK
    file_modes.private_umask()  # temporary copies, the status file and a restored database: 0600
    from app.core import settings as settings_module

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
        database_path(settings)
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
            record(settings, fields, make_result(True, note=f"{exc}; a fresh database will be created"))
            log.info("%s yet: the hub will create a fresh database", exc)
            return EXIT_OK
        message = str(exc)
    except BackupError as exc:
        message = str(exc)
    except OSError as exc:
        message = f"local file problem: {exc}"
    except Exception as exc:
        if not is_s3_error(exc):
            raise
        message = s3_problem(exc, settings)
        if command == "restore":
            message += "; the database was not touched"
    record(settings, fields, make_result(False, error=message))
    log.error("%s failed: %s", command, message)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
