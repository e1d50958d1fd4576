"""RoleKeeper: the thread that takes, confirms and gives up the active-hub lease of a standby pair."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.core import channels, health
from app.core.settings import Settings
from app.store.lease import Lease, LeaseLost
from app.store.models import HubNode
from app.store.roles import ACTIVE, COMPONENT, FENCED, STANDBY, _epoch, _naive, _role, configure, nodes
from pylib import inproc, threads

log = logging.getLogger(__name__)


class RoleKeeper(threads.AppThread):
    """Takes the lease when free, confirms it while held, keeps this hub's row, starts active-only threads.

    `on_active` (the hub's) starts the threads only the active hub runs (Telegram polling, the
    scheduler, health pings, offline alerts, SQS). Losing the lease raises, so the nanny ends the
    process: restarted, it is a standby again, with nothing left over from its active days.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        on_active: Callable[[], None] | None = None,
        lease: Lease | None = None,
    ) -> None:
        super().__init__("RoleKeeper")
        self.settings = settings
        self._sessions = session_factory
        self._on_active = on_active
        self.lease = lease or Lease(settings.database_url, settings.app_name, settings.ha_fence_seconds)
        self._quiet = threads.QuietRepeats()
        self.takeover_seconds: float | None = None  # from this hub's start to holding the lease
        self._born = time.monotonic()
        self._fenced = False
        configure(settings.ha_node_name, settings.ha_fence_seconds)

    def work(self) -> None:
        health.set_state(COMPONENT, "running", f"standby: {self.settings.ha_node_name} waiting for the lease")
        try:
            while not threads.shutting_down.is_set():
                began = time.monotonic()
                if _role.mode == ACTIVE:
                    self._confirm()
                else:
                    self._try_take()
                self._write_row()
                if threads.sleep(max(0.0, self.settings.ha_check_seconds - (time.monotonic() - began))):
                    break
        finally:
            was_active = _role.mode == ACTIVE
            if was_active and not self._fenced:
                # a clean stop: the processor writes its last rule state while the lease is still ours
                for thread in threads.tracked():
                    if thread.name == "EventProcessor" and thread.is_alive():
                        thread.join(3.0)
            if was_active:
                _role.mode = FENCED  # nothing acts after this line, whatever else is still running
            self._write_row(stopping=True)
            self.lease.close()
            if was_active:
                log.info("released the lease: %s is no longer the active hub", self.settings.ha_node_name)

    # ---- lease ------------------------------------------------------------------------------

    def _try_take(self) -> None:
        try:
            got = self.lease.try_acquire()
        except psycopg.Error as exc:
            self.lease.close()
            health.set_state(COMPONENT, "retrying", f"standby: database unreachable: {type(exc).__name__}")
            if self._quiet.should_log(f"lease {type(exc).__name__}"):
                log.warning("standby: cannot reach the database for the lease: %s", exc)
            return
        if not got:
            self._learn_active()
            return
        _role.confirmed = time.monotonic()
        _role.mode = ACTIVE
        _role.since = time.time()
        self.takeover_seconds = time.monotonic() - self._born
        _role.became_active.set()
        health.set_state(COMPONENT, "running", f"active: {self.settings.ha_node_name} holds the lease")
        previous = self._previous_active()
        self._write_row()
        if previous is not None:
            health.count("ha.takeovers")
            self._alert(previous)
        log.warning("%s is now the ACTIVE hub (took the lease)", self.settings.ha_node_name)
        if self._on_active is not None:
            self._on_active()

    def _confirm(self) -> None:
        try:
            self.lease.confirm()
        except LeaseLost as exc:
            _role.mode = FENCED
            self._fenced = True
            health.set_state(COMPONENT, "down", f"fenced: {exc}")
            health.count("ha.fenced")
            log.critical(
                "lost the lease (%s): stopped acting; exiting so this hub restarts as the standby", exc
            )
            raise
        _role.confirmed = time.monotonic()

    # ---- rows -------------------------------------------------------------------------------

    def _write_row(self, stopping: bool = False) -> None:
        role = "stopped" if stopping else (ACTIVE if _role.mode == ACTIVE else STANDBY)
        now = _naive(time.time())
        try:
            with self._sessions() as session:
                name = self.settings.ha_node_name
                row = session.scalars(select(HubNode).where(HubNode.node_name == name)).one_or_none()
                if row is None:
                    row = HubNode(node_name=name, role=role, role_since=now)
                    session.add(row)
                elif row.role != role:
                    row.role, row.role_since = role, now
                row.seen = now
                row.url = self.settings.ha_node_url or None
                session.commit()
        except SQLAlchemyError as exc:
            health.count("ha.row_errors")
            if self._quiet.should_log(f"row {type(exc).__name__}"):
                log.warning("could not write this hub's row in hub_node: %s", exc)

    def _learn_active(self) -> None:
        """On the standby: who is active, for the banner and for refusals."""
        try:
            with self._sessions() as session:
                rows = nodes(session, self.settings.ha_fence_seconds)
        except SQLAlchemyError:
            return
        active = [n for n in rows if n["role"] == ACTIVE and n["node"] != self.settings.ha_node_name]
        _role.active_node = active[0] if active else None
        who = active[0]["node"] if active else "none answering"
        health.set_state(COMPONENT, "running", f"standby: {self.settings.ha_node_name}; active: {who}")

    def _previous_active(self) -> dict[str, Any] | None:
        """The other hub that was active before this one took over (None at a first start)."""
        try:
            with self._sessions() as session:
                rows = session.scalars(
                    select(HubNode).where(
                        HubNode.role == ACTIVE, HubNode.node_name != self.settings.ha_node_name
                    )
                ).all()
                found = [{"node": r.node_name, "seen": _epoch(r.seen)} for r in rows]
                for row in rows:  # it no longer holds the lease, whatever its row says
                    row.role, row.role_since = "unreachable", _naive(time.time())
                session.commit()
        except SQLAlchemyError:
            return None
        return found[0] if found else None

    def _alert(self, previous: dict[str, Any]) -> None:
        seen = previous.get("seen")
        ago = f", last heard {time.time() - seen:.0f} s ago" if seen else ""
        me, other = self.settings.ha_node_name, previous["node"]
        text = f"⚠️ Take-over: {me} is now the active hub ({other} stopped answering{ago})"
        log.warning(text)
        if not self.settings.telegram_enabled:
            return
        push = inproc.connect_push(channels.NOTIFIER)
        try:
            inproc.send(push, channels.Notification(timestamp=time.time(), text=text))
        finally:
            push.close(linger=1000)
