"""Tests for app.store.audit.prune: retention by age and row count, in batches, beside concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.store import audit, db
from app.store.models import ConfigChange, Decision, DecisionOutput, EventLog, MeterHistory
from tests.store.test_db import temporary_pg_database

NOW = datetime(2025, 6, 1, 12, 0, 0)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated database (SQLite file or a fresh PostgreSQL database) and its session factory."""
    sqlite_url = f"sqlite:///{tmp_path / 'hub.db'}"
    with temporary_pg_database() if request.param == "postgresql" else nullcontext(sqlite_url) as url:
        engine = db.make_engine(url, timeout=10)
        try:
            db.upgrade(engine)
            yield db.session_factory(engine)
        finally:
            engine.dispose()


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'hub.db'}", timeout=10)
    db.upgrade(engine)
    yield db.session_factory(engine)
    engine.dispose()


def add_decisions(factory: sessionmaker[Session], stamps: list[datetime], outputs: int = 2) -> list[int]:
    """One decision per timestamp, each with `outputs` decision_output rows; returns their ids."""
    with factory() as session, session.begin():
        decisions = []
        for n, stamp in enumerate(stamps):
            decision = Decision(timestamp=stamp, input_key=f"in{n}", fired=bool(n % 2))
            decision.outputs.extend(
                DecisionOutput(output_key=f"out{n}_{k}", fired=False, reason="cooldown")
                for k in range(outputs)
            )
            decisions.append(decision)
        session.add_all(decisions)
    return [d.id for d in decisions]


def add_events(
    factory: sessionmaker[Session], stamps: list[datetime | None], migrated: bool = False
) -> list[int]:
    """event_log rows as the hub writes them (linked to a decision), or as the original did (migrated)."""
    with factory() as session, session.begin():
        events = [
            EventLog(
                input_device=f"in{n}",
                output_device="out",
                timestamp=t,
                decision_id=None if migrated else n + 1,
            )
            for n, t in enumerate(stamps)
        ]
        session.add_all(events)
    return [e.id for e in events]


def decision_ids(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(Decision.id).order_by(Decision.id)))


def output_parents(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(DecisionOutput.decision_id).order_by(DecisionOutput.id)))


def event_ids(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(EventLog.id).order_by(EventLog.id)))


def test_prune_by_age(factory: sessionmaker[Session]) -> None:
    days = [120, 91, 90.5, 89, 1, 0]
    ids = add_decisions(factory, [NOW - timedelta(days=d) for d in days])
    events = add_events(factory, [NOW - timedelta(days=d) for d in days] + [None])

    counts = audit.prune(factory, retention_days=90, max_rows=1000, now=NOW)

    assert counts == {
        "decision": 3,
        "decision_output": 6,
        "event_log": 3,
        "meter_history": 0,
        "config_change": 0,
    }
    assert decision_ids(factory) == ids[3:]
    # the outputs of the deleted decisions went with them, the others stayed
    assert output_parents(factory) == [i for i in ids[3:] for _ in range(2)]
    # an event without a timestamp has no age: retention by age keeps it
    assert event_ids(factory) == events[3:]


def test_prune_by_count_keeps_the_newest(factory: sessionmaker[Session]) -> None:
    # inserted out of time order: "oldest" means by timestamp, not by id
    stamps = [NOW - timedelta(hours=h) for h in (5, 9, 1, 7, 3, 8, 2, 6, 4)]
    ids = add_decisions(factory, stamps, outputs=1)
    events = add_events(factory, [*stamps, None])

    counts = audit.prune(factory, retention_days=30, max_rows=4, now=NOW, batch_size=2, pause=0)

    newest = sorted(ids, key=lambda i: stamps[ids.index(i)], reverse=True)[:4]
    assert counts == {
        "decision": 5,
        "decision_output": 5,
        "event_log": 6,
        "meter_history": 0,
        "config_change": 0,
    }
    assert decision_ids(factory) == sorted(newest)
    assert output_parents(factory) == sorted(newest)
    # the timestamp-less event counts as the oldest
    newest_events = sorted(events[:-1], key=lambda i: stamps[events.index(i)], reverse=True)[:4]
    assert event_ids(factory) == sorted(newest_events)


def test_prune_by_age_then_count(factory: sessionmaker[Session]) -> None:
    ids = add_decisions(factory, [NOW - timedelta(days=d) for d in (100, 50, 40, 30, 20, 10)], outputs=0)
    counts = audit.prune(factory, retention_days=60, max_rows=3, now=NOW)
    assert counts["decision"] == 3
    assert decision_ids(factory) == ids[3:]


def test_prune_with_nothing_to_do(factory: sessionmaker[Session]) -> None:
    assert audit.prune(factory, retention_days=90, max_rows=100, now=NOW) == {
        "decision": 0,
        "decision_output": 0,
        "event_log": 0,
        "meter_history": 0,
        "config_change": 0,
    }
    add_decisions(factory, [NOW])
    add_events(factory, [NOW])
    assert audit.prune(factory, retention_days=90, max_rows=100, now=NOW) == {
        "decision": 0,
        "decision_output": 0,
        "event_log": 0,
        "meter_history": 0,
        "config_change": 0,
    }


def test_prune_across_many_batches(sqlite_factory: sessionmaker[Session]) -> None:
    old = [NOW - timedelta(days=200, seconds=s) for s in range(1050)]
    recent = [NOW - timedelta(seconds=s) for s in range(30)]
    add_decisions(sqlite_factory, old + recent, outputs=1)
    add_events(sqlite_factory, old + recent)

    counts = audit.prune(sqlite_factory, retention_days=90, max_rows=20, now=NOW, batch_size=100, pause=0)

    assert counts == {
        "decision": 1060,
        "decision_output": 1060,
        "event_log": 1060,
        "meter_history": 0,
        "config_change": 0,
    }
    assert len(decision_ids(sqlite_factory)) == len(output_parents(sqlite_factory)) == 20
    with sqlite_factory() as session:
        assert session.scalar(select(func.min(Decision.timestamp))) == recent[19]


