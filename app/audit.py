"""Retention for the audit trail: prunes old decision, decision_output and event_log rows in small batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import Decision, DecisionOutput, EventLog, MeterHistory
from pylib import threads

log = logging.getLogger(__name__)

# Small enough that one batch holds SQLite's write lock for milliseconds, so the event loop and
# the web threads (waiting in their busy timeout) get their turn between batches.
BATCH_SIZE = 500
# A short gap between batches: SQLite's busy handler polls, and a pruner that re-takes the lock
# at once could keep a waiting writer out for the whole prune.
BATCH_PAUSE = 0.02


def _utc_naive(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC).replace(tzinfo=None)
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _delete_decisions(session: Session, ids: list[int]) -> dict[str, int]:
    # SQLite does not enforce the ON DELETE CASCADE (foreign keys are off), so children go first
    outputs = session.execute(
        delete(DecisionOutput).where(DecisionOutput.decision_id.in_(ids)),
        execution_options={"synchronize_session": False},
    )
    decisions = session.execute(
        delete(Decision).where(Decision.id.in_(ids)), execution_options={"synchronize_session": False}
    )
    return {"decision": decisions.rowcount, "decision_output": outputs.rowcount}  # type: ignore[attr-defined]


def _delete_meter_history(session: Session, ids: list[int]) -> dict[str, int]:
    result = session.execute(
        delete(MeterHistory).where(MeterHistory.id.in_(ids)), execution_options={"synchronize_session": False}
    )
    return {"meter_history": result.rowcount}  # type: ignore[attr-defined]


def _delete_events(session: Session, ids: list[int]) -> dict[str, int]:
    result = session.execute(
        delete(EventLog).where(EventLog.id.in_(ids)), execution_options={"synchronize_session": False}
    )
    return {"event_log": result.rowcount}  # type: ignore[attr-defined]


class _Pruner:
    def __init__(self, factory: sessionmaker[Session], batch_size: int, pause: float) -> None:
        self.factory = factory
        self.batch_size = batch_size
        self.pause = pause
        self.counts = {"decision": 0, "decision_output": 0, "event_log": 0, "meter_history": 0}
        self.stopped = False

    def run(
        self,
        model: type[Decision] | type[EventLog] | type[MeterHistory],
        where: ColumnElement[bool] | None,
        limit: int | None,
        remove: Callable[[Session, list[int]], dict[str, int]],
    ) -> None:
        """Delete the oldest rows of model matching `where`, at most `limit` of them, batch by batch."""
        # NULL timestamps (possible in the original's event_log) count as oldest: their age is unknown
        order = (model.timestamp.asc().nulls_first(), model.id.asc())
        while not self.stopped and (limit is None or limit > 0):
            size = self.batch_size if limit is None else min(self.batch_size, limit)
            query = select(model.id).order_by(*order).limit(size)
            if where is not None:
                query = query.where(where)
            with self.factory() as session, session.begin():
                ids = list(session.scalars(query))
                if not ids:
                    return
                deleted = remove(session, ids)
            for table, n in deleted.items():
                self.counts[table] += n
            if limit is not None:
                limit -= len(ids)
            if len(ids) < size:
                return
            # doubles as the pause between batches; a shutdown leaves the rest for the next prune
            self.stopped = threads.shutting_down.wait(self.pause)

    def excess(self, model: type[Decision] | type[EventLog] | type[MeterHistory], max_rows: int) -> int:
        with self.factory() as session:
            total = session.scalar(select(func.count()).select_from(model)) or 0
        return max(0, total - max_rows)


def prune(
    session_factory: sessionmaker[Session],
    retention_days: int,
    max_rows: int,
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    pause: float = BATCH_PAUSE,
) -> dict[str, int]:
    """Delete audit rows older than retention_days, then the oldest beyond max_rows per table.

    Applies to decision (with its decision_output rows) and event_log independently. `now` is
    naive UTC like the stored timestamps (an aware datetime is converted). Returns the number of
    rows deleted per table: {"decision": n, "decision_output": n, "event_log": n, "meter_history": n}.
    """
    cutoff = _utc_naive(now) - timedelta(days=retention_days)
    pruner = _Pruner(session_factory, max(1, batch_size), pause)
    tables: tuple[tuple[Any, Callable[[Session, list[int]], dict[str, int]]], ...] = (
        (Decision, _delete_decisions),
        (EventLog, _delete_events),
        (MeterHistory, _delete_meter_history),  # the charts' reading history, bounded the same way
    )
    for model, remove in tables:
        pruner.run(model, model.timestamp < cutoff, None, remove)
        # counted once: rows written meanwhile are newer than every row this deletes
        pruner.run(model, None, pruner.excess(model, max_rows), remove)
    if any(pruner.counts.values()):
        log.info("audit prune deleted %s", pruner.counts)
    return pruner.counts
