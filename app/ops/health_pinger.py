"""Health pings: which components are critical and down, the heartbeat row, Healthchecks.io and Cronitor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.core import health
from app.core.settings import Settings
from app.store import db_writes
from app.store.models import Heartbeat
from pylib import threads

if TYPE_CHECKING:
    import requests

# logs as app.ops.observability, whichever of its modules speaks
log = logging.getLogger("app.ops.observability")


# The components whose loss means alerts stop reaching the house, or decisions stop being kept
# (database: a full disk): a ping reports failure then.
CRITICAL_COMPONENTS = ("rabbitmq_source", "control_publisher", "mqtt", "event_processor", "database")
HEALTHY_STATES = frozenset({"connected", "running", "ok"})
PING_TIMEOUT = 10.0
HEARTBEAT_ROW_ID = 1


def critical_components(settings: Settings | None = None) -> tuple[str, ...]:
    """The components whose trouble fails a health ping; MQTT only when it is configured."""
    if settings is not None and not settings.mqtt_enabled:
        return tuple(c for c in CRITICAL_COMPONENTS if c != "mqtt")
    return CRITICAL_COMPONENTS


def down_components(
    components: dict[str, health.Component] | None = None, settings: Settings | None = None
) -> list[str]:
    """The critical components not in a healthy state (missing counts as down)."""
    states = health.components() if components is None else components
    return [c for c in critical_components(settings) if health.state_of(states, c) not in HEALTHY_STATES]


class HealthPinger(threads.AppThread):
    """Writes the heartbeat row each HEARTBEAT_ROW_SECONDS and pings Healthchecks/Cronitor each
    HEALTH_PING_SECONDS, in its own thread so a slow monitoring service never delays an event."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("HealthPinger")
        self.settings = settings
        self._sessions = session_factory
        self._clock = clock
        self._http: requests.Session | None = None
        self._quiet = threads.QuietRepeats()

    @property
    def pings_enabled(self) -> bool:
        return bool(self.settings.hc_ping_url or self.settings.cronitor_monitor_key)

    def work(self) -> None:
        if self.pings_enabled:
            import requests  # only when a ping service is configured

            self._http = requests.Session()
            self._cronitor("run")  # a restart shows in Cronitor's timeline
        else:
            log.info("health pings off: set HC_PING_URL or CRONITOR_MONITOR_KEY to use them")
        health.set_state("health_pinger", "running")
        now = time.monotonic()
        next_row = now
        next_ping = now + self.settings.health_ping_seconds
        try:
            while True:
                now = time.monotonic()
                if now >= next_row:
                    self.write_heartbeat()
                    next_row = now + self.settings.heartbeat_row_seconds
                if self.pings_enabled and now >= next_ping:
                    self.ping()
                    next_ping = now + self.settings.health_ping_seconds
                wait = min(next_row, next_ping if self.pings_enabled else next_row) - time.monotonic()
                if threads.sleep(max(0.0, wait)):
                    break
        finally:
            if self._http is not None:
                self._http.close()

    def write_heartbeat(self) -> None:
        now = self._clock()
        try:
            with self._sessions() as session:
                row = session.get(Heartbeat, HEARTBEAT_ROW_ID) or Heartbeat(id=HEARTBEAT_ROW_ID)
                row.dt = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)  # naive UTC, as elsewhere
                row.ts = now
                session.add(row)
                session.commit()
        except SQLAlchemyError as exc:
            health.count("health_pinger.heartbeat_errors")
            health.set_state("heartbeat_row", "failing", type(exc).__name__)
            db_writes.failed("heartbeat_row", exc)
            if self._quiet.should_log(f"heartbeat {type(exc).__name__}"):
                log.warning("could not write the heartbeat row: %s", exc)
            return
        health.count("health_pinger.heartbeats")
        db_writes.ok("heartbeat_row")
        # /api/health shows this state's `since`: the age of the last row written.
        health.set_state("heartbeat_row", "ok", row.dt.isoformat() + "Z")

    def ping(self) -> None:
        down = down_components(settings=self.settings)
        summary = "down: " + ", ".join(down) if down else "all components healthy"
        if self.settings.hc_ping_url:
            url = self.settings.hc_ping_url + ("/fail" if down else "")
            self._send("healthchecks", "POST", url, data=summary.encode())
        if self.settings.cronitor_monitor_key:
            self._cronitor("fail" if down else "complete", summary)

    def _cronitor(self, state: str, message: str | None = None) -> None:
        if not self.settings.cronitor_monitor_key:
            return
        s = self.settings
        url = f"{s.cronitor_ping_url}/{s.cronitor_telemetry_key}/{s.cronitor_monitor_key}"
        params = {"state": state} | ({"message": message[:200]} if message else {})
        self._send("cronitor", "GET", url, params=params)

    def _send(self, service: str, method: str, url: str, **kwargs: Any) -> None:
        try:
            if self._http is None:  # work() makes the session whenever a ping service is configured
                raise RuntimeError("no HTTP session: health pings are off")
            response = self._http.request(method, url, timeout=PING_TIMEOUT, **kwargs)
            response.raise_for_status()
        except Exception as exc:  # requests' errors and anything odd: a failed ping is never fatal
            health.count(f"health_pinger.{service}_errors")
            # The URL carries the check id or key, so only the exception type and status are logged.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            problem = f"{type(exc).__name__}" + (f" {status}" if status else "")
            if self._quiet.should_log(f"{service} {problem}"):
                log.warning("%s ping failed: %s", service, problem)
            return
        health.count(f"health_pinger.{service}_pings")
