"""The auto-scheduler: daily enable and disable times per input and output, run by APScheduler 3.x."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cached_property
from typing import TYPE_CHECKING

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.core import zones
from app.core.settings import Settings
from app.engine import commands, config_changes
from app.store.models import InputConfig, OutputConfig
from pylib import threads

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

ACTOR = "scheduler"
# How often the schedule columns are re-read and diffed against the jobs. Polling (rather than a
# message from the processor) also catches changes made by any path, a restore or a hand edit,
# and a 2-second read of two small tables costs nothing.
POLL_SECONDS = 2.0
# A job more than this late (the process was suspended, the pool busy) is skipped, not replayed.
MISFIRE_GRACE_SECONDS = 60
KINDS: dict[str, type[InputConfig] | type[OutputConfig]] = {"input": InputConfig, "output": OutputConfig}
EDGES = (("enable", True), ("disable", False))


def _nonexistent(tz: tzinfo, naive: datetime) -> bool:
    """A wall time the spring change skips: it does not survive a round trip through UTC."""
    back = naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    return back != naive


def _repeat(tz: tzinfo, fire: datetime) -> bool:
    """True for the second occurrence of a wall time the autumn change shows twice."""
    naive = fire.replace(tzinfo=None, fold=0)
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset() or _nonexistent(tz, naive):
        return False
    return fire.astimezone(UTC) != first.astimezone(UTC)


def _gap_end(tz: tzinfo, fire: datetime) -> datetime:
    """For a wall time the spring change skips: the instant the clocks jump (e.g. 02:00 BST for 01:30)."""
    start = fire.replace(tzinfo=None, second=0, microsecond=0, fold=0)
    for _ in range(24 * 60):  # a gap is at most a few hours; the bound only guards against a loop
        earlier = start - timedelta(minutes=1)
        if not _nonexistent(tz, earlier):
            break
        start = earlier
    # The first skipped wall time read with the old offset (fold=0, PEP 495) is the moment of the change.
    return start.replace(tzinfo=tz, fold=0).astimezone(UTC).astimezone(tz)


class DailyTrigger(CronTrigger):  # type: ignore[misc]  # APScheduler 3 ships no type hints
    """A CronTrigger at HH:MM every day that fires exactly once per local day across DST changes.

    The zone is a zoneinfo one (APScheduler 3.11 takes them as they are), so the helpers above use
    PEP 495 folds. Unaided it fires a time in the autumn's repeated hour twice
    (01:30 BST, then 01:30 GMT) and a time in the spring's skipped hour an hour late (01:30 "GMT"
    = 02:30 BST, after a 02:15 job of the same day). Here the repeat is skipped and a skipped
    time fires when the clocks jump.
    """

    def __init__(self, hhmm: str, timezone: tzinfo) -> None:
        hour, minute = (int(part) for part in hhmm.split(":"))
        super().__init__(hour=hour, minute=minute, timezone=timezone)
        self.hhmm = hhmm

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        earliest = (
            now if previous_fire_time is None else min(now, previous_fire_time + timedelta(microseconds=1))
        )
        prev, cursor = previous_fire_time, now
        for _ in range(10):  # at most a couple of days are ever skipped
            fire: datetime | None = super().get_next_fire_time(prev, cursor)
            if fire is None:
                return None
            # In UTC: arithmetic on a zoneinfo time is wall-clock and drops the fold of a repeated hour.
            prev = fire.astimezone(UTC)
            cursor = prev + timedelta(seconds=1)
            if _repeat(self.timezone, fire):
                continue
            if _nonexistent(self.timezone, fire.replace(tzinfo=None)):
                moved = _gap_end(self.timezone, fire)
                if moved < earliest:
                    continue
                return moved
            return fire
        return None


def next_transition(
    enable: str | None, disable: str | None, tz: tzinfo, now: datetime
) -> tuple[datetime, bool] | None:
    """The next scheduled change for a device with these times: (when, enabled); None when not scheduled."""
    found: list[tuple[datetime, bool]] = []
    for hhmm, enabled in ((enable, True), (disable, False)):
        if isinstance(hhmm, str) and config_changes.HHMM.fullmatch(hhmm):
            fire = DailyTrigger(hhmm, tz).get_next_fire_time(None, now)
            if fire is not None:
                found.append((fire, enabled))
    return min(found, key=lambda item: item[0]) if found else None


def zone_of(stored: str | None, default: tzinfo) -> tzinfo | None:
    """A schedule's zone: its own (auto_schedule_tz, e.g. UTC on the original's rows) or USER_TZ.

    None when the stored name is not a zone (a hand edit): that schedule is skipped, not guessed.
    """
    if not stored:
        return default
    try:
        return zones.zone(stored)
    except KeyError:
        return None


def convert_time(hhmm: str, source: tzinfo, target: tzinfo, now: datetime) -> str:
    """The HH:MM in `target` of the instant HH:MM in `source` today (the source zone's today)."""
    hour, minute = (int(part) for part in hhmm.split(":"))
    day = now.astimezone(source).date()
    naive = datetime(day.year, day.month, day.day, hour, minute)
    instant = zones.localize(naive, source)
    return instant.astimezone(target).strftime("%H:%M")


@dataclass(frozen=True)
class Job:
    kind: str
    device_id: int
    device_key: str
    enabled: bool
    hhmm: str
    zone: str = ""  # the row's auto_schedule_tz; empty: USER_TZ

    @property
    def job_id(self) -> str:
        return f"{self.kind}:{self.device_id}:{'enable' if self.enabled else 'disable'}"


class AutoScheduler(threads.AppThread):
    """Keeps one APScheduler job per scheduled edge in step with the database; jobs ask the processor.

    At start no device is forced into the state its schedule implies: a manual change holds until
    the device's next scheduled transition, and a restart must not undo it. Missed times are not
    replayed (jobs live in memory and misfire after MISFIRE_GRACE_SECONDS).
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        clock: Callable[[], datetime] | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        super().__init__("AutoScheduler")
        self._sessions = session_factory
        self.tz = zones.zone(settings.user_tz)
        self._clock = clock or (lambda: datetime.now(self.tz))
        self._poll = poll_seconds
        self._jobs: dict[str, Job] = {}
        self._warned: dict[str, str | None] = {}
        self._enabled: bool | None = None
        self.syncs = 0  # completed syncs, for tests waiting for a change to be picked up

    @cached_property
    def scheduler(self) -> BackgroundScheduler:
        """APScheduler's scheduler, made on first use: in work(), on this thread, after the hub's start.

        Its module scans every installed distribution's entry points as its BaseScheduler class is
        defined: ~15 ms that were on the main thread's path to ready when the hub imported it.
        """
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        return BackgroundScheduler(
            timezone=self.tz,
            # One worker: an enable and a disable at the same minute are sent in order, never raced.
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
        )

    # ---- thread -----------------------------------------------------------------------------

    def work(self) -> None:
        self.scheduler.start()
        try:
            while True:
                self.sync()
                if threads.sleep(self._poll):
                    break
        finally:
            self.scheduler.shutdown(wait=False)

    # ---- schedule table -> jobs ------------------------------------------------------------

    def wanted(self, session: Session) -> dict[str, Job]:
        """The jobs the database asks for; an invalid stored time is logged once and skipped."""
        jobs: dict[str, Job] = {}
        for kind, model in KINDS.items():
            rows = session.execute(
                select(
                    model.id,
                    model.device_key,
                    model.auto_schedule_enable,
                    model.auto_schedule_disable,
                    model.auto_schedule_tz,
                ).where(model.auto_schedule.is_(True))
            )
            for device_id, key, enable, disable, zone in rows:
                if zone_of(zone, self.tz) is None:
                    job_id = f"{kind}:{device_id}:zone"
                    if self._warned.get(job_id, "\0") != zone:
                        self._warned[job_id] = zone
                        log.warning(
                            "%s %r: stored schedule time zone %r is unknown; not scheduled "
                            "(convert it to local time on /config/schedule)",
                            kind,
                            key,
                            zone,
                        )
                    continue
                for (edge, enabled), raw in zip(EDGES, (enable, disable), strict=True):
                    job = Job(kind, device_id, key, enabled, raw or "", zone or "")
                    if isinstance(raw, str) and config_changes.HHMM.fullmatch(raw):
                        jobs[job.job_id] = job
                        self._warned.pop(job.job_id, None)
                    elif self._warned.get(job.job_id, "\0") != raw:
                        self._warned[job.job_id] = raw
                        log.warning(
                            "%s %r: stored %s time %r is not HH:MM; that edge is not scheduled "
                            "(save the schedule again on /config/schedule)",
                            kind,
                            key,
                            edge,
                            raw,
                        )
        return jobs

    def sync(self) -> None:
        """Re-read the schedules and add, replace or remove jobs that differ; keep them on a DB error."""
        try:
            with self._sessions() as session:
                wanted = self.wanted(session)
                enabled = config_changes.scheduler_enabled(session)
        except SQLAlchemyError as exc:
            log.warning("could not read the schedules; keeping the current jobs: %s", exc)
            return
        if enabled != self._enabled:
            log.info("auto-scheduler is %s", "on" if enabled else "off: scheduled changes are skipped")
            self._enabled = enabled
        for job_id in set(self._jobs) - set(wanted):
            self.scheduler.remove_job(job_id)
            log.info("unscheduled %s", job_id)
            del self._jobs[job_id]
        for job_id, job in wanted.items():
            if self._jobs.get(job_id) == job:
                continue
            zone = zone_of(job.zone, self.tz) or self.tz  # wanted() left out unknown zones
            self.scheduler.add_job(
                self.transition,
                trigger=DailyTrigger(job.hhmm, zone),
                args=(job.kind, job.device_id, job.enabled),
                id=job_id,
                name=f"{'enable' if job.enabled else 'disable'} {job.kind} {job.device_key} at {job.hhmm}",
                replace_existing=True,
            )
            self._jobs[job_id] = job
            log.info("scheduled %s %r: %s daily at %s %s", job.kind, job.device_key, job_id, job.hhmm, zone)
        self.syncs += 1

    # ---- the job ----------------------------------------------------------------------------

    def transition(self, kind: str, device_id: int, enabled: bool) -> bool:
        """Enable or disable one device through the EventProcessor; True when the change was applied."""
        try:
            with self._sessions() as session:
                on = config_changes.scheduler_enabled(session)
        except SQLAlchemyError as exc:
            log.warning("scheduled change of %s %d skipped: database unavailable: %s", kind, device_id, exc)
            return False
        verb = "enable" if enabled else "disable"
        if not on:
            log.info("auto-scheduler is off: not going to %s %s %d", verb, kind, device_id)
            return False
        action = "update_input" if kind == "input" else "update_output"
        reply = commands.request(
            action, {"id": device_id, "fields": {"device_enabled": enabled}}, actor=ACTOR
        )
        if not reply.ok:
            log.warning("scheduled %s of %s %d refused: %s", verb, kind, device_id, reply.error)
            return False
        log.info("scheduled %s of %s %d done", verb, kind, device_id)
        return True

    # ---- status -----------------------------------------------------------------------------

    def next_run_times(self) -> dict[str, datetime | None]:
        """Each job's next run time as APScheduler holds it."""
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}

    def now(self) -> datetime:
        return self._clock()
