"""Retention for the audit trail: prunes old decisions, event_log rows and config changes in batches.

The original's event_log rows (migrated history, no decision_id) are kept unless a setting says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, Delete, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.store.models import ConfigChange, Decision, DecisionOutput, EventLog, MeterHistory
from pylib import threads

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

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


def _delete(session: Session, stmt: Delete) -> int:
    """Run a bulk DELETE; the rows it deleted (Session.execute is typed for any statement, but a
    DELETE's result is a CursorResult, which has rowcount)."""
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    return cast("CursorResult[Any]", result).rowcount


def _delete_decisions(session: Session, ids: list[int]) -> dict[str, int]:
    # SQLite does not enforce the ON DELETE CASCADE (foreign keys are off), so children go first
    outputs = _delete(session, delete(DecisionOutput).where(DecisionOutput.decision_id.in_(ids)))
    decisions = _delete(session, delete(Decision).where(Decision.id.in_(ids)))
    return {"decision": decisions, "decision_output": outputs}


def _delete_meter_history(session: Session, ids: list[int]) -> dict[str, int]:
    return {"meter_history": _delete(session, delete(MeterHistory).where(MeterHistory.id.in_(ids)))}


def _delete_changes(session: Session, ids: list[int]) -> dict[str, int]:
    return {"config_change": _delete(session, delete(ConfigChange).where(ConfigChange.id.in_(ids)))}


def _delete_events(session: Session, ids: list[int]) -> dict[str, int]:
    return {"event_log": _delete(session, delete(EventLog).where(EventLog.id.in_(ids)))}


# The tables the pruner bounds: each has an id and a timestamp column.
_Audited = type[Decision] | type[EventLog] | type[MeterHistory] | type[ConfigChange]


class _Pruner:
    def __init__(self, factory: sessionmaker[Session], batch_size: int, pause: float) -> None:
        self.factory = factory
        self.batch_size = batch_size
        self.pause = pause
        self.counts = {
            "decision": 0,
            "decision_output": 0,
            "event_log": 0,
            "meter_history": 0,
            "config_change": 0,
        }
        self.stopped = False

    def run(
        self,
        model: _Audited,
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

    def excess(self, model: _Audited, max_rows: int, where: ColumnElement[bool] | None = None) -> int:
        query = select(func.count()).select_from(model)
        if where is not None:
            query = query.where(where)
        with self.factory() as session:
            total = session.scalar(query) or 0
        return max(0, total - max_rows)


def prune(
    session_factory: sessionmaker[Session],
    retention_days: int,
    max_rows: int,
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    pause: float = BATCH_PAUSE,
    prune_migrated: bool = False,
) -> dict[str, int]:
    """Delete audit rows older than retention_days, then the oldest beyond max_rows per table.

    Applies to decision (with its decision_output rows) and event_log independently. `now` is
    naive UTC like the stored timestamps (an aware datetime is converted). Configuration changes are
    kept by the same rules as decisions. The original's event_log rows (no decision_id: history
    migrated with its database) are never deleted unless prune_migrated is set; they cannot grow.
    Returns the number of rows deleted per table.
    """
    cutoff = _utc_naive(now) - timedelta(days=retention_days)
    pruner = _Pruner(session_factory, max(1, batch_size), pause)
    hub_events = None if prune_migrated else EventLog.decision_id.is_not(None)
    tables: tuple[
        tuple[_Audited, ColumnElement[bool] | None, Callable[[Session, list[int]], dict[str, int]]], ...
    ] = (
        (Decision, None, _delete_decisions),
        (EventLog, hub_events, _delete_events),
        (MeterHistory, None, _delete_meter_history),  # the charts' reading history, bounded the same way
        (ConfigChange, None, _delete_changes),
    )
    for model, only, remove in tables:
        old = model.timestamp < cutoff
        pruner.run(model, old if only is None else old & only, None, remove)
        # counted once: rows written meanwhile are newer than every row this deletes
        pruner.run(model, only, pruner.excess(model, max_rows, only), remove)
    if any(pruner.counts.values()):
        log.info("audit prune deleted %s", pruner.counts)
    return pruner.counts
