"""The backup status file: what backup, restore and verify recorded, and the summary the hub shows."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.settings import Settings
from pylib.decoding import json_object

log = logging.getLogger("app.ops.backup")
# Any here: the status file is a JSON document (possibly from an older version), read with checks.

# The fields of the status file; each holds one Result as a dict.
ATTEMPT, GOOD, VERIFY, RESTORE = "last_backup_attempt", "last_good_backup", "last_verify", "last_restore"
STATUS_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def like_folder(path: Path) -> None:
    """Run as root (the container's entrypoint), give a new file to the data folder's owner, so the
    hub and cron jobs (user app) can write it."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        folder = path.parent.stat()
        with contextlib.suppress(OSError):
            os.chown(path, folder.st_uid, folder.st_gid)


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return json_object(data)


def record(settings: Settings, fields: tuple[str, ...], entry: dict[str, Any]) -> None:
    """Store entry under each of fields; written to a temp file and renamed, so a reader never
    sees half a file. Callers hold the command lock, so two writers never interleave."""
    path = Path(settings.backup_status_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load(path)
    data["version"] = STATUS_VERSION
    for name in fields:
        data[name] = entry
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        like_folder(temp)
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        # the command's own outcome still shows in its exit code and log
        log.error("could not write the status file %s: %s", path, exc)
        return
    fsync_dir(path.parent)


@dataclass(frozen=True)
class BackupStatus:
    """What the hub shows: a summary state and the last results (times are aware UTC datetimes)."""

    state: str  # "not configured" | "ok" | "stale" | "failed" | "never"
    last_good_time: datetime | None = None
    last_good_key: str | None = None
    last_attempt_time: datetime | None = None
    last_attempt_ok: bool | None = None
    last_verify_time: datetime | None = None
    last_verify_ok: bool | None = None
    last_restore_time: datetime | None = None
    last_restore_ok: bool | None = None
    error: str | None = None  # why the state is "failed"
    age_seconds: float | None = None  # since the last good backup

    def as_dict(self) -> dict[str, Any]:
        """For /api/health."""

        def when(moment: datetime | None) -> str | None:
            return iso(moment) if moment else None

        return {
            "state": self.state,
            "last_good_backup": (
                {"time": when(self.last_good_time), "key": self.last_good_key}
                if self.last_good_time
                else None
            ),
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 1),
            "last_attempt": (
                {"time": when(self.last_attempt_time), "ok": self.last_attempt_ok}
                if self.last_attempt_time
                else None
            ),
            "last_verify": (
                {"time": when(self.last_verify_time), "ok": self.last_verify_ok}
                if self.last_verify_time
                else None
            ),
            "last_restore": (
                {"time": when(self.last_restore_time), "ok": self.last_restore_ok}
                if self.last_restore_time
                else None
            ),
            "error": self.error,
        }


_cache_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _read_cached(path: str) -> dict[str, Any]:
    """The status file's content, parsed again only when it changed (every page view asks)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    # a rename gives a new inode, so a rewrite within one mtime tick is still noticed
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _cache_lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    data = load(Path(path))
    with _cache_lock:
        _cache[path] = (stamp, data)
    return data


def _parse_time(entry: Any) -> datetime | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("time"), str):
        return None
    try:
        return datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def read_status(settings: Settings, now: float | None = None) -> BackupStatus:
    """The backup state for the health strip, /api/health and /status (cheap: cached on mtime)."""
    if not settings.backup_enabled or settings.sqlite_path is None:
        return BackupStatus("not configured")
    data = _read_cached(settings.backup_status_path)
    entries = {name: json_object(data.get(name)) for name in (ATTEMPT, GOOD, VERIFY, RESTORE)}
    attempt, good, verify, restore = (entries[n] for n in (ATTEMPT, GOOD, VERIFY, RESTORE))
    good_time = _parse_time(good)
    current = time.time() if now is None else now
    age = None if good_time is None else max(0.0, current - good_time.timestamp())
    error = None
    if attempt and attempt.get("ok") is False:
        state, error = "failed", f"backup: {attempt.get('error') or 'failed'}"
    elif verify and verify.get("ok") is False:
        state, error = "failed", f"restore drill: {verify.get('error') or 'failed'}"
    elif good_time is None:
        state = "never"
    elif age is not None and age > settings.backup_max_age_hours * 3600:
        state = "stale"
    else:
        state = "ok"

    def flag(entry: dict[str, Any]) -> bool | None:
        return entry.get("ok") if isinstance(entry.get("ok"), bool) else None

    return BackupStatus(
        state=state,
        last_good_time=good_time,
        last_good_key=good.get("key") if good_time else None,
        last_attempt_time=_parse_time(attempt),
        last_attempt_ok=flag(attempt),
        last_verify_time=_parse_time(verify),
        last_verify_ok=flag(verify),
        last_restore_time=_parse_time(restore),
        last_restore_ok=flag(restore),
        error=error,
        age_seconds=age,
    )


def age_text(seconds: float | None) -> str:
    """'just now', '12 min ago', '5 h ago', '3 d ago'."""
    if seconds is None:
        return "never"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def summary_text(status: BackupStatus) -> str:
    """'ok, 12 min ago', 'stale, 2 d ago', 'failed, last good 3 h ago', 'drill failed, …', 'never'…"""
    age = age_text(status.age_seconds)
    if status.state in ("ok", "stale"):
        return f"{status.state}, {age}"
    if status.state == "failed":
        what = "drill failed" if (status.error or "").startswith("restore drill") else "failed"
        return what + (f", last good {age}" if status.age_seconds is not None else "")
    return status.state


def drill_text(status: BackupStatus, now: float | None = None) -> str:
    """The last restore drill: 'ok, 5 h ago', 'failed, 5 h ago' or 'never run'."""
    if status.last_verify_time is None:
        return "never run"
    current = time.time() if now is None else now
    verdict = "ok" if status.last_verify_ok else "failed"
    return f"{verdict}, {age_text(max(0.0, current - status.last_verify_time.timestamp()))}"
