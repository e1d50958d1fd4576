"""Quiet-hours deferral and digest through a real hub, and rule state surviving a restart of the hub."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.core import health
from app.engine.presence import Presence
from app.hub import Hub
from app.outputs.offline import OfflineMonitor
from app.store.models import InputConfig, RuleState
from pylib import threads
from tests.hubtools import Api, ControlConsumer, Device
from tests.outputs.telegram.test_telegram_commands import GARAGE, Rig, rig  # noqa: F401 - the bot rig fixture
from tests.support import wait_for
from tests.telegram_standin import TelegramStandIn
from tests.test_hub_e2e import BACK, FRONT, IOBOARD_HEARTBEAT, SNAPSHOT_HEARTBEAT, notify

TOKEN = "123456:TEST-token"
ROOM = -1001234
CAMERA = "Front Camera"
TWO_HOURS = 2 * 3600 + 120  # past the window opening below, still inside it


class Clock:
    """Real time plus an offset the test moves forward (messages keep real timestamps)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def quiet_env() -> dict[str, str]:
    """Quiet now: notifications allowed from 2 h to 4 h from now (UTC), so opening is 2 h ahead."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return {
        "USER_TZ": "UTC",
        "QUIET_HOURS_NOT_BEFORE": (now + timedelta(hours=2)).strftime("%H:%M"),
        "QUIET_HOURS_NOT_AFTER": (now + timedelta(hours=4)).strftime("%H:%M"),
    }


def start(settings, clock: Clock) -> Hub:
    hub = Hub(settings, clock)
    hub.start()
    for component in ("rabbitmq_source", "control_publisher"):
        wait_for(lambda c=component: health.components().get(c, {}).get("state") == "connected", 30)
    wait_for(lambda: health.components().get("telegram", {}).get("state") == "ok", 20)
    return hub


def restart(hub: Hub, clock: Clock) -> Hub:
    hub.stop()
    threads.reset()
    health.reset()
    return start(hub.settings, clock)


@pytest.fixture
def quiet_rig(make_settings):
    with TelegramStandIn(TOKEN) as standin:
        settings = make_settings(
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_CHAT_ROOM=str(ROOM),
            TELEGRAM_USERS_CSV="111",
            TELEGRAM_API_BASE_URL=standin.base_url,
            TELEGRAM_MIN_SEND_INTERVAL="0",
            **quiet_env(),
        )
        clock = Clock()
        hubs = [start(settings, clock)]
        device = Device(settings)
        consumer = ControlConsumer(settings, ("event.control.ioboard", "event.control.snapshot"))
        api = Api(hubs[0])
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        device.publish("event.heartbeat.snapshot", SNAPSHOT_HEARTBEAT)
        wait_for(lambda: len(api.get("/api/devices")["outputs"]) >= 3)
        yield settings, hubs, clock, device, consumer, api, standin
        device.close()
        consumer.close()
        hubs[-1].stop()


def camera(detail: str) -> dict:
    return {"active_devices": [{"device_key": CAMERA, "type": "camera", "event_detail": detail}]}


def digests(standin: TelegramStandIn) -> list[str]:
    return [c.text or "" for c in standin.calls("sendMessage") if "Quiet hours digest" in (c.text or "")]


def test_informational_alert_is_deferred_switch_fires_and_one_digest_follows(quiet_rig) -> None:
    _, _, clock, device, consumer, api, standin = quiet_rig
    api.patch("inputs", FRONT, device_enabled=True, info_notify=True)
    api.link(FRONT, "SMS", "Hallway Buzzer")
    device.publish("event.notify.ioboard.pi-hallway", notify())
    device.publish("event.notify.ioboard.pi-hallway", notify(detail="Tamper"))
    assert len(consumer.wait(2)) == 2  # the switch is not affected by quiet hours
    decisions = wait_for(lambda: len(d := api.decisions(FRONT)) >= 2 and d)
    sms = [o for d in decisions for o in d["outputs"] if o["output_key"] == "SMS"]
    assert [o["reason"] for o in sms] == ["quiet_hours", "quiet_hours"]
    assert all(o["detail"].startswith("deferred to ") and o["detail"].endswith(" digest") for o in sms)
    assert standin.calls("sendMessage") == []
    clock.offset = TWO_HOURS
    message = wait_for(lambda: digests(standin), 20)[0]
    assert "2 notifications" in message
    assert "Front Door Motion Tamper" in message and message.count("Front Door Motion") == 2
    time.sleep(1.5)  # a second digest check must not repeat it
    assert len(digests(standin)) == 1


def test_all_outputs_flag_holds_back_switches_and_the_api_round_trips(quiet_rig) -> None:
    _, _, _, device, consumer, api, _ = quiet_rig
    status, body = api.call("PUT", "/api/quiet-hours", {"all_outputs": True})
    assert status == 200 and body["all_outputs"] is True
    assert api.call("PUT", "/api/quiet-hours", {"not_before": "25:00"})[0] == 400
    assert api.call("PUT", "/api/quiet-hours", {"bogus": 1})[0] == 400
    api.patch("inputs", FRONT, device_enabled=True, info_notify=True)
    api.link(FRONT, "Hallway Buzzer")
    device.publish("event.notify.ioboard.pi-hallway", notify())
    output = wait_for(lambda: api.decisions(FRONT))[0]["outputs"][0]
    assert output["reason"] == "quiet_hours" and "held back" in output["detail"]
    assert consumer.quiet(0.5) == []
    # An informational-off input is never held back.
    api.patch("inputs", BACK, device_enabled=True)
    api.link(BACK, "Hallway Buzzer")
    device.publish("event.notify.ioboard.pi-hallway", notify(BACK))
    assert len(consumer.wait(1)) == 1
    # Opening the window now (set_quiet_hours applies at once) lets the same input fire.
    now = datetime.now(UTC)
    window = {"not_before": (now - timedelta(hours=1)).strftime("%H:%M")}
    window["not_after"] = (now + timedelta(hours=1)).strftime("%H:%M")
    status, body = api.call("PUT", "/api/quiet-hours", window)
    assert status == 200 and body["not_before"] == window["not_before"]
    device.publish("event.notify.ioboard.pi-hallway", notify(detail="Tamper"))
    assert len(consumer.wait(2)) == 2


def test_rule_state_survives_a_restart_of_the_hub(quiet_rig) -> None:
    settings, hubs, clock, device, consumer, api, standin = quiet_rig
    api.patch("inputs", FRONT, device_enabled=True)
    api.link(FRONT, "Hallway Buzzer")
    api.patch("outputs", "Hallway Buzzer", trigger_interval=3600)
    api.patch("inputs", BACK, device_enabled=True, multi_trigger=True, multi_trigger_rate=3)
    api.patch("inputs", BACK, multi_trigger_interval=3600)
    api.link(BACK, CAMERA)
    api.patch("outputs", CAMERA, device_params="admin:pw@192.168.1.20:88,554")  # without, it is refused
    api.patch("inputs", CAMERA, device_enabled=True, info_notify=True)
    api.link(CAMERA, "SMS")
    device.publish("event.notify.ioboard.pi-hallway", notify())  # latches FRONT, buzzer interval starts
    consumer.wait(1)
    device.publish("event.notify.ioboard.pi-hallway", notify(BACK))
    device.publish("event.notify.ioboard.pi-hallway", notify(BACK))  # 2 of 3 in the window
    device.publish("event.notify.snapshot.snapshot-processor.image", camera("1 person"))  # deferred
    wait_for(lambda: len(api.decisions(BACK)) >= 2 and api.decisions(CAMERA))

    hubs.append(restart(hubs[-1], clock))
    api = Api(hubs[-1])
    device.publish("event.notify.ioboard.pi-hallway", notify())
    assert wait_for(lambda: api.decisions(FRONT)[0]["reason"] == "latched" or None)
    device.publish("event.notify.ioboard.pi-hallway", notify(detail="Tamper"))  # bypasses the latch ...
    front = wait_for(lambda: (d := api.decisions(FRONT)[0])["event_detail"] == "Tamper" and d)
    assert front["fired"] and front["outputs"][0]["reason"] == "output_interval"  # ... not the interval
    device.publish("event.notify.ioboard.pi-hallway", notify(BACK))  # the third in the same window
    back = wait_for(lambda: len(d := api.decisions(BACK)) >= 3 and d)[0]
    assert back["fired"] is True
    routing_keys = [r[0] for r in consumer.wait(2)]
    assert routing_keys == ["event.control.ioboard", "event.control.snapshot"]
    clock.offset = TWO_HOURS
    assert "Front Camera 1 person" in wait_for(lambda: digests(standin), 20)[0]
    # Sent digests are cleared from rule_state too, so the next start does not repeat them.
    with hubs[-1].sessions() as session:
        wait_for(
            lambda: session.scalar(select(RuleState).where(RuleState.state_key == "processor:digest")) is None
        )


def test_a_timed_reenable_survives_a_restart_of_the_bot(rig: Rig) -> None:  # noqa: F811
    first = rig.bot()
    question = rig.ask("/inputoff garage 8s")
    rig.press(question, "Confirm")
    assert "Re-enabling after 8s" in rig.reply(method="editMessageText").text
    first.stop()
    rig.bots.remove(first)
    with rig.hub.sessions() as session:
        assert session.scalar(select(RuleState).where(RuleState.state_key.startswith("reenable:input:")))
    assert rig.enabled(InputConfig, GARAGE) is False
    rig.bot()  # a new process's bot: re-arms the re-enable from rule_state
    wait_for(lambda: rig.enabled(InputConfig, GARAGE) is True, 30)
    with rig.hub.sessions() as session:
        wait_for(
            lambda: (
                session.scalar(select(RuleState).where(RuleState.state_key.startswith("reenable:"))) is None
            )
        )


def test_offline_alert_state_survives_a_restart(make_settings) -> None:
    from tests.outputs.test_offline import HUB, T0
    from tests.outputs.test_offline import Clock as OfflineClock

    settings = make_settings(DEVICE_NAME=HUB, USER_TZ="UTC")
    hub = Hub(settings)
    hub.init_database()
    assert hub.sessions is not None
    with hub.sessions() as session:
        session.add(InputConfig(device_key="pir", device_type="Motion", device_label="PIR", origin="pi-1"))
        session.commit()
    clock = OfflineClock(T0)
    presence = Presence()
    for i in range(4):
        presence.seen("pi-1", ["pir"], T0 + 30 * i)
    first = OfflineMonitor(settings, hub.sessions, presence, clock)
    clock.now = T0 + 400
    assert [t for t in first.check() if "Offline" in t]
    # A new process: its presence has heard nothing yet, or the device's rhythm is known again.
    for fresh in (Presence(), presence):
        clock.now = T0 + 500
        assert OfflineMonitor(settings, hub.sessions, fresh, clock).check() == []
    second = OfflineMonitor(settings, hub.sessions, Presence(), clock)
    assert second.check() == []
    second._presence.seen("pi-1", ["pir"], T0 + 600)  # heard again: the outage the first run saw ends
    clock.now = T0 + 601
    texts = second.check()
    assert len(texts) == 1 and "Back online" in texts[0] and "PIR" in texts[0]
    with hub.sessions() as session:
        stored = session.scalar(select(RuleState.state_value).where(RuleState.state_key == "offline:state"))
    assert stored == '{"offline":{},"alerted":[]}'  # the outage is over for the next start too
    hub.engine.dispose()  # type: ignore[union-attr]
