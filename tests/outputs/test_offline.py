"""Tests for the OfflineMonitor and presence's learned intervals: injected clock, real SQLite database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.core import health
from app.core.channels import NOTIFIER, Notification
from app.core.settings import Settings
from app.engine.presence import Presence
from app.outputs.offline import OfflineMonitor
from app.store import db
from app.store.models import InputConfig, OutputConfig
from pylib import inproc
from tests.support import wait_for

T0 = datetime(2024, 5, 1, 14, 0, tzinfo=UTC).timestamp()
HUB = "the-hub"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    sessions: sessionmaker[Session]
    presence: Presence
    clock: Clock
    make_settings: Callable[..., Settings]

    def monitor(self, check_seconds: float = 5.0, **env: str) -> OfflineMonitor:
        settings = self.make_settings(DEVICE_NAME=HUB, USER_TZ="UTC", **env)
        return OfflineMonitor(settings, self.sessions, self.presence, self.clock, check_seconds=check_seconds)

    def add(self, *rows: Any) -> None:
        with self.sessions() as s:
            s.add_all(rows)
            s.commit()

    def beats(self, origin: str, keys: list[str], every: float, count: int, start: float = T0) -> float:
        """count heartbeats `every` seconds apart from start; returns the time of the last one."""
        when = start
        for i in range(count):
            when = start + i * every
            self.presence.seen(origin, keys, when)
        return when

    def at(self, monitor: OfflineMonitor, when: float) -> list[str]:
        self.clock.now = when
        return monitor.check()


@pytest.fixture
def rig(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Rig]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'offline.db'}")
    db.upgrade(engine)
    yield Rig(db.session_factory(engine), Presence(), Clock(T0), make_settings)
    engine.dispose()


def an_input(key: str, label: str | None = None, origin: str = "ioboard", alert: bool | None = None) -> Any:
    return InputConfig(
        device_key=key, device_type="Motion", device_label=label, origin=origin, alert_offline=alert
    )


def an_output(key: str, label: str | None = None, origin: str = "ioboard", alert: bool | None = None) -> Any:
    return OutputConfig(
        device_key=key, device_type="Buzzer", device_label=label, origin=origin, alert_offline=alert
    )


# ---- learning -------------------------------------------------------------------------------


def test_presence_learns_the_usual_interval_and_ignores_bursts() -> None:
    p = Presence()
    p.seen("o", ["a"], 1000.0)
    timing = p.timing("a")
    assert timing is not None and not timing.heartbeating and timing.interval is None
    p.seen("o", ["a"], 1030.0)
    p.seen("o", ["a"], 1030.1)  # a burst: not a gap
    timing = p.timing("a")
    assert timing is not None and timing.heartbeating and timing.gaps == 1 and timing.interval is None
    p.seen("o", ["a"], 1060.1)
    p.seen("o", ["a"], 1090.1)
    timing = p.timing("a")
    assert timing is not None and timing.gaps == 3 and timing.interval == pytest.approx(30.0, abs=0.1)
    p.seen("o", ["a"], 1090.1 + 3600)  # an outage is not the rhythm ...
    timing = p.timing("a")
    assert timing is not None and timing.interval == pytest.approx(30.0, abs=0.1)
    for i in range(1, 3):  # ... but several long gaps in a row are
        p.seen("o", ["a"], 1090.1 + 3600 + i * 600)
    timing = p.timing("a")
    assert timing is not None and timing.interval == pytest.approx(600.0)
    last = 1090.1 + 3600 + 1200
    p.seen("o", ["a"], 1050.0)  # an old message arriving late does not move last-seen back
    assert p.last_seen("a") == last
    assert set(p.timings()) == {"a"}
    p.clear()
    assert p.timing("a") is None and p.timings() == {}


def test_learned_interval_every_30_s_means_offline_after_90_s_not_before(rig: Rig) -> None:
    rig.add(an_input("door", "Front Door Motion"))
    last = rig.beats("ioboard", ["door"], 30, 5)  # 14:00:00 .. 14:02:00
    monitor = rig.monitor()
    assert rig.at(monitor, last + 89) == []
    assert rig.at(monitor, last + 90) == []
    assert rig.at(monitor, last + 91) == ["⚠️ Offline since 14:02: Front Door Motion"]
    assert monitor.offline() == {"door": last}
    assert health.components()["offline_monitor"]["detail"] == "1 offline"
    assert health.counters()["offline.alerts"] == 1


def test_the_floor_holds_for_fast_heartbeats(rig: Rig) -> None:
    rig.add(an_input("door", "Door"))
    last = rig.beats("ioboard", ["door"], 5, 10)  # 3 x 5 s = 15 s, below the 60 s floor
    monitor = rig.monitor()
    assert rig.at(monitor, last + 59) == []
    assert rig.at(monitor, last + 61) != []


def test_the_floor_is_a_setting(rig: Rig) -> None:
    rig.add(an_input("door", "Door"))
    last = rig.beats("ioboard", ["door"], 5, 10)
    monitor = rig.monitor(OFFLINE_ALERT_FLOOR_SECONDS="20")
    assert rig.at(monitor, last + 19) == []
    assert rig.at(monitor, last + 21) != []


def test_max_heartbeat_delay_until_an_interval_is_learned(rig: Rig) -> None:
    rig.add(an_input("door", "Door"))
    last = rig.beats("ioboard", ["door"], 10, 2)  # one gap: not enough to trust
    monitor = rig.monitor(MAX_HEARTBEAT_DELAY_SECONDS="200")
    assert rig.at(monitor, last + 199) == []
    assert rig.at(monitor, last + 201) == ["⚠️ Offline since 14:00: Door"]


def test_a_device_heard_once_or_never_is_not_alerted(rig: Rig) -> None:
    rig.add(an_input("once", "Once"), an_input("never", "Never"))
    rig.presence.seen("ioboard", ["once"], T0)
    monitor = rig.monitor()
    assert rig.at(monitor, T0 + 86400) == []
    assert monitor.offline() == {}


# ---- messages -------------------------------------------------------------------------------


def test_one_message_for_several_devices_going_offline_in_one_check(rig: Rig) -> None:
    rig.add(an_input("door", "Front Door Motion"), an_output("buzzer", "Hallway Buzzer", "pi2", alert=True))
    rig.beats("ioboard", ["door"], 30, 5, start=T0 + 5)
    last = rig.beats("pi2", ["buzzer"], 30, 5)
    monitor = rig.monitor()
    texts = rig.at(monitor, last + 120)
    assert texts == ["⚠️ Offline since 14:02: Front Door Motion, Hallway Buzzer"]


def test_different_last_heard_times_are_shown_per_device(rig: Rig) -> None:
    rig.add(an_input("a", "Alpha"), an_input("b", "Beta", origin="pi2"))
    rig.beats("ioboard", ["a"], 30, 5)  # last 14:02
    rig.beats("pi2", ["b"], 30, 5, start=T0 + 60)  # last 14:03
    monitor = rig.monitor()
    assert rig.at(monitor, T0 + 400) == ["⚠️ Offline: Alpha (since 14:02), Beta (since 14:03)"]


def test_many_devices_of_one_origin_give_one_grouped_message(rig: Rig) -> None:
    keys = [f"relay{i}" for i in range(6)]
    rig.add(*(an_input(k, f"Relay {i}") for i, k in enumerate(keys)), an_input("cam", "Garage", "pi2"))
    last = rig.beats("ioboard", keys, 30, 5)
    rig.beats("pi2", ["cam"], 30, 5, start=T0 + 200)  # still fine
    monitor = rig.monitor()
    texts = rig.at(monitor, last + 100)
    assert texts == [
        "⚠️ 6 devices of ioboard offline since 14:02 (their broker or Pi may be down): "
        "Relay 0, Relay 1, Relay 2, Relay 3, Relay 4, Relay 5"
    ]
    assert health.counters()["offline.alerts"] == 6


def test_three_of_one_origin_are_grouped_and_the_rest_listed_in_the_same_message(rig: Rig) -> None:
    rig.add(*(an_input(f"r{i}", f"Relay {i}") for i in range(3)), an_input("cam", "Garage", "pi2"))
    last = rig.beats("ioboard", ["r0", "r1", "r2"], 30, 5)
    rig.beats("pi2", ["cam"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 100) == [
        "⚠️ 3 devices of ioboard offline since 14:02 (their broker or Pi may be down): "
        "Relay 0, Relay 1, Relay 2\n"
        "⚠️ Offline since 14:02: Garage"
    ]


def test_five_from_mixed_origins_in_one_check_are_one_grouped_message(rig: Rig) -> None:
    rows = [an_input(f"d{i}", f"Dev {i}", origin=f"pi{i % 3}") for i in range(5)]
    rig.add(*rows)
    for i in range(5):
        rig.beats(f"pi{i % 3}", [f"d{i}"], 30, 5)
    monitor = rig.monitor()
    (text,) = rig.at(monitor, T0 + 300)
    assert text.startswith(
        "⚠️ 5 devices of pi0, pi1, pi2 offline since 14:02 (their broker or Pi may be down): "
    )


def test_back_online_after_n_minutes(rig: Rig) -> None:
    rig.add(an_input("door", "Front Door Motion"))
    last = rig.beats("ioboard", ["door"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 100) != []
    rig.presence.seen("ioboard", ["door"], last + 12 * 60 - 3)
    assert rig.at(monitor, last + 12 * 60) == ["✅ Back online after 12 min: Front Door Motion"]
    assert monitor.offline() == {}
    assert health.counters()["offline.back_online"] == 1
    assert health.components()["offline_monitor"]["detail"] == "0 offline"


def test_grouped_back_online(rig: Rig) -> None:
    keys = [f"relay{i}" for i in range(4)]
    rig.add(*(an_input(k, f"Relay {i}") for i, k in enumerate(keys)))
    last = rig.beats("ioboard", keys, 30, 5)
    monitor = rig.monitor()
    rig.at(monitor, last + 100)
    rig.presence.seen("ioboard", keys, last + 3 * 3600)
    assert rig.at(monitor, last + 3 * 3600 + 1) == [
        "✅ 4 devices of ioboard back online after 3 h: Relay 0, Relay 1, Relay 2, Relay 3"
    ]


def test_one_alert_per_outage(rig: Rig) -> None:
    rig.add(an_input("door", "Door"))
    last = rig.beats("ioboard", ["door"], 30, 5)
    monitor = rig.monitor()
    assert len(rig.at(monitor, last + 100)) == 1
    for minutes in range(2, 60):
        assert rig.at(monitor, last + minutes * 60) == []
    # Back, then silent again: a new outage, a new alert.
    back = rig.beats("ioboard", ["door"], 30, 1, start=last + 3600)
    assert rig.at(monitor, back + 1) == ["✅ Back online after 60 min: Door"]
    back = rig.beats("ioboard", ["door"], 30, 3, start=back + 30)
    # The hour of silence was not learned as the rhythm: 90 s still means offline.
    assert rig.at(monitor, back + 89) == []
    assert rig.at(monitor, back + 91) == ["⚠️ Offline since 15:03: Door"]
    assert health.counters()["offline.alerts"] == 2


def test_a_date_is_added_when_the_outage_began_another_day(rig: Rig) -> None:
    rig.add(an_input("door", "Door"))
    last = rig.beats("ioboard", ["door"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 86400) == ["⚠️ Offline since 01 May 14:02: Door"]


# ---- which devices alert --------------------------------------------------------------------


def test_inputs_alert_by_default_and_not_when_turned_off(rig: Rig) -> None:
    rig.add(
        an_input("on", "Default"), an_input("yes", "Yes", alert=True), an_input("off", "Off", alert=False)
    )
    last = rig.beats("ioboard", ["on", "yes", "off"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 100) == ["⚠️ Offline since 14:02: Default, Yes"]
    # Tracked all the same, for /status and the dashboard.
    assert set(monitor.offline()) == {"on", "yes", "off"}
    rig.presence.seen("ioboard", ["on", "yes", "off"], last + 600)
    assert rig.at(monitor, last + 601) == ["✅ Back online after 10 min: Default, Yes"]


def test_outputs_alert_only_when_turned_on(rig: Rig) -> None:
    rig.add(
        an_output("plain", "Plain"), an_output("off", "Off", alert=False), an_output("on", "On", alert=True)
    )
    last = rig.beats("ioboard", ["plain", "off", "on"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 100) == ["⚠️ Offline since 14:02: On"]


def test_the_hubs_own_devices_never_alert(rig: Rig) -> None:
    rig.add(
        an_input("App Panic Button", "Panic Button", origin=HUB, alert=True),
        an_output("SMS", "SMS", origin=HUB, alert=True),
    )
    last = rig.beats(HUB, ["App Panic Button", "SMS"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 1000) == []
    assert monitor.offline() == {}


def test_a_changed_setting_is_read_within_the_refresh_interval(rig: Rig) -> None:
    rig.add(an_output("buzzer", "Buzzer"))
    last = rig.beats("ioboard", ["buzzer"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 10) == []
    with rig.sessions() as s:
        s.execute(update(OutputConfig).values(alert_offline=True))
        s.commit()
    assert rig.at(monitor, last + 20) == []  # cached, and not offline yet anyway
    assert rig.at(monitor, last + 100) == ["⚠️ Offline since 14:02: Buzzer"]


# ---- mDash ----------------------------------------------------------------------------------


def test_mdash_reported_offline_counts_at_once_and_online_again(rig: Rig) -> None:
    rig.add(an_input("meter", "Electricity Meter", origin="meter/electricity"))
    last = rig.beats("meter/electricity", ["meter"], 30, 5)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 10) == []
    rig.presence.report("meter/electricity", False, last)
    assert rig.at(monitor, last + 20) == ["⚠️ Offline since 14:02: Electricity Meter"]
    assert rig.at(monitor, last + 120) == []  # once per outage
    rig.presence.report("meter/electricity", True, last + 700)
    assert rig.at(monitor, last + 720) == ["✅ Back online after 12 min: Electricity Meter"]


def test_mdash_online_does_not_hide_a_silent_device_it_last_heard_long_ago(rig: Rig) -> None:
    rig.add(an_input("meter", "Meter", origin="meter/electricity"))
    last = rig.beats("meter/electricity", ["meter"], 30, 5)
    rig.presence.report("meter/electricity", True, last - 500)
    monitor = rig.monitor()
    assert rig.at(monitor, last + 100) == ["⚠️ Offline since 14:02: Meter"]


# ---- the thread and the notifier ------------------------------------------------------------


def test_notifications_reach_the_notifier_when_telegram_is_on(rig: Rig) -> None:
    rig.add(an_input("door", "Front Door Motion"))
    last = rig.beats("ioboard", ["door"], 30, 5)
    pull = inproc.bind_pull(NOTIFIER)
    try:
        monitor = rig.monitor(check_seconds=0.02, TELEGRAM_BOT_TOKEN="1:x", TELEGRAM_CHAT_ROOM="-100")
        rig.clock.now = last + 10
        monitor.start()
        wait_for(lambda: "offline_monitor" in health.components(), what="the monitor running")
        rig.clock.now = last + 100
        msg = inproc.recv(pull, timeout_ms=5000)
        assert isinstance(msg, Notification)
        assert msg.text == "⚠️ Offline since 14:02: Front Door Motion"
        assert msg.timestamp == last + 100 and msg.input_key == "" and msg.image is None
        rig.presence.seen("ioboard", ["door"], last + 600)
        rig.clock.now = last + 610
        msg = inproc.recv(pull, timeout_ms=5000)
        assert isinstance(msg, Notification) and msg.text == "✅ Back online after 10 min: Front Door Motion"
        assert inproc.recv(pull, timeout_ms=200) is None  # nothing repeated
    finally:
        pull.close()


def test_nothing_is_sent_when_telegram_is_off(rig: Rig) -> None:
    rig.add(an_input("door", "Front Door Motion"))
    last = rig.beats("ioboard", ["door"], 30, 5)
    pull = inproc.bind_pull(NOTIFIER)
    try:
        monitor = rig.monitor(check_seconds=0.02)
        rig.clock.now = last + 100
        monitor.start()
        wait_for(lambda: health.counters().get("offline.alerts") == 1, what="the alert counted")
        assert monitor.offline() == {"door": last}
        assert inproc.recv(pull, timeout_ms=300) is None
    finally:
        pull.close()
