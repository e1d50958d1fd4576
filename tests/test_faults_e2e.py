"""Faults against the real brokers: the database's disk fills up, and a device's clock is 10 minutes behind.

Both run a whole hub on the real RabbitMQ, publish as remote-monitor does, and read the dashboard in
Debian's chromium, as the owner would.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from werkzeug.security import generate_password_hash

from app.core import health
from app.core.settings import Settings
from app.store import db_writes
from pylib import threads
from tests import diskfull
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.support import wait_for
from tests.test_hub_e2e import FRONT, IOBOARD_HEARTBEAT, notify
from tests.test_meters_e2e import HEARTBEAT as METER_HEARTBEAT
from tests.test_meters_e2e import METER
from tests.test_meters_e2e import reading as meter_reading
from tests.web.test_browser import ARGS, CHROMIUM, PASSWORD, log_in, sync_api

HEARTBEAT_KEY = "event.heartbeat.ioboard.pi-hallway"
NOTIFY_KEY = "event.notify.ioboard.pi-hallway"
BUZZER = "Hallway Buzzer"


class Rig:
    def __init__(self, settings: Settings) -> None:
        self.hub = start_hub(settings)
        self.base = f"http://127.0.0.1:{self.hub.port}"
        self.device = Device(settings)
        self.consumer = ControlConsumer(settings)
        self.api = Api(self.hub)

    def register(self, when: datetime | None = None) -> None:
        self.device.publish(HEARTBEAT_KEY, IOBOARD_HEARTBEAT, when=when)
        wait_for(lambda: any(o["device_key"] == BUZZER for o in self.api.get("/api/devices")["outputs"]))

    def arm(self, **fields: Any) -> None:
        self.api.patch("inputs", FRONT, device_enabled=True, **fields)
        self.api.link(FRONT, BUZZER)

    def events(self) -> list[dict[str, Any]]:
        query = f"kind=decision&input={urllib.parse.quote(FRONT)}&limit=1000"
        return self.api.get(f"/api/events?{query}")["events"]

    def close(self) -> None:
        self.device.close()
        self.consumer.close()
        self.hub.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium, launched as tests/web/test_browser.py does."""
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def make_rig(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**env: str) -> Rig:
        made.append(Rig(make_settings(APP_ADMIN_PASSWORD_HASH=generate_password_hash(PASSWORD), **env)))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def badge(page: Any, rig: Rig, name: str) -> str:
    page.goto(f"{rig.base}/")
    return str(page.locator(f'[data-component="{name}"]').inner_text()).strip()


# ---- a full disk ------------------------------------------------------------------------------------


def test_a_full_disk_keeps_every_decision_until_space_returns_and_alarms_still_fire(
    make_rig: Callable[..., Rig], browser: Any
) -> None:
    with diskfull.small_tmpfs(32) as where:
        rig = make_rig(TABLESPACE_PATH=str(where / "event_processor.db"), HEARTBEAT_ROW_SECONDS="1")
        try:
            rig.register()
            rig.arm(activation_interval=0)  # no latch: every activation fires the buzzer
            page = browser.new_page()
            log_in(page, rig.base)
            assert badge(page, rig, "Database") == "Database: ok"
            sent = 0

            def activate() -> None:
                nonlocal sent
                rig.device.publish(NOTIFY_KEY, notify())
                sent += 1

            activate()
            rig.consumer.wait(1)

            diskfull.fill(where)
            deadline = time.monotonic() + 60
            while not db_writes.degraded():  # SQLite's WAL may still take a few commits
                assert time.monotonic() < deadline, "the database never failed to write on a full disk"
                activate()
                rig.consumer.pump(0.05)
            for _ in range(20):  # decided while nothing can be written
                activate()
            # Every activation triggered the buzzer, full disk or not.
            assert len(rig.consumer.wait(sent, timeout=30)) == sent
            wait_for(lambda: health.counters().get("audit.held", 0) >= 20, what="the decisions to be held")
            status, body = rig.api.call("GET", "/api/health")
            assert status == 200
            database = body["components"]["database"]
            assert (database["state"], database["detail"]) == ("degraded", "database cannot write")
            assert body["counters"]["audit.held"] >= 20
            assert badge(page, rig, "Database") == "Database: degraded: database cannot write"
            # The owner can still log in to see it (the login's bookkeeping cannot be stored).
            other = browser.new_page()
            log_in(other, rig.base)
            assert badge(other, rig, "Database") == "Database: degraded: database cannot write"
            other.close()

            diskfull.free(where)
            wait_for(lambda: db_writes.failing() == [], timeout=60, what="every writer to write again")
            assert health.components()["database"]["state"] == "ok"
            wait_for(lambda: len(rig.events()) == sent, what=f"all {sent} decisions")  # not one lost
            events = rig.events()
            assert all(e["fired"] for e in events)
            assert "audit.lost" not in health.counters()
            assert badge(page, rig, "Database") == "Database: ok"
            assert all(t.is_alive() for t in threads.tracked())  # no writer's thread died
            page.close()
        finally:
            rig.close()


# ---- a device 10 minutes behind -------------------------------------------------------------------


