"""AuditWriter: stores everything the event path decides or learns, in batches, beside the path.

Over ~400 lines as one thing: the thread's loop and what it holds while the database cannot write
(batching, retry with back-off, one-by-one fallback, health, pruning), for each kind it is handed.
The SQL lives in decision_writes (decision batches) and store_writes (registrations, readings).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from typing import Any

import zmq
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from app.core import health
from app.core.channels import (
    AUDIT,
    AUDIT_HWM,
    PROCESSOR,
    AuditRecord,
    LastSeen,
    MeterReading,
    Registered,
    Registration,
    StateWrite,
)
from app.core.settings import Settings
from app.store import audit, db_writes, decision_writes, registry, rule_state, store_writes
from pylib import inproc, threads

log = logging.getLogger(__name__)

BATCH_SECONDS = 0.1
BATCH_SIZE = 500
NAP_SECONDS = 0.02  # between looks for more records while a batch fills
# While the database cannot write, held records are retried after this long, doubling up to the most.
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 10.0
WRITER = "audit"
# How long one write waits for another process's lock before the writer holds it and reads its
# queue again: the threads that feed the queue must never find it full (issue 17, item 6).
BUSY_SECONDS = 1.0
# At shutdown, how long the writer waits for the threads that feed it to hand over their last writes.
UPSTREAM = ("EventProcessor", "HeartbeatFilter")
UPSTREAM_SECONDS = 2.0
MAX_REGISTRATIONS = 10_000  # registration messages held while the database cannot write
MAX_LAST_SEEN = 20_000  # device keys (presence.MAX_KEYS)
FIRST_PRUNE_SECONDS = 300.0
PRUNE_SECONDS = 86400.0


def _bad_records(exc: SQLAlchemyError) -> bool:
    """True when the records themselves were refused (a constraint, a value the column cannot hold),
    False when the database could not write at all (a full disk, a lock, a lost connection)."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    # a parameter SQLAlchemy could not even bind, before the database saw it
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


