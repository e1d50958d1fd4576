"""AuditWriter: stores decision records and event_log rows in batches, off the event path, and prunes them."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import audit, health, rule_state
from app.channels import AUDIT, AuditRecord, StateWrite
from app.models import Decision, DecisionOutput, EventLog
from app.settings import Settings
from pylib import inproc, threads

log = logging.getLogger(__name__)

BATCH_SECONDS = 0.1
BATCH_SIZE = 500
NAP_SECONDS = 0.02  # between looks for more records while a batch fills
# A batch that cannot be written is retried this many times before it is counted as lost.
MAX_RETRIES = 5
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


class AuditWriter(threads.AppThread):
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        super().__init__("AuditWriter")
        self._settings = settings
        self._sessions = session_factory
        self._pull = inproc.bind_pull(AUDIT)
        self._next_prune = time.monotonic() + FIRST_PRUNE_SECONDS

    def work(self) -> None:
        health.set_state("audit_writer", "running")
        batch: list[AuditRecord] = []
        retries = 0
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
                    retries = self._write(batch, retries)
                    if retries == 0:
                        batch = []
                if stopping:
                    return
                if time.monotonic() >= self._next_prune:
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

    def _write_state(self, msg: StateWrite) -> None:
        """Store the processor's rule state; a failure is logged and counted (the processor's
        shutdown snapshot writes every piece of state again)."""
        try:
            with self._sessions() as session:
                rule_state.save(session, msg.values, msg.version)
                session.commit()
        except SQLAlchemyError as exc:
            health.count("processor.state_errors")
            log.warning("could not save %d rule state entries: %s", len(msg.values), exc)

    def _write(self, batch: list[AuditRecord], retries: int) -> int:
        """Write a batch; returns 0 when done (or given up), else the retry count so far."""
        try:
            with self._sessions() as session:
                write(session, batch)
            health.count("audit.decisions", len(batch))
            return 0
        except SQLAlchemyError as exc:
            retries += 1
            if retries >= MAX_RETRIES:
                health.count("audit.lost", len(batch))
                log.error("gave up writing %d audit records: %s", len(batch), exc)
                return 0
            log.warning("could not write %d audit records (try %d): %s", len(batch), retries, exc)
            threads.sleep(0.5 * retries)
            return retries

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