def test_a_device_ten_minutes_behind_is_corrected_shown_and_logged(
    make_rig: Callable[..., Rig], browser: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    behind = timedelta(minutes=10)

    def device_now() -> datetime:
        return datetime.now(UTC) - behind

    rig.register(when=device_now())
    rig.arm()
    # Before the hub has learned the offset it drops the activation as "600 s old", as it always did.
    rig.device.publish(NOTIFY_KEY, notify(), when=device_now())
    first = wait_for(lambda: rig.events())
    assert first[0]["reason"] == "stale" and "600 s old" in first[0]["detail"]

    with caplog.at_level(logging.WARNING, "app.engine.clocks"):
        for _ in range(4):  # remote-monitor's steady heartbeats (every 5 s; quicker here)
            time.sleep(0.3)
            rig.device.publish(HEARTBEAT_KEY, IOBOARD_HEARTBEAT, when=device_now())
        offset = wait_for(lambda: rig.api.device("inputs", FRONT)["clock_offset"], what="a learned offset")
    assert offset == pytest.approx(600, abs=2)
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.engine.clocks"]
    assert len(warnings) == 1
    assert "pi-hallway" in warnings[0] and "behind" in warnings[0] and FRONT in warnings[0]

    # Sent now by the slow clock: judged on the corrected time, so the buzzer goes off.
    rig.device.publish(NOTIFY_KEY, notify(), when=device_now())
    routing_key, _, body = rig.consumer.wait(1)[0]
    assert (routing_key, body["data"][0]) == ("event.control.ioboard", BUZZER)
    fired = wait_for(lambda: [e for e in rig.events() if e["fired"]])
    assert len(fired) == 1

    # A message that really waited 5 minutes in a queue is still stale after the correction.
    rig.device.publish(NOTIFY_KEY, notify(detail="Tamper"), when=device_now() - timedelta(minutes=5))
    queued = wait_for(lambda: [e for e in rig.events() if e["event_detail"] == "Tamper"])
    assert queued[0]["reason"] == "stale"
    assert "300 s old" in queued[0]["detail"] and "600 s behind" in queued[0]["detail"]
    assert rig.consumer.quiet(0.5) == rig.consumer.received[:1]

    # The offset is in /api/health and on the device's row of the dashboard.
    clocks = rig.api.get("/api/health")["clocks"]
    assert clocks["offsets"][FRONT] == pytest.approx(600, abs=2)
    assert clocks["warning_seconds"] == 30
    page = browser.new_page()
    log_in(page, rig.base)
    row = page.locator('.device-row[data-label="Front Door Motion"]')
    assert "clock 10 min behind" in str(row.inner_text())
    buzzer = page.locator(f'.device-row[data-label="{BUZZER}"]')
    assert "clock 10 min behind" in str(buzzer.inner_text())
    page.close()


def test_a_meter_crossing_its_limit_on_a_full_disk_still_fires_and_readings_resume(
    make_rig: Callable[..., Rig],
) -> None:
    with diskfull.small_tmpfs(32) as where:
        rig = make_rig(TABLESPACE_PATH=str(where / "event_processor.db"))
        try:
            rig.device.publish("event.heartbeat.meterboard.esp", METER_HEARTBEAT)
            meter = wait_for(
                lambda: next(
                    (d for d in rig.api.get("/api/devices")["inputs"] if d["device_key"] == METER), None
                )
            )
            rig.api.patch("inputs", METER, device_enabled=True, activation_interval=0)
            rig.api.link(METER, "Kitchen Buzzer")
            status, _ = rig.api.call(
                "PATCH",
                f"/api/meters/{meter['id']}",
                {"meter_high_limit": 5, "meter_reading_unit_factor": 1000},
            )
            assert status == 200
            consumer = ControlConsumer(rig.hub.settings)
            readings = 0

            def publish(register: int) -> None:
                nonlocal readings
                rig.device.publish("event.notify.meterboard.esp", meter_reading(register))
                readings += 1
                wait_for(lambda: health.counters().get("processor.meter_readings", 0) >= readings)

            publish(1000)
            diskfull.fill(where)
            deadline = time.monotonic() + 60
            # The WAL may take a few first. The writer stops at its first failing kind (rule state,
            # say) and holds the rest, readings included, until the retry: so any failing kind will do.
            while not db_writes.failing():
                assert time.monotonic() < deadline, "no write ever failed on a full disk"
                publish(1000 + readings)
            assert health.state_of(health.components(), db_writes.COMPONENT) == db_writes.DEGRADED
            publish(6000)  # above 5: the buzzer goes off, full disk or not
            assert consumer.wait(1)[0][2]["data"] == ["Kitchen Buzzer", 0]
            assert "processor.errors" not in health.counters()

            diskfull.free(where)
            publish(7000)
            # written by the AuditWriter once its retry finds space again
            wait_for(lambda: rig.api.get(f"/api/meters/{meter['id']}")["meter_reading"] == "7", timeout=30)
            # the crossing's decision is written (held first if its write came while the disk was full)
            wait_for(lambda: [d["event_detail"] for d in rig.api.decisions(METER)] == ["above 5"], timeout=30)
            wait_for(lambda: db_writes.failing() == [], timeout=30)
            consumer.close()
        finally:
            rig.close()
