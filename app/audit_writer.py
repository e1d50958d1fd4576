"""AuditWriter: stores decision records and event_log rows in batches, off the event path, and prunes them."""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from app import audit, db_writes, health, rule_state
from app.channels import AUDIT, AuditRecord, StateWrite
from app.models import Decision, DecisionOutput, EventLog
from app.settings import Settings
from pylib import inproc, threads

log = logging.getLogger(__name__)

BATCH_SECONDS = 0.1
BATCH_SIZE = 500
NAP_SECONDS = 0.02  # between looks for more records while a batch fills
# While the database cannot write, held records are retried after this long, doubling up to the most.
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 10.0
WRITER = "audit"
FIRST_PRUNE_SECONDS = 300.0
PRUNE_SECONDS = 86400.0


# Core inserts on the tables, built once: the ORM's bulk path on the mapped classes costs several
# times as much per row (it runs each row through the mapper first).
_DECISION = Decision.__table__
_INSERT_DECISIONS = insert(_DECISION).returning(_DECISION.c.id, sort_by_parameter_order=True)
_INSERT_OUTPUTS = insert(DecisionOutput.__table__)
_INSERT_EVENT_LOG = insert(EventLog.__table__)


def _naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def write(session: Session, records: list[AuditRecord]) -> None:
    """Insert a batch of decisions with their outputs and event_log rows in one transaction.

    Core executemany inserts (with RETURNING for the new decision ids) cost a fraction of the ORM
    unit of work, which matters at thousands of events a second.
    """
    if not records:
        return
    decisions = [
        {
            "timestamp": _naive_utc(rec.decision["timestamp"]),
            "input_device_id": rec.decision.get("input_device_id"),
            "input_key": rec.decision["input_key"],
            "input_label": rec.decision.get("input_label"),
            "origin": rec.decision.get("origin"),
            "event_detail": rec.decision.get("event_detail"),
            "fired": bool(rec.decision.get("fired")),
            "reason": rec.decision.get("reason"),
            "detail": rec.decision.get("detail"),
        }
        for rec in records
    ]
    ids = session.scalars(_INSERT_DECISIONS, decisions).all()
    outputs = [
        {
            "decision_id": decision_id,
            "output_device_id": o.get("output_device_id"),
            "output_key": o["output_key"],
            "output_label": o.get("output_label"),
            "fired": bool(o.get("fired")),
            "reason": o.get("reason"),
            "detail": o.get("detail"),
        }
        for decision_id, rec in zip(ids, records, strict=True)
        for o in rec.decision.get("outputs", ())
    ]
    if outputs:
        session.execute(_INSERT_OUTPUTS, outputs)
    event_log = [
        {
            "input_device": row["input_device"],
            "output_device": row["output_device"],
            "timestamp": _naive_utc(row["timestamp"]),
            "decision_id": decision_id,
        }
        for decision_id, rec in zip(ids, records, strict=True)
        for row in rec.event_log
    ]
    if event_log:
        session.execute(_INSERT_EVENT_LOG, event_log)
    session.commit()