def test_decision_outputs_go_although_sqlite_foreign_keys_are_off(
    sqlite_factory: sessionmaker[Session],
) -> None:
    with sqlite_factory() as session:
        # the premise: ON DELETE CASCADE is not enforced, prune must delete the children itself
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
    add_decisions(sqlite_factory, [NOW - timedelta(days=400)] * 3, outputs=4)
    counts = audit.prune(sqlite_factory, retention_days=1, max_rows=100, now=NOW)
    assert counts["decision_output"] == 12
    assert output_parents(sqlite_factory) == []


def test_now_defaults_to_utc_and_aware_now_is_converted(sqlite_factory: sessionmaker[Session]) -> None:
    utc_now = datetime.now(UTC).replace(tzinfo=None)
    ids = add_decisions(
        sqlite_factory, [utc_now - timedelta(days=2, minutes=1), utc_now - timedelta(days=1, hours=23)]
    )
    assert audit.prune(sqlite_factory, retention_days=2, max_rows=100)["decision"] == 1
    assert decision_ids(sqlite_factory) == ids[1:]
    # 14:00 at UTC+2 is 12:00 UTC: cutoff one day before NOW exactly
    aware = datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    more = add_decisions(sqlite_factory, [NOW - timedelta(days=1, seconds=1), NOW - timedelta(hours=23)])
    audit.prune(sqlite_factory, retention_days=1, max_rows=100, now=aware)
    assert more[0] not in decision_ids(sqlite_factory)
    assert more[1] in decision_ids(sqlite_factory)


def test_prune_while_other_threads_write(sqlite_factory: sessionmaker[Session]) -> None:
    """Batches release the write lock, so concurrent writers neither fail nor lose rows."""
    add_decisions(sqlite_factory, [NOW - timedelta(days=300, seconds=s) for s in range(3000)], outputs=1)
    stop = threading.Event()
    errors: list[BaseException] = []
    written: list[int] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                written.extend(add_decisions(sqlite_factory, [datetime.now(UTC).replace(tzinfo=None)]))
                written.extend(add_events(sqlite_factory, [datetime.now(UTC).replace(tzinfo=None)]))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=writer) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        counts = audit.prune(sqlite_factory, retention_days=90, max_rows=100_000, batch_size=200)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    assert not errors
    assert counts["decision"] == counts["decision_output"] == 3000
    assert written
    with sqlite_factory() as session:
        kept = session.scalar(select(func.count()).select_from(Decision)) or 0
        kept += session.scalar(select(func.count()).select_from(EventLog)) or 0
    assert kept == len(written)


def test_meter_history_is_pruned_by_age_and_count(factory: sessionmaker[Session]) -> None:
    with factory() as session, session.begin():
        for days in (200, 100, 1, 0):
            session.add(MeterHistory(input_device_id=1, timestamp=NOW - timedelta(days=days), reading=1.0))
    assert audit.prune(factory, retention_days=90, max_rows=100, now=NOW)["meter_history"] == 2
    assert audit.prune(factory, retention_days=90, max_rows=1, now=NOW)["meter_history"] == 1
    with factory() as session:
        assert [row.timestamp for row in session.scalars(select(MeterHistory))] == [NOW]


def add_changes(factory: sessionmaker[Session], stamps: list[datetime]) -> list[int]:
    with factory() as session, session.begin():
        rows = [
            ConfigChange(timestamp=t, actor="web:admin", action="update_input", summary=f"change {n}")
            for n, t in enumerate(stamps)
        ]
        session.add_all(rows)
    return [r.id for r in rows]


def change_ids(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(ConfigChange.id).order_by(ConfigChange.id)))


def test_migrated_history_is_kept_by_age_and_by_count(factory: sessionmaker[Session]) -> None:
    # The original's rows are years old and far more than max_rows; the hub's own rows are pruned around them.
    migrated = add_events(factory, [NOW - timedelta(days=900 + d) for d in range(8)] + [None], migrated=True)
    hub_old = add_events(factory, [NOW - timedelta(days=200)])
    hub_new = add_events(factory, [NOW - timedelta(hours=h) for h in range(5)])

    counts = audit.prune(factory, retention_days=90, max_rows=3, now=NOW)

    assert counts["event_log"] == 1 + 2  # the old hub row by age, then two by count
    assert event_ids(factory) == sorted(migrated + hub_new[:3])
    assert set(hub_old).isdisjoint(event_ids(factory))


def test_prune_migrated_setting_lets_retention_delete_the_original_rows(
    factory: sessionmaker[Session],
) -> None:
    migrated = add_events(factory, [NOW - timedelta(days=900), NOW - timedelta(days=1)], migrated=True)
    counts = audit.prune(factory, retention_days=90, max_rows=100, now=NOW, prune_migrated=True)
    assert counts["event_log"] == 1
    assert event_ids(factory) == migrated[1:]


def test_configuration_changes_are_kept_like_decisions(factory: sessionmaker[Session]) -> None:
    ids = add_changes(factory, [NOW - timedelta(days=d) for d in (200, 95, 30, 20, 10, 1)])
    counts = audit.prune(factory, retention_days=90, max_rows=3, now=NOW)
    assert counts["config_change"] == 3
    assert change_ids(factory) == ids[3:]
