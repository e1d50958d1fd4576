"""The active-hub lease: a PostgreSQL advisory lock held on a dedicated, closely watched connection."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


# A bigint advisory lock shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
_LOCK_ROW = (
    "locktype = 'advisory' AND granted AND objsubid = 1"
    " AND classid = %s::bigint::oid AND objid = %s::bigint::oid"
)


class LeaseLost(RuntimeError):
    """The lease connection failed or the lock is no longer held: stop acting at once."""


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a lease name (one per APP_NAME)."""
    key: int = struct.unpack(">q", hashlib.sha256(f"event-processor lease {name}".encode()).digest()[:8])[0]
    return key


def conninfo(database_url: str) -> str:
    """libpq's URL for a SQLAlchemy one (postgresql+psycopg://… -> postgresql://…)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Lease:
    """pg_try_advisory_lock on a connection of its own, so the lock lives exactly as long as that session.

    The database ends the session, and with it the lock, when the holder goes silent: a killed
    process's socket is closed by its kernel (at once), and a hub that hangs or loses its network
    stops sending, so the server's idle_session_timeout and TCP keepalives/user timeout (set on this
    session to `drop_seconds`) end it. The holder confirms the lock every check and treats a failed
    or slow confirmation as loss; it stops acting after `fence_seconds` without one, which is shorter
    than `drop_seconds`, so it has stopped before the server could hand the lock to the standby.
    """

    def __init__(self, database_url: str, name: str, fence_seconds: float) -> None:
        self._url = conninfo(database_url)
        self.key = lock_key(name)
        self.fence_seconds = fence_seconds
        self.drop_seconds = 2 * fence_seconds
        self._conn: psycopg.Connection[TupleRow] | None = None
        self.held = False

    def _connect(self) -> psycopg.Connection[TupleRow]:
        fence_ms = max(1, int(self.fence_seconds * 1000))
        conn = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(2, int(self.fence_seconds)),
            application_name="event-processor lease",
            # client side: a read on a dead network fails within the fence time instead of hanging
            keepalives=1,
            keepalives_idle=max(1, int(self.fence_seconds / 2)),
            keepalives_interval=1,
            keepalives_count=max(1, int(self.fence_seconds)),
            tcp_user_timeout=fence_ms,
        )
        drop = max(1, int(self.drop_seconds))
        # server side, per session: a holder that stops talking loses the session (and the lock)
        # after drop_seconds. Every one of these is settable by an ordinary user.
        for setting, value in (
            ("idle_session_timeout", f"{drop * 1000}"),
            ("tcp_keepalives_idle", f"{max(1, drop // 2)}"),
            ("tcp_keepalives_interval", "1"),
            ("tcp_keepalives_count", f"{max(1, drop // 2)}"),
            ("tcp_user_timeout", f"{drop * 1000}"),
            ("statement_timeout", f"{fence_ms}"),
        ):
            try:
                conn.execute(f"SET {setting} = {value}")  # values are numbers built here, not input
            except psycopg.Error as exc:  # e.g. idle_session_timeout before PostgreSQL 14
                log.warning("lease session: could not set %s (%s); relying on the others", setting, exc)
        return conn

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False when another session does. Raises psycopg.Error."""
        if self.held:
            return True
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        self.held = bool(row and row[0])
        return self.held

    def confirm(self) -> None:
        """Prove the lock is still ours on a live session; raises LeaseLost otherwise."""
        if not self.held or self._conn is None:
            raise LeaseLost("the lease is not held")
        try:
            row = self._conn.execute(
                f"SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND {_LOCK_ROW}",
                ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
            ).fetchone()
        except psycopg.Error as exc:
            self._lost()
            raise LeaseLost(f"lease connection failed: {type(exc).__name__}: {exc}") from exc
        if not row or row[0] != 1:
            self._lost()
            raise LeaseLost("the advisory lock is no longer held by this session")

    def holder_pid(self) -> int | None:
        """The backend pid holding the lock (any session), for status and tests."""
        if self._conn is None or self._conn.closed:
            return None
        row = self._conn.execute(
            f"SELECT pid FROM pg_locks WHERE {_LOCK_ROW}",
            ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
        ).fetchone()
        return int(row[0]) if row else None

    def _lost(self) -> None:
        self.held = False
        self.close()

    def close(self) -> None:
        """Close the session; the server releases the lock with it."""
        self.held = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
