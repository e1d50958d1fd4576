"""OfflineMonitor: tells the owner when a device that sent heartbeats goes silent, and when it returns."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import zmq
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.core import health, zones
from app.core.channels import NOTIFIER, Notification
from app.core.settings import Settings
from app.engine import presence as presence_module
from app.engine.presence import Presence, Timing
from app.store import db_writes, rule_state
from app.store.models import InputConfig, OutputConfig
from pylib import inproc, threads

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0
CONFIG_REFRESH_SECONDS = 30.0
# This many devices of one origin silent in one check look like their broker or Pi died ...
GROUP_PER_ORIGIN = 3
# ... and this many in one check, whatever their origins, look like a shared outage too.
GROUP_TOTAL = 5
# A message naming hundreds of devices helps nobody and may exceed Telegram's 4096 characters.
MAX_NAMES = 30
SEND_WAIT_MS = 1000
STATE_KEY = "offline:state"  # rule_state: which devices are offline and alerted, across restarts
WRITER = "offline_state"  # its name in app.store.db_writes


@dataclass(frozen=True)
class Watched:
    """A configured device the monitor tracks; alert says whether its outages are announced."""

    key: str
    name: str
    origin: str
    alert: bool


@dataclass(frozen=True)
class _Change:
    key: str
    name: str
    origin: str
    since: float  # when last heard before the outage
    minutes: int = 0  # outage length, for a return


class OfflineMonitor(threads.AppThread):
    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        presence: Presence = presence_module.presence,
        clock: Callable[[], float] = time.time,
        check_seconds: float = CHECK_SECONDS,
        config_refresh_seconds: float = CONFIG_REFRESH_SECONDS,
    ) -> None:
        super().__init__("OfflineMonitor")
        self._settings = settings
        self._sessions = session_factory
        self._presence = presence
        self._clock = clock
        self._check_seconds = check_seconds
        self._refresh_seconds = config_refresh_seconds
        self._tz = zones.zone(settings.user_tz)
        self._watched: dict[str, Watched] = {}
        self._loaded_at: float | None = None
        self._lock = threading.Lock()
        self._offline: dict[str, float] = {}  # key -> when last heard before going offline
        self._alerted: set[str] = set()  # offline keys whose outage was announced
        self._resumed: set[str] | None = None  # offline keys loaded from rule_state; None: not loaded yet
        self._unsaved: dict[str, object] | None = None  # the newest state the database did not take
        self._push: inproc.Socket | None = None

    # ---- the thread --------------------------------------------------------------------------

    def work(self) -> None:
        if self._settings.telegram_enabled:
            self._push = inproc.connect_push(NOTIFIER)
        health.set_state("offline_monitor", "running", "0 offline")
        try:
            while not threads.shutting_down.is_set():
                try:
                    self.check()
                except Exception:
                    # One bad check (a bug, a database hiccup) must not end the monitoring.
                    health.count("offline.check_errors")
                    log.exception("offline check failed")
                if threads.sleep(self._check_seconds):
                    break
        finally:
            if self._push is not None:
                self._push.close()
                self._push = None

    # ---- what others read --------------------------------------------------------------------

    def offline(self) -> dict[str, float]:
        """Device keys offline now, with when each was last heard (for /status and the dashboard)."""
        with self._lock:
            return dict(self._offline)

    # ---- one check ---------------------------------------------------------------------------

    def threshold(self, timing: Timing) -> float:
        """Seconds of silence after which the device counts as offline."""
        interval = timing.interval
        if interval is None:
            return float(self._settings.max_heartbeat_delay)
        return max(float(self._settings.offline_alert_floor), self._settings.offline_alert_factor * interval)

    def check(self) -> list[str]:
        """Compare every tracked device with its learned rhythm; announce changes. Returns the texts sent."""
        now = self._clock()
        if self._resumed is None:
            self._resume()
        watched = self._devices(now)
        timings = self._presence.timings()
        reports: dict[str, tuple[bool, float | None] | None] = {}
        went: list[_Change] = []
        back: list[_Change] = []
        with self._lock:
            before = (dict(self._offline), set(self._alerted))
            for key in list(self._offline):
                if key not in watched:  # removed, or became a built-in: forget it quietly
                    self._forget(key)
            for device in watched.values():
                timing = timings.get(device.key)
                if timing is None or not timing.heartbeating:
                    if device.key not in (self._resumed or ()):
                        # Never heard twice since the start (or presence was cleared): nothing to miss.
                        self._forget(device.key)
                        continue
                    if timing is None or timing.last_seen <= self._offline[device.key]:
                        continue  # offline before a restart and still silent: no second alert
                if device.origin not in reports:
                    reports[device.origin] = self._presence.reported(device.origin)
                report = reports[device.origin]
                # Not heartbeating here means a resumed outage heard again since: it is back.
                is_offline = timing.heartbeating and self._is_offline(now, timing, report)
                if is_offline and device.key not in self._offline:
                    self._offline[device.key] = timing.last_seen
                    if device.alert:
                        self._alerted.add(device.key)
                        went.append(_Change(device.key, device.name, device.origin, timing.last_seen))
                elif not is_offline and device.key in self._offline:
                    since = self._offline.pop(device.key)
                    if device.key in self._alerted:
                        self._alerted.discard(device.key)
                        # The outage lasted until it was heard again, however late this check runs.
                        heard = max(timing.last_seen, report[1] if report and report[1] else 0.0)
                        minutes = max(1, round(((heard if heard > since else now) - since) / 60))
                        back.append(_Change(device.key, device.name, device.origin, since, minutes))
                    if self._resumed:
                        self._resumed.discard(device.key)
            count = len(self._offline)
            changed = before != (self._offline, self._alerted)
            if changed:
                state: dict[str, object] = {"offline": dict(self._offline), "alerted": sorted(self._alerted)}
        if changed:
            self._unsaved = state
        if self._unsaved is not None:
            self._save(self._unsaved)  # a state the database could not take is tried again each check
        texts = []
        if went:
            texts.append(self._offline_text(went, now))
            health.count("offline.alerts", len(went))
            log.warning("%s", texts[-1])
        if back:
            texts.append(self._back_text(back))
            health.count("offline.back_online", len(back))
            log.info("%s", texts[-1])
        for text in texts:
            self._send(now, text)
        health.set_state("offline_monitor", "running", f"{count} offline")
        return texts

    def _forget(self, key: str) -> None:
        self._offline.pop(key, None)
        self._alerted.discard(key)
        if self._resumed:
            self._resumed.discard(key)

    def _resume(self) -> None:
        """Load which devices a previous run had found offline, so a restart neither re-alerts nor forgets."""
        self._resumed = set()
        try:
            with self._sessions() as session:
                stored = rule_state.load(session, STATE_KEY).get(STATE_KEY)
        except SQLAlchemyError:
            log.warning("could not load the offline-alert state", exc_info=True)
            return
        if not isinstance(stored, dict):
            return
        try:
            offline = {str(k): float(v) for k, v in stored.get("offline", {}).items()}
            alerted = {str(k) for k in stored.get("alerted", [])} & set(offline)
        except (AttributeError, TypeError, ValueError):
            log.warning("rule_state %r is not in the expected shape; ignoring it", STATE_KEY)
            return
        with self._lock:
            self._offline.update(offline)
            self._alerted |= alerted
            self._resumed = set(offline)
        log.info("offline-alert state resumed: %d device(s) offline", len(offline))

    def _save(self, state: dict[str, object]) -> None:
        # Written only when the offline set changes (rare), so once per change is cheap enough.
        try:
            with self._sessions() as session:
                rule_state.save(session, {STATE_KEY: state})
                session.commit()
        except SQLAlchemyError as exc:
            health.count("offline.db_errors")
            if db_writes.failed(WRITER, exc):
                log.warning("could not save the offline-alert state; trying again with each check")
            return
        self._unsaved = None
        db_writes.ok(WRITER)

    def _is_offline(self, now: float, timing: Timing, report: tuple[bool, float | None] | None) -> bool:
        last = timing.last_seen
        if report is not None:
            online, reported_seen = report
            if not online:
                return True  # mDash says the origin is gone: no need to wait out the silence
            if reported_seen is not None:
                # mDash heard from the origin after we did: it is alive, whatever its heartbeats say.
                last = max(last, reported_seen)
        return now - last > self.threshold(timing)

    # ---- which devices -----------------------------------------------------------------------

    def _devices(self, now: float) -> dict[str, Watched]:
        if self._loaded_at is None or now - self._loaded_at >= self._refresh_seconds or now < self._loaded_at:
            try:
                self._watched = self._load()
                self._loaded_at = now
            except SQLAlchemyError:
                # Keep the devices we knew; the next check tries the database again.
                health.count("offline.db_errors")
                log.warning("could not read which devices alert when offline", exc_info=True)
        return self._watched

    def _load(self) -> dict[str, Watched]:
        hub = self._settings.device_name
        out: dict[str, Watched] = {}
        with self._sessions() as session:
            outputs = session.execute(
                select(
                    OutputConfig.device_key,
                    OutputConfig.device_label,
                    OutputConfig.origin,
                    OutputConfig.alert_offline,
                )
            ).all()
            inputs = session.execute(
                select(
                    InputConfig.device_key,
                    InputConfig.device_label,
                    InputConfig.origin,
                    InputConfig.alert_offline,
                )
            ).all()
        # Outputs first so that an input sharing its key (one board, both roles) wins the label.
        for key, label, origin, alert in outputs:
            if origin != hub:  # the hub's own devices (buttons, SMS) have no heartbeat to miss
                out[key] = Watched(key, label or key, origin or "", alert is True)
        for key, label, origin, alert in inputs:
            if origin != hub:
                also = key in out and out[key].alert
                out[key] = Watched(key, label or key, origin or "", alert is not False or also)
        return out

    # ---- messages ----------------------------------------------------------------------------

    def _clock_time(self, when: float, now: float) -> str:
        local = datetime.fromtimestamp(when, self._tz)
        if local.date() == datetime.fromtimestamp(now, self._tz).date():
            return local.strftime("%H:%M")
        return local.strftime("%d %b %H:%M")  # an outage from another day needs its date

    def _offline_text(self, changes: list[_Change], now: float) -> str:
        def since(group: list[_Change]) -> str:
            # The latest last-heard: the outage began after it, so it is the truest "since" for a group.
            return self._clock_time(max(c.since for c in group), now)

        lines = []
        for header, group in _grouped(changes):
            if header is not None:
                why = "their broker or Pi may be down"
                lines.append(f"⚠️ {header} offline since {since(group)} ({why}): {_names(group)}")
            elif len({self._clock_time(c.since, now) for c in group}) == 1:
                lines.append(f"⚠️ Offline since {since(group)}: {_names(group)}")
            else:
                each = ", ".join(
                    f"{c.name} (since {self._clock_time(c.since, now)})" for c in group[:MAX_NAMES]
                )
                lines.append(f"⚠️ Offline: {each}{_more(group)}")
        return "\n".join(lines)

    def _back_text(self, changes: list[_Change]) -> str:
        lines = []
        for header, group in _grouped(changes):
            longest = max(c.minutes for c in group)
            if header is not None:
                lines.append(f"✅ {header} back online after {_duration(longest)}: {_names(group)}")
            elif len({c.minutes for c in group}) == 1:
                lines.append(f"✅ Back online after {_duration(longest)}: {_names(group)}")
            else:
                each = ", ".join(f"{c.name} (after {_duration(c.minutes)})" for c in group[:MAX_NAMES])
                lines.append(f"✅ Back online: {each}{_more(group)}")
        return "\n".join(lines)

    def _send(self, now: float, text: str) -> None:
        if self._push is None:
            return  # Telegram off (nobody reads NOTIFIER) or check() called outside the thread
        try:
            if not self._push.poll(SEND_WAIT_MS, zmq.POLLOUT):
                raise zmq.Again()
            inproc.send(self._push, Notification(timestamp=now, text=text))
        except zmq.ZMQError:
            # The notifier is stalled; the alert is already in the log, so say it was not delivered.
            health.count("offline.not_sent")
            log.error("offline alert not handed to the notifier (its queue is full): %s", text)


def _grouped(changes: list[_Change]) -> list[tuple[str | None, list[_Change]]]:
    """Split one check's changes into (header, devices): shared outages get a header naming the origin(s)."""
    changes = sorted(changes, key=lambda c: (c.origin, c.name.lower()))
    if len(changes) >= GROUP_TOTAL:
        origins = sorted({c.origin or "unknown origin" for c in changes})
        return [(f"{len(changes)} devices of {', '.join(origins)}", changes)]
    by_origin: dict[str, list[_Change]] = {}
    for change in changes:
        by_origin.setdefault(change.origin, []).append(change)
    out: list[tuple[str | None, list[_Change]]] = []
    rest: list[_Change] = []
    for origin, group in by_origin.items():
        if len(group) >= GROUP_PER_ORIGIN:
            out.append((f"{len(group)} devices of {origin or 'unknown origin'}", group))
        else:
            rest.extend(group)
    if rest:
        out.append((None, sorted(rest, key=lambda c: c.name.lower())))
    return out


def _names(group: list[_Change]) -> str:
    return ", ".join(c.name for c in group[:MAX_NAMES]) + _more(group)


def _more(group: list[_Change]) -> str:
    return f" and {len(group) - MAX_NAMES} more" if len(group) > MAX_NAMES else ""


def _duration(minutes: int) -> str:
    if minutes < 120:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"