def _bad_records(exc: SQLAlchemyError) -> bool:
    """True when the records themselves were refused (a constraint, a value the column cannot hold),
    False when the database could not write at all (a full disk, a lock, a lost connection)."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    # a parameter SQLAlchemy could not even bind, before the database saw it
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


class AuditWriter(threads.AppThread):
    """Writes decisions and rule state; while the database cannot write it holds them in memory.

    Held decisions (at most AUDIT_BUFFER_SIZE, the oldest dropped first and counted as
    audit.lost) and held rule state (the newest value per key) are written, oldest first, as soon
    as a retry succeeds. The loop keeps taking records meanwhile, so the processor never waits.
    """

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        super().__init__("AuditWriter")
        self._settings = settings
        self._sessions = session_factory
        self._pull = inproc.bind_pull(AUDIT)
        self._next_prune = time.monotonic() + FIRST_PRUNE_SECONDS
        self._held: deque[AuditRecord] = deque()
        self._held_max = settings.audit_buffer_size
        # rule_state key -> (value, version): the newest of each key that could not be written
        self._held_state: dict[str, tuple[Any, float]] = {}
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_SECONDS
        self._warned_full = False

    def held(self) -> int:
        """Decisions waiting in memory for the database (read by /metrics from another thread)."""
        return len(self._held)

    def work(self) -> None:
        health.set_state("audit_writer", "running")
        batch: list[AuditRecord] = []
        try:
            while True:
                stopping = threads.shutting_down.is_set()
                deadline = time.monotonic() + BATCH_SECONDS
                while len(batch) < BATCH_SIZE and not stopping:
                    left = deadline - time.monotonic()
                    # With a batch started, take what is waiting and nap between looks rather than
                    # wake for every record: at thousands of events a second a wake-up per record
                    # (a poll, a thread switch, a GIL handover) cost more than the record's insert.
                    wait_ms = 0 if batch else max(0, int(left * 1000))
                    try:
                        msg = inproc.recv(self._pull, timeout_ms=wait_ms)
                    except inproc.MessageError as exc:
                        log.warning("dropping undecodable frame: %s", exc)
                        continue
                    if msg is None:
                        if batch and left > 0 and not threads.sleep(min(NAP_SECONDS, left)):
                            continue
                        break
                    if isinstance(msg, AuditRecord):
                        batch.append(msg)
                    elif isinstance(msg, StateWrite):
                        self._write_state(msg)
                if stopping:
                    batch.extend(self._drain())
                if batch:
                    self._store(batch)
                    batch = []
                if self._holding() and (stopping or time.monotonic() >= self._retry_at):
                    self._retry()
                if stopping:
                    self._give_up()
                    return
                if time.monotonic() >= self._next_prune and not self._holding():
                    self._prune()
        finally:
            self._pull.close()

    def _drain(self) -> list[AuditRecord]:
        out = []
        while (msg := inproc.recv(self._pull, timeout_ms=0)) is not None:
            if isinstance(msg, AuditRecord):
                out.append(msg)
            elif isinstance(msg, StateWrite):
                self._write_state(msg)
        return out

    def _holding(self) -> bool:
        return bool(self._held or self._held_state)

    # ---- rule state -----------------------------------------------------------------------------

    def _write_state(self, msg: StateWrite) -> None:
        """Store the processor's rule state; while the database cannot write, hold the newest value
        of each key and write it with the held decisions."""
        if self._holding():
            self._hold_state(msg.values, msg.version)  # the retry writes it after the held decisions
            return
        try:
            with self._sessions() as session:
                rule_state.save(session, msg.values, msg.version)
                session.commit()
        except SQLAlchemyError as exc:
            health.count("processor.state_errors")
            db_writes.failed(WRITER, exc)
            self._hold_state(msg.values, msg.version)
            self._schedule_retry()
            return
        db_writes.ok(WRITER)

    def _hold_state(self, values: dict[str, Any], version: float) -> None:
        # One entry per rule_state key (a fixed set: inputs, outputs, meter zones), so this stays bounded.
        for key, value in values.items():
            kept = self._held_state.get(key)
            if kept is None or kept[1] <= version:
                self._held_state[key] = (value, version)

    # ---- decisions --------------------------------------------------------------------------------

    def _store(self, batch: list[AuditRecord]) -> None:
        """Write a batch, or hold it when the database cannot write (behind any records already held)."""
        if self._held:
            self._hold(batch)  # keep the order; the retry writes them when the database is back
            return
        try:
            with self._sessions() as session:
                write(session, batch)
        except SQLAlchemyError as exc:
            if _bad_records(exc):
                self._one_by_one(batch)
                return
            db_writes.failed(WRITER, exc)
            self._hold(batch)
            self._schedule_retry()
            return
        health.count("audit.decisions", len(batch))
        if not self._holding():
            db_writes.ok(WRITER)

    def _one_by_one(self, batch: list[AuditRecord]) -> None:
        """Write each record of a refused batch alone, so one bad record costs only itself."""
        for i, rec in enumerate(batch):
            try:
                with self._sessions() as session:
                    write(session, [rec])
            except SQLAlchemyError as exc:
                if not _bad_records(exc):
                    db_writes.failed(WRITER, exc)
                    self._hold(batch[i:])
                    self._schedule_retry()
                    return
                health.count("audit.rejected")
                log.warning(
                    "the database refused the decision for %r: %s",
                    rec.decision.get("input_key"),
                    str(exc).splitlines()[0][:200],
                )
                continue
            health.count("audit.decisions")

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

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(RETRY_MAX_SECONDS, self._retry_delay * 2)

    def _retry(self) -> None:
        """Write what is held, oldest first; stop at the first failure and try again later."""
        written = 0
        states = len(self._held_state)
        try:
            while self._held:
                chunk = list(itertools.islice(self._held, BATCH_SIZE))
                with self._sessions() as session:
                    write(session, chunk)
                for _ in chunk:
                    self._held.popleft()
                written += len(chunk)
                health.count("audit.decisions", len(chunk))
            if self._held_state:
                with self._sessions() as session:
                    for key, (value, version) in self._held_state.items():
                        rule_state.save(session, {key: value}, version)
                    session.commit()
                self._held_state.clear()
        except SQLAlchemyError as exc:
            if written:
                log.info("wrote %d held decisions; %d still held", written, len(self._held))
            if self._held and _bad_records(exc):
                # Not the disk: one of the held records is refused. Sort them out one by one.
                records, self._held = list(self._held), deque()
                self._one_by_one(records)
                if not self._holding():
                    self._recovered()
                return
            db_writes.failed(WRITER, exc)
            self._schedule_retry()
            return
        log.info("the database writes again: wrote %d held decisions, %d rule state entries", written, states)
        self._recovered()

    def _recovered(self) -> None:
        self._retry_delay = RETRY_MIN_SECONDS
        self._warned_full = False
        db_writes.ok(WRITER)

    def _give_up(self) -> None:
        """At shutdown, after a last try: whatever is still held is lost, and said so."""
        if self._held:
            health.count("audit.lost", len(self._held))
            log.error("the database cannot write: %d held decisions are lost at shutdown", len(self._held))
            self._held.clear()
        if self._held_state:
            log.error("the database cannot write: %d rule state entries lost", len(self._held_state))
            self._held_state.clear()

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
