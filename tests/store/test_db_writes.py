"""The "database" health component as the writers report their writes (app.store.db_writes)."""

from __future__ import annotations

import logging
import time

from app.core import health
from app.store import db_writes


def state() -> tuple[str, str | None]:
    component = health.components()["database"]
    return component["state"], component["detail"]


def test_degraded_while_any_writer_fails_and_ok_when_each_writes_again(caplog) -> None:
    db_writes.mark_ok_detail("0005_schedules_state")
    assert state() == ("ok", "0005_schedules_state")
    with caplog.at_level(logging.INFO, "app.store.db_writes"):
        assert db_writes.failed("audit", "(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT]")
        assert not db_writes.failed("audit", "again")  # logged once per writer, not per try
        db_writes.failed("last_seen", "database or disk is full")
    assert state() == ("degraded", "database cannot write")
    assert db_writes.failing() == ["audit", "last_seen"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "database cannot write (audit): (sqlite3.OperationalError) database or disk is full",
        "database cannot write (last_seen): database or disk is full",
    ]
    db_writes.ok("audit")
    assert state() == ("degraded", "database cannot write")  # last_seen has not written yet
    db_writes.ok("last_seen")
    assert state() == ("ok", "0005_schedules_state")
    assert health.counters()["database.write_errors"] == 3


def test_a_writer_that_never_writes_again_is_forgotten_once_others_write(monkeypatch) -> None:
    monkeypatch.setattr(db_writes, "FORGET_SECONDS", 0.05)
    db_writes.mark_ok_detail("rev")
    db_writes.failed("meter_readings", "disk full")  # and then the meter goes quiet for good
    db_writes.ok("audit")
    assert state()[0] == "degraded"  # too recent to forget
    time.sleep(0.1)
    db_writes.ok("audit")  # another writer writes long after the failure
    assert state() == ("ok", "rev") and db_writes.failing() == []


def test_a_failure_is_not_forgotten_while_nothing_writes(monkeypatch) -> None:
    monkeypatch.setattr(db_writes, "FORGET_SECONDS", 0.05)
    db_writes.mark_ok_detail("rev")
    db_writes.ok("audit")
    db_writes.failed("audit", "disk full")
    time.sleep(0.1)
    assert db_writes.degraded() and db_writes.failing() == ["audit"]
    assert state()[0] == "degraded"