class AuditWriter(threads.AppThread):
    """Writes what the event path hands over; while the database cannot write it holds it in memory.

    Decisions and rule state as before; registrations (answered with Registered, so the processor
    reads the new rows' ids), last-seen times and meter readings too. Each kind is bounded: held
    decisions and readings at AUDIT_BUFFER_SIZE (the oldest dropped first and counted as
    audit.lost / meter_readings.lost), rule state and last-seen at one entry per key, registrations
    at MAX_REGISTRATIONS (refused past it, counted and logged). Everything held is written, oldest
    first and registrations before anything that names their devices, as soon as a retry succeeds.
    The loop keeps taking messages meanwhile (a write waits at most BUSY_SECONDS for a lock), so
    the threads on the event path never wait. At shutdown it waits for them to hand over their
    last writes, then drains its queue.
    """

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        super().__init__("AuditWriter")
        self._settings = settings
        self._sessions = session_factory
        self._pull = inproc.bind_pull(AUDIT, AUDIT_HWM)
        self._inbox = inproc.Inbox(self._pull)  # its peers send alone or in batches
        self._to_processor: zmq.Socket[bytes] | None = None
        self._next_prune = time.monotonic() + FIRST_PRUNE_SECONDS
        self._held: deque[AuditRecord] = deque()
        self._held_max = settings.audit_buffer_size
        # rule_state key -> (value, version): the newest of each key not yet written
        self._held_state: dict[str, tuple[Any, float]] = {}
        self._registrations: list[Registration] = []
        self._seen: dict[str, float] = {}  # device key -> newest last-seen time not yet written
        self._readings: deque[MeterReading] = deque()
        self._failing = False  # a write failed for want of the database: the rest wait for the retry
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_SECONDS
        self._warned_full = False
        self._warned: set[str] = set()  # kinds whose refusals were logged since the last recovery

    def held(self) -> int:
        """Decisions waiting in memory for the database (read by /metrics from another thread)."""
        return len(self._held)

    def work(self) -> None:
        health.set_state("audit_writer", "running")
        self._to_processor = inproc.connect_push(PROCESSOR)
        batch: list[AuditRecord] = []
        waited = False
        try:
            while True:
                stopping = threads.shutting_down.is_set()
                if stopping and not waited:
                    waited = True
                    self._await_upstream()
                deadline = time.monotonic() + BATCH_SECONDS
                while len(batch) < BATCH_SIZE and not stopping:
                    left = deadline - time.monotonic()
                    # With a batch started, take what is waiting and nap between looks rather than
                    # wake for every record: at thousands of events a second a wake-up per record
                    # (a poll, a thread switch, a GIL handover) cost more than the record's insert.
                    wait_ms = 0 if batch else max(0, int(left * 1000))
                    try:
                        msg = self._inbox.recv(timeout_ms=wait_ms)
                    except inproc.MessageError as exc:
                        log.warning("dropping undecodable frame: %s", exc)
                        continue
                    if msg is None:
                        if batch and left > 0 and not threads.sleep(min(NAP_SECONDS, left)):
                            continue
                        break
                    self._take(msg, batch)
                if stopping:
                    batch.extend(self._drain())
                self._write(batch, stopping)
                batch = []
                if stopping:
                    self._give_up()
                    return
                if time.monotonic() >= self._next_prune and not self._holding():
                    self._prune()
        finally:
            self._pull.close()
            if self._to_processor is not None:
                self._to_processor.close()

    def _await_upstream(self) -> None:
        """Let the processor and the filter finish: their last rule state and last-seen come through here."""
        until = time.monotonic() + UPSTREAM_SECONDS
        for thread in threads.tracked():
            if thread.name in UPSTREAM and thread is not self and thread.is_alive():
                thread.join(max(0.0, until - time.monotonic()))

    def _take(self, msg: object, batch: list[AuditRecord]) -> None:
        if isinstance(msg, AuditRecord):
            batch.append(msg)
        elif isinstance(msg, StateWrite):
            self._hold_state(msg.values, msg.version)
        elif isinstance(msg, Registration):
            if len(self._registrations) >= MAX_REGISTRATIONS:
                self._refuse("registration", len(msg.new) + len(msg.refreshed) + len(msg.generations))
            else:
                self._registrations.append(msg)
        elif isinstance(msg, LastSeen):
            for key, when in msg.seen.items():
                if key in self._seen:
                    self._seen[key] = max(self._seen[key], when)
                elif len(self._seen) < MAX_LAST_SEEN:
                    self._seen[key] = when
                else:
                    self._refuse("last_seen", 1)
        elif isinstance(msg, MeterReading):
            self._readings.append(msg)
            if len(self._readings) > self._held_max:
                self._readings.popleft()
                self._refuse("meter_readings", 1, oldest=True)

    def _refuse(self, kind: str, n: int, oldest: bool = False) -> None:
        """Past a bound: counted, and logged once until the database writes again (never silent)."""
        health.count(f"{kind}.lost", n)
        if kind not in self._warned:
            self._warned.add(kind)
            log.error(
                "the database cannot write and the held %s are at their bound: %s",
                kind.replace("_", " "),
                "dropping the oldest" if oldest else "refusing new ones",
            )

    def _drain(self) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        while (msg := self._inbox.recv(timeout_ms=0)) is not None:
            self._take(msg, out)
        return out

    def _holding(self) -> bool:
        return bool(self._held or self._held_state or self._registrations or self._seen or self._readings)

    def _write(self, batch: list[AuditRecord], stopping: bool) -> None:
        """Write everything that waits, registrations first; after a failure only once the retry is due."""
        # (A decision may name a device registered a moment ago: its registration is written first.)
        if self._failing and not stopping and time.monotonic() < self._retry_at:
            if batch:
                self._hold(batch)
            return
        was_failing = self._failing
        # Decisions last: a retry that clears the decisions' failure finds everything else written.
        if not (
            self._write_registrations()
            and self._write_state()
            and self._write_readings()
            and self._write_seen()
        ):
            if batch:
                self._hold(batch)
            return
        if self._held:
            if batch:
                self._hold(batch)  # keep the order; the held ones go first
            if not self._retry_decisions():
                return
        elif batch and not self._store(batch):
            return
        if was_failing:
            log.info("the database writes again: everything held is written")
            self._recovered()

    def _fail(self, writer: str, exc: SQLAlchemyError) -> bool:
        db_writes.failed(writer, exc)
        self._failing = True
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(RETRY_MAX_SECONDS, self._retry_delay * 2)
        return False

    # ---- registrations, readings, last-seen, rule state -----------------------------------------

    def _write_registrations(self) -> bool:
        if not self._registrations:
            return True
        try:
            with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                keys = [key for reg in self._registrations for key in store_writes.register(session, reg)]
                session.commit()
        except SQLAlchemyError as exc:
            if not _bad_records(exc):
                health.count("heartbeat_filter.db_errors")
                return self._fail("registration", exc)
            keys = self._registrations_one_by_one()
        self._registrations = []
        db_writes.ok("registration")
        self._announce(keys)
        return True

    def _registrations_one_by_one(self) -> list[str]:
        keys: list[str] = []
        for reg in self._registrations:
            try:
                with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                    keys += store_writes.register(session, reg)
                    session.commit()
            except SQLAlchemyError as exc:
                health.count("registration.rejected")
                first = str(exc).splitlines()[0][:200]
                log.warning("the database refused devices from %s: %s", reg.origin, first)
        return keys

    def _announce(self, keys: list[str]) -> None:
        """Tell the processor which rows it may now read (it decides from memory until then)."""
        if not keys or self._to_processor is None:
            return
        try:
            self._to_processor.send(inproc.encode(Registered(keys=sorted(set(keys)))), zmq.NOBLOCK)
        except zmq.Again:
            # The processor's periodic reload reads them anyway; its queue is full of events now.
            health.count("audit.registered_unsent")

    def _write_state(self) -> bool:
        if not self._held_state:
            return True
        try:
            with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                # Core, and one statement per kind for every key: a SELECT and an UPDATE per key
                # through the ORM cost ~5 % of the hub's CPU under load (py-spy, docs/performance.md).
                rule_state.save_versions(session, self._held_state)
                session.commit()
        except SQLAlchemyError as exc:
            health.count("processor.state_errors")
            return self._fail("rule_state", exc)
        self._held_state.clear()
        db_writes.ok("rule_state")
        return True

    def _hold_state(self, values: dict[str, Any], version: float) -> None:
        # One entry per rule_state key (a fixed set: inputs, outputs, meter zones), so this stays bounded.
        for key, value in values.items():
            kept = self._held_state.get(key)
            if kept is None or kept[1] <= version:
                self._held_state[key] = (value, version)

    def _write_readings(self) -> bool:
        if not self._readings:
            return True
        readings = list(self._readings)
        try:
            with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                dropped = store_writes.meter_readings(session, readings)
                session.commit()
        except SQLAlchemyError as exc:
            if not _bad_records(exc):
                return self._fail("meter_readings", exc)
            dropped = self._readings_one_by_one(readings)
        if dropped:
            health.count("meter_readings.unregistered", dropped)
            log.warning("%d meter reading(s) of inputs not in the database were not stored", dropped)
        self._readings.clear()
        db_writes.ok("meter_readings")
        return True

    def _readings_one_by_one(self, readings: list[MeterReading]) -> int:
        dropped = 0
        for reading in readings:
            try:
                with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                    dropped += store_writes.meter_readings(session, [reading])
                    session.commit()
            except SQLAlchemyError as exc:
                health.count("meter_readings.rejected")
                first = str(exc).splitlines()[0][:200]
                log.warning("the database refused a reading of %r: %s", reading.input_key, first)
        return dropped

    def _write_seen(self) -> bool:
        if not self._seen:
            return True
        try:
            with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                registry.flush_last_seen(session, self._seen)
        except SQLAlchemyError as exc:
            # Kept in memory (the dashboard reads presence first) and written by the retry.
            health.count("heartbeat_filter.db_errors")
            return self._fail("last_seen", exc)
        self._seen = {}
        db_writes.ok("last_seen")
        return True

    # ---- decisions --------------------------------------------------------------------------------

    def _store(self, batch: list[AuditRecord]) -> bool:
        """Write a batch, or hold it when the database cannot write."""
        try:
            with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                decision_writes.write(session, batch)
        except SQLAlchemyError as exc:
            if _bad_records(exc):
                return self._one_by_one(batch)
            self._hold(batch)
            return self._fail(WRITER, exc)
        health.count("audit.decisions", len(batch))
        db_writes.ok(WRITER)
        return True

    def _one_by_one(self, batch: list[AuditRecord]) -> bool:
        """Write each record of a refused batch alone, so one bad record costs only itself."""
        for i, rec in enumerate(batch):
            try:
                with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                    decision_writes.write(session, [rec])
            except SQLAlchemyError as exc:
                if not _bad_records(exc):
                    self._hold(batch[i:])
                    return self._fail(WRITER, exc)
                health.count("audit.rejected")
                log.warning(
                    "the database refused the decision for %r: %s",
                    rec.decision.get("input_key"),
                    str(exc).splitlines()[0][:200],
                )
                continue
            health.count("audit.decisions")
        db_writes.ok(WRITER)
        return True

    def _hold(self, records: list[AuditRecord]) -> None:
        if not self._held:
            log.warning(
                "holding decisions in memory until the database writes again (at most %d: AUDIT_BUFFER_SIZE)",
                self._held_max,
            )
        self._held.extend(records)
        health.count("audit.held", len(records))
        dropped = len(self._held) - self._held_max
        if dropped > 0:
            for _ in range(dropped):
                self._held.popleft()
            health.count("audit.lost", dropped)
            if not self._warned_full:
                self._warned_full = True
                log.error(
                    "%d held decisions are the most AUDIT_BUFFER_SIZE allows; dropping the oldest",
                    self._held_max,
                )

    def _retry_decisions(self) -> bool:
        """Write the held decisions, oldest first; stop at the first failure and try again later."""
        written = 0
        try:
            while self._held:
                chunk = list(itertools.islice(self._held, BATCH_SIZE))
                with store_writes.briefly_waiting(self._sessions, BUSY_SECONDS) as session:
                    decision_writes.write(session, chunk)
                for _ in chunk:
                    self._held.popleft()
                written += len(chunk)
                health.count("audit.decisions", len(chunk))
        except SQLAlchemyError as exc:
            if written:
                log.info("wrote %d held decisions; %d still held", written, len(self._held))
            if _bad_records(exc):
                # Not the disk: one of the held records is refused. Sort them out one by one.
                records, self._held = list(self._held), deque()
                return self._one_by_one(records)
            return self._fail(WRITER, exc)
        if written:
            log.info("wrote %d held decisions", written)
        db_writes.ok(WRITER)
        return True

    def _recovered(self) -> None:
        self._failing = False
        self._retry_delay = RETRY_MIN_SECONDS
        self._warned_full = False
        self._warned.clear()

    def _give_up(self) -> None:
        """At shutdown, after a last try: whatever is still held is lost, and said so."""
        if self._held:
            health.count("audit.lost", len(self._held))
            log.error("the database cannot write: %d held decisions are lost at shutdown", len(self._held))
            self._held.clear()
        lost = {
            "rule state entries": len(self._held_state),
            "registrations": len(self._registrations),
            "last-seen times": len(self._seen),
            "meter readings": len(self._readings),
        }
        for what, n in lost.items():
            if n:
                log.error("the database cannot write: %d %s lost at shutdown", n, what)
        self._held_state.clear()
        self._registrations = []
        self._seen = {}
        self._readings.clear()

    def _prune(self) -> None:
        self._next_prune = time.monotonic() + PRUNE_SECONDS
        try:
            deleted = audit.prune(
                self._sessions,
                self._settings.event_log_retention_days,
                self._settings.event_log_max_rows,
                prune_migrated=self._settings.event_log_prune_migrated,
            )
            log.info("audit retention: deleted %s", deleted)
        except SQLAlchemyError:
            log.exception("audit retention failed; retrying tomorrow")
