"""Whether the database can write, as the hub's writers find it: the "database" health component.

Each writer (audit, last-seen, heartbeat row, rule state, meter readings) reports the outcome of
its writes here. While a writer's latest write failed, the component is "degraded" with the
detail "database cannot write" (a full disk, a read-only file, a lock that never clears); the
writer's own success clears its failure. A writer that failed and then never wrote again (a meter
that went quiet) stops counting once another writer has written after it and FORGET_SECONDS have
passed, so one silent writer cannot hold the state at degraded for ever.
"""

from __future__ import annotations

import logging
import threading
import time

from app.core import health

log = logging.getLogger(__name__)

COMPONENT = "database"
DEGRADED = "degraded"
CANNOT_WRITE = "database cannot write"
FORGET_SECONDS = 600.0

_lock = threading.Lock()
_failing: dict[str, float] = {}  # writer -> when its latest write failed
_last_ok = 0.0
_ok_detail: str | None = None  # what the component said while healthy (the schema revision)
_shown_degraded = False  # what the health component says now


def mark_ok_detail(detail: str | None) -> None:
    """Set the component to ok at start-up, remembering its detail for when writes recover."""
    global _ok_detail, _shown_degraded
    with _lock:
        _ok_detail = detail
        _failing.clear()
        _shown_degraded = False
        health.set_state(COMPONENT, "ok", detail)


def failed(writer: str, exc: BaseException | str) -> bool:
    """A write by `writer` failed; the first failure of a writer is logged at WARNING (returns True then)."""
    global _shown_degraded
    with _lock:
        first = writer not in _failing
        _failing[writer] = time.time()
        if not _shown_degraded:
            _shown_degraded = True
            health.set_state(COMPONENT, DEGRADED, CANNOT_WRITE)
    health.count("database.write_errors")
    if first:
        # The first line of a SQLAlchemy error names the problem; the rest is the statement.
        lines = str(exc).splitlines()
        log.warning("database cannot write (%s): %s", writer, lines[0][:200] if lines else type(exc).__name__)
    return first


def ok(writer: str) -> None:
    """A write by `writer` succeeded."""
    global _last_ok, _shown_degraded
    now = time.time()
    with _lock:
        _last_ok = now
        was_failing = _failing.pop(writer, None) is not None
        if _shown_degraded and not _degraded(now):
            _shown_degraded = False
            health.set_state(COMPONENT, "ok", _ok_detail)
    if was_failing:
        log.info("database writes again (%s)", writer)


def degraded() -> bool:
    with _lock:
        return _degraded(time.time())


def _degraded(now: float) -> bool:
    for writer, when in list(_failing.items()):
        if when < _last_ok and now - when > FORGET_SECONDS:
            del _failing[writer]  # a writer that has not tried again since others wrote
    return bool(_failing)


def failing() -> list[str]:
    """The writers whose latest write failed (each was logged at its first failure)."""
    with _lock:
        _degraded(time.time())
        return sorted(_failing)


def reset() -> None:
    """Forget everything (tests run several hubs in one process)."""
    global _last_ok, _ok_detail, _shown_degraded
    with _lock:
        _failing.clear()
        _last_ok = 0.0
        _ok_detail = None
        _shown_degraded = False
