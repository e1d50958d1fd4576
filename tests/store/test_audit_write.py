"""decision_writes.write on SQLite (driver executemany) stores exactly what the Core path stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.core.channels import AuditRecord
from app.store import db, decision_writes, registry, store_writes
from app.store.models import Decision, DecisionOutput, EventLog


@pytest.fixture
def factories(tmp_path: Path) -> Iterator[tuple[sessionmaker[Session], sessionmaker[Session]]]:
    engines = [db.make_engine(f"sqlite:///{tmp_path / name}", timeout=10) for name in ("a.db", "b.db")]
    try:
        for engine in engines:
            db.upgrade(engine)
            with db.session_factory(engine)() as session:
                registry.insert(
                    session, registry.Advert("input", "late", "Late door", "Door", "Hall"), "test"
                )
                session.commit()
        yield db.session_factory(engines[0]), db.session_factory(engines[1])
    finally:
        for engine in engines:
            engine.dispose()


def records(start: float) -> list[AuditRecord]:
    out = []
    for i in range(7):
        fired = i % 3 != 0
        decision = {
            "timestamp": start + i * 0.25 + (0.000001 if i == 2 else 0.0),
            "input_device_id": -5 if i == 4 else (None if i == 5 else 10 + i),
            "input_key": "late" if i == 4 else f"in{i}",
            "input_label": f"Input {i}",
            "origin": "ioboard" if i % 2 else None,
            "event_detail": "motion" if i == 1 else None,
            "fired": fired,
            "reason": None if fired else "disabled",
            "detail": "no linked outputs" if i == 6 else None,
            "outputs": []
            if i == 6
            else [
                {
                    "output_device_id": -3 if k else 20 + i,
                    "output_key": f"out{i}.{k}",
                    "output_label": f"Output {k}",
                    "fired": fired and not k,
                    "reason": None if fired and not k else "cooldown",
                    "detail": "30 s" if k else None,
                }
                for k in range(2)
            ],
        }
        event_log = (
            [{"input_device": f"Input {i}", "output_device": "Output 0", "timestamp": start + i}]
            if fired
            else []
        )
        out.append(AuditRecord(decision=decision, event_log=event_log))
    return out


def dump(factory: sessionmaker[Session]) -> dict[str, list[tuple[object, ...]]]:
    """Every stored value with its SQLite storage class, so a text where a number was is a difference."""
    out = {}
    with factory() as session:
        for model in (Decision, DecisionOutput, EventLog):
            table = decision_writes.table(model)
            cols = ", ".join(f"{c.name}, typeof({c.name})" for c in table.columns)
            query = text(f"SELECT {cols} FROM {table.name} ORDER BY id")
            out[table.name] = [tuple(r) for r in session.execute(query)]
    return out


def test_the_sqlite_path_stores_what_the_core_path_stores(
    factories: tuple[sessionmaker[Session], sessionmaker[Session]],
) -> None:
    fast, core = factories
    for n, start in enumerate((1_700_000_000.0, 1_700_000_100.5)):
        with fast() as session:
            decision_writes.write(session, records(start))
        with core() as session:
            ids = store_writes.input_ids(session, ["late"])
            decision_writes.write_core(session, records(start), ids)
            session.commit()
        assert dump(fast) == dump(core), f"batch {n}"
    stored = dump(fast)
    assert len(stored["decision"]) == 14 and len(stored["decision_output"]) == 24
    assert len(stored["event_log"]) == 8
    # the late input's row id was found by its key; a provisional output id is stored as none
    assert {row[4] for row in stored["decision"] if row[6] == "late"} == {1}
    assert {row[4] for row in stored["decision_output"] if str(row[6]).endswith(".1")} == {None}


def test_each_decision_gets_its_own_outputs_after_other_rows_were_deleted(
    factories: tuple[sessionmaker[Session], sessionmaker[Session]],
) -> None:
    fast, _ = factories
    with fast() as session:
        decision_writes.write(session, records(1_700_000_000.0))
        # the newest go, as audit.prune deletes them: their rowids are given out again
        for table in ("decision_output", "event_log"):
            session.execute(text(f"DELETE FROM {table} WHERE decision_id > 3"))
        session.execute(text("DELETE FROM decision WHERE id > 3"))
        session.commit()
        decision_writes.write(session, records(1_700_000_200.0))
        rows = session.execute(
            text(
                "SELECT d.input_key, o.output_key FROM decision_output o"
                " JOIN decision d ON d.id = o.decision_id WHERE d.timestamp >= '2023-11-14 22:16:40'"
            )
        ).all()
        logged = session.execute(
            text(
                "SELECT d.input_label, e.input_device FROM event_log e"
                " JOIN decision d ON d.id = e.decision_id"
            )
        ).all()
    assert sorted(rows) == sorted(
        (("late" if i == 4 else f"in{i}"), f"out{i}.{k}") for i in range(6) for k in range(2)
    )
    assert logged and all(label == device for label, device in logged)
