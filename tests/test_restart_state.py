"""Rule state surviving a restart of the whole hub: input-link windows, meter zones, recent triggers,
timed re-enables and offline-alert state (latches, windows, intervals and digests: test_rule_state_e2e)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.core import health
from app.core.settings import Settings
from app.engine.presence import presence
from app.hub import Hub
from app.store.models import InputConfig, RuleState
from pylib import threads
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.support import wait_for
from tests.telegram_standin import TelegramStandIn
from tests.test_hub_e2e import BACK, FRONT, IOBOARD_HEARTBEAT, notify
from tests.test_meters_e2e import HEARTBEAT as METER_HEARTBEAT
from tests.test_meters_e2e import METER, reading, readings_seen

TOKEN = "123456:TEST-token"
ROOM = -1001234
USER = 111


def restart(hub: Hub, *, new_presence: bool = False) -> Hub:
    """Stop the hub and start another on the same settings, as a new process of the hub would."""
    hub.stop()
    threads.reset()
    health.reset()
    if new_presence:
        presence.clear()  # a new process has heard nothing yet
    return start_hub(hub.settings)


def start_with_telegram(settings: Settings) -> Hub:
    hub = start_hub(settings)
    wait_for(lambda: health.components().get("telegram", {}).get("state") == "ok", 20)
    return hub


def restart_with_telegram(hub: Hub, *, new_presence: bool = False) -> Hub:
    hub = restart(hub, new_presence=new_presence)
    wait_for(lambda: health.components().get("telegram", {}).get("state") == "ok", 20)
    return hub


@pytest.fixture
def standin() -> Iterator[TelegramStandIn]:
    with TelegramStandIn(TOKEN) as running:
        yield running


@pytest.fixture
def telegram_settings(make_settings, standin: TelegramStandIn) -> Settings:
    return make_settings(
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_ROOM=str(ROOM),
        TELEGRAM_USERS_CSV=str(USER),
        TELEGRAM_API_BASE_URL=standin.base_url,
        TELEGRAM_MIN_SEND_INTERVAL="0",
        USER_TZ="UTC",
    )


def texts(standin: TelegramStandIn, part: str) -> list[str]:
    return [c.text or "" for c in standin.calls("sendMessage") if part in (c.text or "")]


def state_keys(hub: Hub, prefix: str) -> list[str]:
    assert hub.sessions is not None
    with hub.sessions() as session:
        return list(
            session.scalars(select(RuleState.state_key).where(RuleState.state_key.startswith(prefix)))
        )


def enabled(hub: Hub, key: str) -> bool | None:
    assert hub.sessions is not None
    with hub.sessions() as session:
        return session.scalar(select(InputConfig.device_enabled).where(InputConfig.device_key == key))


def test_an_input_link_window_survives_a_restart(make_settings) -> None:
    settings = make_settings()
    hubs = [start_hub(settings)]
    device = Device(settings)
    consumer = ControlConsumer(settings)
    try:
        api = Api(hubs[-1])
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(
            lambda: api.registered("inputs", FRONT, BACK) and api.registered("outputs", "Hallway Buzzer")
        )
        api.patch("inputs", FRONT, device_enabled=True, activation_interval=3600)
        api.patch("inputs", BACK, device_enabled=True)
        api.link(FRONT, "Hallway Buzzer")
        front_id, back_id = api.device("inputs", FRONT)["id"], api.device("inputs", BACK)["id"]
        status, body = api.call("PUT", f"/api/inputs/{front_id}/inputs", {"input_ids": [back_id]})
        assert status == 200 and body["input_ids"] == [back_id], body
        device.publish("event.notify.ioboard.pi-hallway", notify())  # A alone waits for B
        assert wait_for(lambda: api.decisions(FRONT))[0]["reason"] == "input_link"
        device.publish("event.notify.ioboard.pi-hallway", notify(BACK))  # B opens A's window
        wait_for(lambda: api.decisions(BACK))
        assert consumer.quiet(0.3) == []

        hubs.append(restart(hubs[-1]))
        api = Api(hubs[-1])
        device.publish("event.notify.ioboard.pi-hallway", notify(detail="Tamper"))  # A, inside the window
        decision = wait_for(lambda: (d := api.decisions(FRONT)[0])["event_detail"] == "Tamper" and d)
        assert decision["fired"] is True, decision
        assert [m[2]["data"][0] for m in consumer.wait(1)] == ["Hallway Buzzer"]
    finally:
        device.close()
        consumer.close()
        hubs[-1].stop()


def test_a_meter_zone_survives_a_restart(make_settings) -> None:
    settings = make_settings()
    hubs = [start_hub(settings)]
    device = Device(settings)
    consumer = ControlConsumer(settings)
    try:
        api = Api(hubs[-1])
        device.publish("event.heartbeat.meterboard.esp", METER_HEARTBEAT)
        meter_id = wait_for(
            lambda: next(
                (d["id"] for d in api.get("/api/devices")["inputs"] if d["device_key"] == METER), None
            )
        )
        api.patch("inputs", METER, device_enabled=True, activation_interval=0)
        api.link(METER, "Kitchen Buzzer")
        status, body = api.call(
            "PATCH",
            f"/api/meters/{meter_id}",
            {"meter_high_limit": 5, "meter_low_limit": 0, "meter_reading_unit_factor": 1000},
        )
        assert status == 200, body
        for i, register in enumerate([1000, 6000], start=1):  # inside, then above: fires once
            device.publish("event.notify.meterboard.esp", reading(register))
            wait_for(lambda n=i: readings_seen(n))
        consumer.wait(1)
        wait_for(lambda: state_keys(hubs[-1], "processor:meter_zone:"))  # flushed, as a stop would too

        hubs.append(restart(hubs[-1]))  # health.reset(): the reading counter starts again
        api = Api(hubs[-1])
        device.publish("event.notify.meterboard.esp", reading(7000))  # still above: no second alarm
        wait_for(lambda: readings_seen(1))
        assert len(consumer.quiet(0.5)) == 1
        for i, register in enumerate([4000, 9000], start=2):  # back inside, then above again: fires
            device.publish("event.notify.meterboard.esp", reading(register))
            wait_for(lambda n=i: readings_seen(n))
        received = consumer.wait(2)
        assert len(consumer.quiet(0.5)) == 2
        assert [m[2]["data"] for m in received] == [["Kitchen Buzzer", 0], ["Kitchen Buzzer", 0]]
        decisions = wait_for(lambda: len(found := api.decisions(METER)) >= 2 and found)
        assert [d["event_detail"] for d in decisions] == ["above 5", "above 5"]
    finally:
        device.close()
        consumer.close()
        hubs[-1].stop()


def test_the_recent_trigger_list_survives_a_restart(telegram_settings, standin) -> None:
    hubs = [start_with_telegram(telegram_settings)]
    device = Device(telegram_settings)
    try:
        api = Api(hubs[-1])
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(
            lambda: api.registered("inputs", FRONT, BACK) and api.registered("outputs", "Hallway Buzzer")
        )
        api.patch("inputs", BACK, device_enabled=True, device_label="Back Door X")
        api.patch("inputs", FRONT, device_enabled=True)
        api.link(BACK, "Hallway Buzzer")
        api.link(FRONT, "SMS")
        device.publish("event.notify.ioboard.pi-hallway", notify(BACK))  # X fires
        assert wait_for(lambda: api.decisions(BACK))[0]["fired"] is True
        assert standin.calls("sendMessage") == []

        hubs.append(restart_with_telegram(hubs[-1]))
        api = Api(hubs[-1])
        device.publish("event.notify.ioboard.pi-hallway", notify(FRONT))  # Y, linked to SMS
        message = standin.wait_calls("sendMessage", 1, timeout=20)[0].text or ""
        assert message.startswith("Front Door Motion ("), message
        assert "s ago: Back Door X" in message, message
    finally:
        device.close()
        hubs[-1].stop()


def test_a_timed_reenable_survives_a_restart_of_the_hub(telegram_settings, standin) -> None:
    hubs = [start_with_telegram(telegram_settings)]
    device = Device(telegram_settings)
    try:
        api = Api(hubs[-1])
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(
            lambda: api.registered("inputs", FRONT, BACK) and api.registered("outputs", "Hallway Buzzer")
        )
        api.patch("inputs", FRONT, device_enabled=True)
        # Long enough that the stop below is surely before it is due, on a slow machine too.
        standin.message_update("/inputoff front door 6s", USER)
        question = standin.wait_calls("sendMessage", 1, timeout=20)[0]
        keyboard = question.json_param("reply_markup")["inline_keyboard"][0]
        data = {b["text"]: b["callback_data"] for b in keyboard}["Confirm"]
        standin.callback_update(data, USER, message_id=int(question.params.get("message_id", 1)))
        edit = standin.wait_calls("editMessageText", 1, timeout=20)[0]
        assert "Re-enabling after 6s" in (edit.text or ""), edit.text
        assert enabled(hubs[-1], FRONT) is False

        hubs[-1].stop()
        assert enabled(hubs[-1], FRONT) is False  # not due yet when the hub stopped ...
        assert state_keys(hubs[-1], "reenable:input:")  # ... and the promise is stored
        threads.reset()
        health.reset()
        hubs.append(start_with_telegram(telegram_settings))
        wait_for(lambda: enabled(hubs[-1], FRONT) is True, 30)
        wait_for(lambda: state_keys(hubs[-1], "reenable:") == [])
    finally:
        device.close()
        hubs[-1].stop()


def test_offline_alert_state_survives_a_restart_of_the_hub(telegram_settings, standin) -> None:
    # The device is configured before the hub starts, so the monitor's first check watches it.
    setup = Hub(telegram_settings)
    setup.init_database()
    assert setup.sessions is not None
    with setup.sessions() as session:
        session.add(InputConfig(device_key="pir", device_type="Motion", device_label="PIR", origin="pi-1"))
        session.commit()
    setup.engine.dispose()  # type: ignore[union-attr]

    hubs = [start_with_telegram(telegram_settings)]
    try:
        # Heard every 30 s until about 5 minutes ago: well past its offline threshold now.
        past = time.time() - 400
        for i in range(4):
            presence.seen("pi-1", ["pir"], past + 30 * i)
        alert = wait_for(lambda: texts(standin, "Offline"), 30)[0]
        assert "PIR" in alert
        assert state_keys(hubs[-1], "offline:state")

        hubs.append(restart_with_telegram(hubs[-1], new_presence=True))
        # A check has run with the resumed state: the device is still offline, and not announced again.
        wait_for(lambda: (health.components().get("offline_monitor") or {}).get("detail") == "1 offline", 30)
        presence.seen("pi-1", ["pir"])  # heard again
        back = wait_for(lambda: texts(standin, "Back online"), 30)[0]
        assert "PIR" in back
        # The notifier sends in order, so a second outage alert would have come before this one.
        assert len(texts(standin, "Offline")) == 1, texts(standin, "Offline")
    finally:
        hubs[-1].stop()
