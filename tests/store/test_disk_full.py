"""A full disk under SQLite: the writers hold what they cannot write, and write it when space returns."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core import health
from app.core.channels import AUDIT, AuditRecord, StateWrite
from app.core.settings import Settings
from app.engine.presence import Presence
from app.ops import observability
from app.outputs.offline import OfflineMonitor
from app.sources.heartbeat import HeartbeatFilter
from app.store import db, db_writes, registry, rule_state
from app.store.audit_writer import AuditWriter
from app.store.models import Decision, EventLog, Heartbeat, InputConfig, RuleState
from pylib import inproc, threads
from tests import diskfull
from tests.support import wait_for


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    with diskfull.small_tmpfs(16) as where:
        yield where


def record(n: int) -> AuditRecord:
    now = time.time()
    decision = {
        "timestamp": now,
        "input_key": f"Door {n}",
        "input_label": f"Door {n}",
        "origin": "ioboard",
        "fired": True,
        "outputs": [{"output_key": "Hallway Buzzer", "output_label": "Buzzer", "fired": True}],
    }
    return AuditRecord(
        decision=decision,
        event_log=[{"input_device": f"Door {n}", "output_device": "Buzzer", "timestamp": now}],
    )


def count(sessions: sessionmaker[Session], model: Any) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def keys(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as s:
        return set(s.scalars(select(Decision.input_key)))


def database_state() -> dict[str, Any]:
    return health.components().get("database", {})


class Rig:
    def __init__(self, settings: Settings, where: Path) -> None:
        self.settings = settings
        self.where = where
        self.engine = db.make_engine(settings.database_url, settings.db_timeout)
        db.upgrade(self.engine)
        self.sessions = db.session_factory(self.engine)
        db_writes.mark_ok_detail(db.current_revision(self.engine))
        self.writer = AuditWriter(settings, self.sessions)
        self.pinger = observability.HealthPinger(settings, self.sessions)
        self.push = inproc.connect_push(AUDIT)
        self.sent = 0

    def start(self) -> None:
        self.writer.start()
        self.pinger.start()

    def send(self, n: int = 1) -> None:
        for _ in range(n):
            inproc.send(self.push, record(self.sent))
            self.sent += 1

    def fill_until_degraded(self) -> None:
        """Fill the disk, then keep deciding until a write fails (SQLite's WAL may hold a few more)."""
        diskfull.fill(self.where)
        deadline = time.monotonic() + 60
        while not db_writes.degraded():
            assert time.monotonic() < deadline, "the database never failed to write on a full disk"
            self.send()
            time.sleep(0.01)

    def stop(self) -> None:
        threads.shutting_down.set()
        for thread in (self.writer, self.pinger):
            if thread.is_alive():
                thread.join(10)
        self.push.close()
        self.engine.dispose()


@pytest.fixture
def rig(tmpfs: Path, make_settings: Callable[..., Settings]) -> Callable[..., Rig]:
    made: list[Rig] = []

    def make(**env: str) -> Rig:
        settings = make_settings(TABLESPACE_PATH=str(tmpfs / "hub.db"), HEARTBEAT_ROW_SECONDS="0.5", **env)
        made.append(Rig(settings, tmpfs))
        return made[-1]

    yield make
    for r in made:
        r.stop()


def test_decisions_made_while_the_disk_is_full_are_written_when_space_returns(rig) -> None:
    r = rig()
    r.start()
    r.send(5)
    wait_for(lambda: count(r.sessions, Decision) == 5)
    assert database_state()["state"] == "ok"

    r.fill_until_degraded()
    state = database_state()
    assert (state["state"], state["detail"]) == ("degraded", "database cannot write")
    r.send(50)  # an evening of decisions while nothing can be written
    inproc.send(
        r.push,
        StateWrite(values={"processor:input:7": {"triggers": [1.0], "last_fired": 1.0}}, version=time.time()),
    )
    wait_for(lambda: health.counters().get("audit.held", 0) >= 50)
    # The heartbeat row writer fails too, and says so; no writer's thread dies.
    wait_for(lambda: health.components().get("heartbeat_row", {}).get("state") == "failing")
    assert "heartbeat_row" in db_writes.failing() and "audit" in db_writes.failing()
    assert r.writer.is_alive() and r.pinger.is_alive()
    assert r.writer.held() >= 50
    assert "database" in observability.down_components()  # so the Healthchecks ping reports a failure

    diskfull.free(r.where)
    wait_for(lambda: database_state().get("state") == "ok", timeout=30, what="the database to write again")
    assert count(r.sessions, Decision) == r.sent
    assert count(r.sessions, EventLog) == r.sent
    assert keys(r.sessions) == {f"Door {n}" for n in range(r.sent)}
    assert r.writer.held() == 0
    with r.sessions() as s:
        stored = s.scalar(select(RuleState.state_value).where(RuleState.state_key == "processor:input:7"))
    assert stored is not None and json.loads(stored)["last_fired"] == 1.0
    wait_for(
        lambda: count(r.sessions, Heartbeat) == 1 and health.components()["heartbeat_row"]["state"] == "ok"
    )
    assert "audit.lost" not in health.counters()
    assert database_state()["detail"] == db.current_revision(r.engine)  # back to what it said at start


def test_held_decisions_are_bounded_and_the_oldest_are_dropped_and_counted(rig) -> None:
    r = rig(AUDIT_BUFFER_SIZE="20")
    r.start()
    r.fill_until_degraded()
    before = r.sent
    r.send(100)
    wait_for(lambda: health.counters().get("audit.lost", 0) >= 80)
    assert r.writer.held() == 20
    diskfull.free(r.where)
    wait_for(lambda: database_state().get("state") == "ok", timeout=30)
    lost = health.counters()["audit.lost"]
    assert count(r.sessions, Decision) == r.sent - lost
    stored = keys(r.sessions)
    # the newest 20 are kept; the oldest of those made while full were dropped
    assert {f"Door {n}" for n in range(r.sent - 20, r.sent)} <= stored
    assert f"Door {before}" not in stored


def test_a_record_the_database_refuses_costs_only_itself(rig, caplog) -> None:
    r = rig()
    r.start()
    bad = record(0)
    bad.decision["input_key"] = None  # NOT NULL: refused by the database, not a disk problem
    inproc.send(r.push, bad)
    r.sent = 1
    r.send(3)
    wait_for(lambda: count(r.sessions, Decision) == 3)
    assert health.counters()["audit.rejected"] == 1
    assert database_state()["state"] == "ok" and r.writer.held() == 0


def test_last_seen_times_wait_in_memory_while_the_disk_is_full(rig) -> None:
    r = rig()
    with r.sessions() as s:
        registry.insert(s, registry.Advert("input", "door", "Door", "Contact", None), "ioboard")
        s.commit()
    r.start()
    presence = Presence()
    heartbeats = HeartbeatFilter(r.sessions, presence)
    diskfull.fill(r.where)
    last: list[float] = []

    def heard_and_failed() -> bool:
        last.append(time.time())
        presence.seen("ioboard", ["door"], last[-1])
        heartbeats._flush()  # what the filter's loop does every FLUSH_SECONDS: to the AuditWriter
        return "last_seen" in db_writes.failing()

    # SQLite's WAL may take a few small writes first
    wait_for(heard_and_failed, timeout=30, what="the last-seen write to fail on a full disk")
    assert database_state()["state"] == "degraded"
    diskfull.free(r.where)
    # nothing new was heard: the times the database refused are written by the writer's retry
    wait_for(lambda: db_writes.failing() == [], timeout=30, what="the held last-seen times to be written")
    with r.sessions() as s:
        stored = s.scalar(select(InputConfig.last_seen).where(InputConfig.device_key == "door"))
    assert stored is not None and stored.replace(tzinfo=UTC).timestamp() == pytest.approx(last[-1], abs=1e-3)


def exhaust(sessions: sessionmaker[Session]) -> None:
    """After fill(): write until the database refuses (SQLite's WAL may still take a few commits)."""
    for n in range(10_000):
        try:
            with sessions() as s:
                rule_state.save(s, {f"test:filler:{n}": "x" * 512})
                s.commit()
        except OperationalError:
            return
    pytest.fail("the database never refused a write on a full disk")


def test_the_offline_alert_state_is_saved_once_space_returns(rig) -> None:
    r = rig()
    with r.sessions() as s:
        s.add(
            InputConfig(device_key="door", device_type="Motion", device_label="Front Door", origin="ioboard")
        )
        s.commit()
    presence = Presence()
    now = [time.time()]
    monitor = OfflineMonitor(r.settings, r.sessions, presence, lambda: now[0], check_seconds=5)
    for i in range(5):
        presence.seen("ioboard", ["door"], now[0] + 30 * i)
    last = now[0] + 120
    diskfull.fill(r.where)
    exhaust(r.sessions)
    now[0] = last + 91
    assert monitor.check() == [f"⚠️ Offline since {time.strftime('%H:%M', time.gmtime(last))}: Front Door"]
    assert "offline_state" in db_writes.failing()  # the alert went out; its record waits
    diskfull.free(r.where)
    now[0] += 5
    monitor.check()  # nothing changed, but the state the database refused is written now
    assert db_writes.failing() == []
    with r.sessions() as s:
        stored = rule_state.load(s, "offline:")
    assert stored == {"offline:state": {"offline": {"door": last}, "alerted": ["door"]}}
