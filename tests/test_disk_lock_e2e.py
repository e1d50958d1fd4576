"""The alarm never waits on a disk: another process holds the SQLite file's write lock while devices fire.

A real hub on the real RabbitMQ and a real SQLite file, as the other end-to-end tests start it. A
second process opens the file with Python's sqlite3 (as the sqlite3 shell would), takes BEGIN
EXCLUSIVE and keeps it for LOCK_SECONDS; meanwhile a board fires, a device never seen before
reports, a meter sends readings (one crossing its limit), a person changes a label and the
last-seen and rule-state flushes come due. Every control message must arrive while the lock is still
held; once it is released, every decision, registration, reading, last-seen time and the rule state
are in the database.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.settings import Settings
from app.engine import rules
from app.sources import heartbeat
from app.store import db_writes, rule_state
from app.store.models import Decision, InputConfig, MeterHistory
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.support import wait_for
from tests.test_hub_e2e import FRONT, IOBOARD_HEARTBEAT, notify
from tests.test_meters_e2e import HEARTBEAT as METER_HEARTBEAT
from tests.test_meters_e2e import METER
from tests.test_meters_e2e import reading as meter_reading

HEARTBEAT_KEY = "event.heartbeat.ioboard.pi-hallway"
NOTIFY_KEY = "event.notify.ioboard.pi-hallway"
METER_KEY = "event.notify.meterboard.esp"
BUZZER = "Hallway Buzzer"
KITCHEN_BUZZER = "Kitchen Buzzer"
NEWCOMER = "Garage Motion (Garage)"
LOCK_SECONDS = 15
FIRES = 10

# Takes the write lock, says so, holds it, then says it let go (the sqlite3 shell's BEGIN EXCLUSIVE).
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
print("released", flush=True)
"""


class Locker:
    """Another process holding an exclusive lock on the database file for `seconds`."""

    def __init__(self, path: str, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, path, str(seconds)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def holding(self) -> bool:
        return self.proc.poll() is None

    def wait_released(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "released"
        assert self.proc.wait(30) == 0


@pytest.fixture
def hub_rig(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # The filter's last-seen flush comes due several times during the lock (every 30 s otherwise).
    monkeypatch.setattr(heartbeat, "FLUSH_SECONDS", 1.0)
    hub = start_hub(make_settings())
    device = Device(hub.settings)
    consumers = [ControlConsumer(hub.settings)]
    yield hub, device, Api(hub), consumers
    for consumer in consumers:
        consumer.close()
    device.close()
    hub.stop()


def count(hub: Any, *where: Any) -> int:
    with hub.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Decision).where(*where)) or 0)


def test_alarms_fire_while_another_process_holds_the_database_lock(hub_rig: Any) -> None:
    hub, device, api, consumers = hub_rig
    (consumer,) = consumers
    device.publish(HEARTBEAT_KEY, IOBOARD_HEARTBEAT)
    device.publish("event.heartbeat.meterboard.esp", METER_HEARTBEAT)
    wait_for(lambda: api.registered("outputs", BUZZER, KITCHEN_BUZZER) and api.registered("inputs", METER))
    api.patch("inputs", FRONT, device_enabled=True, activation_interval=0)  # every activation fires
    api.link(FRONT, BUZZER)
    meter = api.device("inputs", METER)
    api.patch("inputs", METER, device_enabled=True, activation_interval=0)
    api.link(METER, KITCHEN_BUZZER)
    status, _ = api.call(
        "PATCH", f"/api/meters/{meter['id']}", {"meter_high_limit": 5, "meter_reading_unit_factor": 1000}
    )
    assert status == 200
    device.publish(METER_KEY, meter_reading(1000))  # inside the limits: stored, nothing fires
    wait_for(lambda: api.get(f"/api/meters/{meter['id']}")["meter_reading"] == "1")
    wait_for(lambda: db_writes.failing() == [])
    front_id = api.device("inputs", FRONT)["id"]
    before = count(hub, Decision.input_key == FRONT)

    assert hub.settings.database_url.startswith("sqlite")
    path = hub.settings.database_url.split("///", 1)[1]
    locker = Locker(path, LOCK_SECONDS)
    # A person's change waits for its own write (the reply may time out first); the alarms do not.
    change = threading.Thread(
        target=api.call, args=("PATCH", f"/api/inputs/{front_id}", {"device_label": "Front"})
    )
    change.start()
    first_seen = time.time()
    for n in range(FIRES):
        active = notify()
        if n == 0:  # a device never heard before reports along with the first activation
            newcomer = {"device_key": NEWCOMER, "device_label": "Garage Motion", "type": "Motion"}
            active["active_devices"].append(newcomer)
        device.publish(NOTIFY_KEY, active)
    device.publish(METER_KEY, meter_reading(2000))  # a routine reading
    device.publish(METER_KEY, meter_reading(6000))  # above 5: the kitchen buzzer goes off
    # Both buzzers are ioboard outputs: ten for the front door, one for the meter's crossing.
    triggers = [t[2]["data"][0] for t in consumer.wait(FIRES + 1, timeout=LOCK_SECONDS)]
    wait_for(db_writes.degraded, timeout=LOCK_SECONDS, what="the writer to find the database locked")
    assert locker.holding(), "the lock was released before every alarm fired"
    assert sorted(triggers) == [BUZZER] * FIRES + [KITCHEN_BUZZER]

    locker.wait_released()
    change.join(30)
    # Every decision, registration, reading, last-seen time and the rule state reach the database.
    wait_for(lambda: count(hub, Decision.input_key == FRONT) == before + FIRES, timeout=60)
    wait_for(lambda: db_writes.failing() == [], timeout=60, what="every writer to write again")
    with hub.sessions() as s:
        newcomer = s.scalars(select(InputConfig).where(InputConfig.device_key == NEWCOMER)).one()
        assert newcomer.device_enabled is False
        (decided,) = s.scalars(select(Decision).where(Decision.input_key == NEWCOMER)).all()
        assert decided.input_device_id == newcomer.id and decided.reason == rules.DISABLED
        front = s.scalars(select(InputConfig).where(InputConfig.device_key == FRONT)).one()
        assert front.last_seen is not None
        assert front.last_seen.replace(tzinfo=UTC) >= datetime.fromtimestamp(int(first_seen), UTC)
        query = select(MeterHistory.register_value).where(MeterHistory.input_device_id == meter["id"])
        assert list(s.scalars(query.order_by(MeterHistory.id)))[-2:] == [2000, 6000]
        state = rule_state.load(s, "processor:")
    assert state[f"processor:input:{front_id}"]["triggers"]
    (crossed,) = api.decisions(METER)
    assert crossed["event_detail"] == "above 5"
    wait_for(lambda: api.device("inputs", FRONT)["device_label"] == "Front", timeout=30)
    assert api.get(f"/api/meters/{meter['id']}")["meter_reading"] == "6"
