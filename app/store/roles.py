"""Standby pair: which hub acts (the one holding the database lease), fencing, take-over, and the status rows.

With HA_ENABLED unset nothing here is started and `acting()` is always True: one hub acts as always.
With it set, each hub runs a RoleKeeper. The standby tries the lease every HA_CHECK_SECONDS; the
active hub confirms it as often, and `acting()` turns False the moment a confirmation is more than
HA_FENCE_SECONDS old, whatever the keeper thread is doing. The gates (RabbitSource, the processor,
the ControlPublisher) ask `acting()`, so a hub that lost its lease stops at once; the keeper then
ends the process (exit 1), Docker restarts it, and it comes back as the standby.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.store.models import HubNode
from pylib import threads

log = logging.getLogger(__name__)
# Any here: the node rows and status served as JSON by /api/health and the dashboard.

SINGLE, ACTIVE, STANDBY, FENCED = "single", "active", "standby", "fenced"
# The health component: state running (active or standby, said in its detail), retrying or down.
COMPONENT = "ha"
# A hub whose row was not refreshed for this many fence periods is shown as unreachable.
STALE_FACTOR = 3


class _Role:
    """The process-wide role; read on every message by the gates, so reading it takes no lock."""

    def __init__(self) -> None:
        self.mode = SINGLE
        self.node = ""
        self.since = time.time()
        self.confirmed = 0.0  # monotonic time of the last lease confirmation
        self.fence_seconds = 3.0
        self.active_node: dict[str, Any] | None = None  # what the standby knows of the active hub
        self.became_active = threading.Event()


_role = _Role()


def acting() -> bool:
    """True when this hub may consume, decide and publish: always with one hub; with HA, while leased."""
    role = _role
    if role.mode == SINGLE:
        return True
    return role.mode == ACTIVE and time.monotonic() - role.confirmed < role.fence_seconds


def mode() -> str:
    return _role.mode


def node() -> str:
    return _role.node


def since() -> float:
    return _role.since


def wait_active(stop: threading.Event = threads.shutting_down, poll: float = 0.2) -> bool:
    """Block until this hub acts (True) or the hub shuts down (False)."""
    while not stop.is_set():
        if acting():
            return True
        _role.became_active.wait(poll)
    return False


def active_node_info() -> dict[str, Any] | None:
    """The active hub as the standby last read it from hub_node (None when none answers)."""
    return _role.active_node


def standby_message() -> str:
    """Why a change is refused on the standby, naming the active hub (and its dashboard) when known."""
    active = _role.active_node
    if not active:
        return f"this hub ({_role.node}) is the standby and no hub is active right now; try again shortly"
    where = f" at {active['url']}" if active.get("url") else ""
    return f"this hub ({_role.node}) is the standby: make changes on the active hub {active['node']}{where}"


def configure(node_name: str, fence_seconds: float) -> None:
    """Enter standby (HA mode); the RoleKeeper promotes the hub when it gets the lease."""
    _role.mode = STANDBY
    _role.node = node_name
    _role.since = time.time()
    _role.fence_seconds = fence_seconds
    _role.confirmed = 0.0
    _role.active_node = None
    _role.became_active.clear()


def reset() -> None:
    """Back to a single hub (tests run several hubs in one process)."""
    configure("", 3.0)
    _role.mode = SINGLE


def _naive(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _epoch(value: datetime | None) -> float | None:
    return value.replace(tzinfo=UTC).timestamp() if value is not None else None


def nodes(session: Session, fence_seconds: float, now: float | None = None) -> list[dict[str, Any]]:
    """Every hub of the pair: name, role, since (unix), last seen (unix), url, and whether it answers."""
    now = time.time() if now is None else now
    out = []
    for row in session.scalars(select(HubNode).order_by(HubNode.node_name)):
        seen = _epoch(row.seen)
        alive = seen is not None and now - seen <= STALE_FACTOR * fence_seconds + 1
        out.append(
            {
                "node": row.node_name,
                "role": row.role if alive or row.role == "stopped" else "unreachable",
                "since": _epoch(row.role_since),
                "seen": seen,
                "url": row.url or None,
            }
        )
    return out


def status(session_factory: Callable[[], Session], settings: Settings) -> dict[str, Any]:
    """The pair as /api/health, the dashboard and /status show it; a database error is shown, not raised."""
    body: dict[str, Any] = {
        "enabled": True,
        "node": _role.node,
        "role": _role.mode,
        "acting": acting(),
        "since": _role.since,
    }
    try:
        with session_factory() as session:
            body["nodes"] = nodes(session, settings.ha_fence_seconds)
    except SQLAlchemyError as exc:
        body["nodes"] = []
        body["error"] = type(exc).__name__
    active = [n for n in body["nodes"] if n["role"] == ACTIVE]
    body["active"] = active[0] if active else None
    return body


def status_lines(
    session_factory: Callable[[], Session], settings: Settings, fmt: Callable[[float], str]
) -> list[str]:
    """One line per hub for Telegram's /status and the dashboard; fmt turns a unix time into local text."""
    lines = []
    for n in status(session_factory, settings)["nodes"]:
        me = " (this hub)" if n["node"] == _role.node else ""
        when = f" since {fmt(n['since'])}" if n["since"] is not None else ""
        lines.append(f"{n['node']}{me}: {n['role']}{when}")
    return lines


def active_only(started: Sequence[threads.AppThread]) -> Callable[[], None]:
    """The RoleKeeper's on_active for the hub: start these threads once, on the first activation."""
    done = threading.Event()

    def start() -> None:
        if done.is_set():
            return
        done.set()
        for thread in started:
            thread.start()

    return start
