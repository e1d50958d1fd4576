"""The SQL of the decision batches: decisions, their outputs and event_log rows, on SQLite or Core."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

from app.core.channels import AuditRecord, DecisionRecord
from app.store import store_writes
from app.store.models import Base, Decision, DecisionOutput, EventLog


# Core inserts on the tables, built once: the ORM's bulk path on the mapped classes costs several
# times as much per row (it runs each row through the mapper first).
def table(model: type[Base]) -> Table:
    """A model's Core table (the ORM types __table__ as any FROM clause; these are tables)."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


_DECISION = table(Decision)
_INSERT_DECISIONS = insert(_DECISION).returning(_DECISION.c.id, sort_by_parameter_order=True)
_INSERT_OUTPUTS = insert(table(DecisionOutput))
_INSERT_EVENT_LOG = insert(table(EventLog))


def _naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def write(session: Session, records: list[AuditRecord]) -> None:
    """Insert a batch of decisions with their outputs and event_log rows in one transaction.

    On SQLite, plain executemany through the driver (_write_sqlite); elsewhere Core executemany
    inserts with RETURNING for the new decision ids. Either costs a fraction of the ORM unit of work,
    which matters at thousands of events a second.
    """
    if not records:
        return
    # A negative id: the processor decided from memory before the input's row existed; the row
    # has been written since (registrations go first), so its id is found by key.
    ids_by_key = store_writes.input_ids(
        session, [r.decision["input_key"] for r in records if (r.decision.get("input_device_id") or 0) < 0]
    )
    if session.get_bind().dialect.name != "sqlite" or not _write_sqlite(session, records, ids_by_key):
        write_core(session, records, ids_by_key)
    session.commit()


def write_core(session: Session, records: list[AuditRecord], ids_by_key: dict[str, int]) -> None:
    decisions = [
        {
            "timestamp": _naive_utc(rec.decision["timestamp"]),
            "input_device_id": _input_id(rec.decision, ids_by_key),
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
            "output_device_id": o.get("output_device_id") if (o.get("output_device_id") or 0) >= 0 else None,
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


# The SQLite path: SQLAlchemy runs an INSERT ... RETURNING with sort_by_parameter_order one row at a
# time on SQLite, and binds every value through its type processors; at ~2,000 decisions a second
# that was the largest share of the writer's CPU (py-spy, docs/performance.md). Here each table gets
# one executemany of plain tuples, with the values stored as SQLAlchemy stores them (DateTime as
# "YYYY-MM-DD HH:MM:SS.ffffff", booleans as 0/1); tests/store/test_audit_write.py compares the two paths.
def _sqlite_insert(table: Table, columns: tuple[str, ...]) -> str:
    from sqlalchemy.dialects import sqlite

    return str(insert(table).compile(dialect=sqlite.dialect(), column_keys=list(columns)))


_DECISION_COLUMNS = (
    "timestamp",
    "input_device_id",
    "input_key",
    "input_label",
    "origin",
    "event_detail",
    "fired",
    "reason",
    "detail",
)
_OUTPUT_COLUMNS = (
    "decision_id",
    "output_device_id",
    "output_key",
    "output_label",
    "fired",
    "reason",
    "detail",
)
_EVENT_LOG_COLUMNS = ("input_device", "output_device", "timestamp", "decision_id")
_SQLITE_DECISIONS = _sqlite_insert(_DECISION, _DECISION_COLUMNS)
_SQLITE_OUTPUTS = _sqlite_insert(table(DecisionOutput), _OUTPUT_COLUMNS)
_SQLITE_EVENT_LOG = _sqlite_insert(table(EventLog), _EVENT_LOG_COLUMNS)
_SQLITE_COUNT = "SELECT count(*) FROM decision WHERE id BETWEEN ? AND ?"


def _sqlite_time(ts: float) -> str:
    """A unix time as SQLAlchemy's SQLite DateTime stores the naive UTC datetime."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _write_sqlite(session: Session, records: list[AuditRecord], ids_by_key: dict[str, int]) -> bool:
    """The batch through the driver's executemany; False (nothing written) when the ids cannot be known.

    The decisions' ids: the executemany runs inside this transaction, which holds SQLite's write lock
    from its first row, so nobody else inserts meanwhile and each row gets the largest rowid + 1
    (the table has no AUTOINCREMENT): the batch's ids are the n ending at last_insert_rowid(). The
    count confirms it; only a table at the largest possible rowid (SQLite then picks free ones at
    random) would fail it, and then the batch is rolled back and written the Core way.
    """
    conn = session.connection()
    decisions = []
    for rec in records:
        d = rec.decision
        decisions.append(
            (
                _sqlite_time(d["timestamp"]),
                _input_id(d, ids_by_key),
                d["input_key"],
                d.get("input_label"),
                d.get("origin"),
                d.get("event_detail"),
                1 if d.get("fired") else 0,
                d.get("reason"),
                d.get("detail"),
            )
        )
    conn.exec_driver_sql(_SQLITE_DECISIONS, decisions)
    last = conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
    first = last - len(decisions) + 1
    if conn.exec_driver_sql(_SQLITE_COUNT, (first, last)).scalar_one() != len(decisions):
        session.rollback()
        return False
    outputs = []
    event_log = []
    for decision_id, rec in enumerate(records, first):
        for o in rec.decision.get("outputs", ()):
            output_id = o.get("output_device_id")
            outputs.append(
                (
                    decision_id,
                    output_id if (output_id or 0) >= 0 else None,
                    o["output_key"],
                    o.get("output_label"),
                    1 if o.get("fired") else 0,
                    o.get("reason"),
                    o.get("detail"),
                )
            )
        for row in rec.event_log:
            event_log.append(
                (row["input_device"], row["output_device"], _sqlite_time(row["timestamp"]), decision_id)
            )
    if outputs:
        conn.exec_driver_sql(_SQLITE_OUTPUTS, outputs)
    if event_log:
        conn.exec_driver_sql(_SQLITE_EVENT_LOG, event_log)
    return True


def _input_id(decision: DecisionRecord, ids_by_key: dict[str, int]) -> int | None:
    ident = decision.get("input_device_id")
    if ident is None or ident >= 0:
        return ident
    return ids_by_key.get(decision["input_key"])
