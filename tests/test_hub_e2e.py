"""End to end against the real RabbitMQ: devices in, rules, control messages out, decisions recorded."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta

import pytest

from app.core import health
from app.engine import commands
from pylib import threads, wire
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.store.test_db import temporary_pg_database
from tests.support import wait_for

IOBOARD_HEARTBEAT = {
    "statistics": {"sample_count": 123456},
    "device_info": {
        "inputs": [
            {
                "name": "Front Door",
                "type": "Motion",
                "location": "Hallway",
                "device_key": "Front Door Motion (Hallway)",
                "device_label": "Front Door Motion",
            },
            {
                "name": "Back Door",
                "type": "Contact",
                "location": "Kitchen",
                "device_key": "Back Door Contact (Kitchen)",
                "device_label": "Back Door Contact",
            },
        ],
        "outputs": [{"type": "Buzzer", "location": "Hallway", "device_key": "Hallway Buzzer"}],
    },
}
SNAPSHOT_HEARTBEAT = {
    "device_info": {
        "inputs": [{"type": "Camera", "location": "Front", "device_key": "Front Camera"}],
        "outputs": [{"location": "Front", "type": "Camera", "device_key": "Front Camera"}],
    }
}
FRONT = "Front Door Motion (Hallway)"
BACK = "Back Door Contact (Kitchen)"


def notify(key: str = FRONT, value: int = 97, detail: str | None = None) -> dict:
    name, rest = key.split(" ", 1)[0], key
    device = {"device_key": rest, "device_label": rest.split(" (")[0], "sample_value": value, "name": name}
    if detail:
        device["event_detail"] = detail
    return {"samples": {key: value}, "active_devices": [device]}


@pytest.fixture
def rig(make_settings):
    """A running hub with the remote-monitor and snapshot devices registered; yields helpers."""
    settings = make_settings()
    hub = start_hub(settings)
    device = Device(settings)
    consumer = ControlConsumer(settings, ("event.control.ioboard", "event.control.snapshot"))
    api = Api(hub)
    device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
    device.publish("event.heartbeat.snapshot", SNAPSHOT_HEARTBEAT)
    wait_for(lambda: len(api.get("/api/devices")["outputs"]) >= 3)
    yield settings, hub, device, consumer, api
    device.close()
    consumer.close()
    hub.stop()


def arm(api: Api, key: str = FRONT, **fields) -> None:
    api.patch("inputs", key, device_enabled=True, **fields)
    api.link(key, "Hallway Buzzer")


def test_heartbeat_registers_inputs_disabled_and_outputs_enabled(rig) -> None:
    _, _, _, _, api = rig
    devices = api.get("/api/devices")
    inputs = {d["device_key"]: d for d in devices["inputs"]}
    outputs = {d["device_key"]: d for d in devices["outputs"]}
    assert {FRONT, BACK, "Front Camera", "App Panic Button", "App Dash Button"} <= set(inputs)
    assert {"Hallway Buzzer", "Front Camera", "SMS"} <= set(outputs)
    front = inputs[FRONT]
    assert front["device_label"] == "Front Door Motion" and front["device_type"] == "Motion"
    assert front["device_enabled"] is False and front["online"] is True and front["last_seen"]
    assert outputs["Hallway Buzzer"]["device_enabled"] is True
    assert outputs["Front Camera"]["device_label"] == "Front Camera"


def test_enabled_linked_input_sends_exactly_one_ioboard_message(rig) -> None:
    settings, _, device, consumer, api = rig
    arm(api)
    before = datetime.now(UTC)
    device.publish("event.notify.ioboard.pi-hallway", notify())
    routing_key, props, body = consumer.wait(1)[0]
    assert routing_key == "event.control.ioboard"
    assert set(body) == {"timestamp", "data"}
    assert body["data"] == ["Hallway Buzzer", None]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000", body["timestamp"])
    assert wire.parse_timestamp(body["timestamp"]) >= before - timedelta(seconds=1)
    assert props.expiration is not None and 0 < int(props.expiration) <= settings.control_message_ttl * 1000
    assert consumer.quiet(1.0) == consumer.received[:1]
    decisions = wait_for(lambda: api.decisions(FRONT))
    assert decisions[0]["fired"] is True
    assert (
        decisions[0]["outputs"][0]["output_key"] == "Hallway Buzzer" and decisions[0]["outputs"][0]["fired"]
    )


def test_duration_is_the_inputs_activation_interval_when_set(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api, activation_interval=5)
    device.publish("event.notify.ioboard.pi-hallway", notify())
    assert consumer.wait(1)[0][2]["data"] == ["Hallway Buzzer", 5]


def test_camera_output_gets_snapshot_message_with_params(rig) -> None:
    _, _, device, consumer, api = rig
    api.patch("inputs", FRONT, device_enabled=True)
    api.patch("outputs", "Front Camera", device_params="admin:pw@192.168.1.20:88,554")
    api.link(FRONT, "Front Camera")
    device.publish("event.notify.ioboard.pi-hallway", notify())
    routing_key, _, body = consumer.wait(1)[0]
    assert routing_key == "event.control.snapshot"
    assert body["data"] == ["Front Camera", "Front Camera", "admin:pw@192.168.1.20:88,554"]


def test_latch_holds_a_repeated_activation(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api)
    for _ in range(3):
        device.publish("event.notify.ioboard.pi-hallway", notify())
    consumer.wait(1)
    assert len(consumer.quiet(1.0)) == 1
    decisions = wait_for(lambda: (d := api.decisions(FRONT)) and len(d) == 3 and d)
    reasons = [d["reason"] for d in decisions]
    assert reasons.count("latched") == 2 and reasons.count(None) == 1
    assert "latched until" in decisions[0]["detail"]
    device.publish("event.notify.ioboard.pi-hallway", notify(detail="Tamper"))  # new detail bypasses
    consumer.wait(2)


def test_multi_trigger_fires_on_the_second_within_the_window(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api, multi_trigger=True, activation_interval=0)
    device.publish("event.notify.ioboard.pi-hallway", notify())
    first = wait_for(lambda: api.decisions(FRONT))
    assert first[0]["reason"] == "multi_trigger" and first[0]["detail"] == "1 of 2 in the 10 s window"
    assert consumer.quiet(0.5) == []
    device.publish("event.notify.ioboard.pi-hallway", notify())
    consumer.wait(1)


def test_input_link_requires_the_partner_to_trigger(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api)
    back = api.device("inputs", BACK)
    front = api.device("inputs", FRONT)
    status, _ = api.call("PUT", f"/api/inputs/{front['id']}/inputs", {"input_ids": [back["id"]]})
    assert status == 200
    device.publish("event.notify.ioboard.pi-hallway", notify())
    blocked = wait_for(lambda: api.decisions(FRONT))
    assert blocked[0]["reason"] == "input_link" and "Back Door Contact" in blocked[0]["detail"]
    device.publish("event.notify.ioboard.pi-hallway", notify(BACK))  # disabled itself, but it triggered
    device.publish("event.notify.ioboard.pi-hallway", notify())
    assert consumer.wait(1)[0][2]["data"] == ["Hallway Buzzer", None]


def test_stale_message_is_dropped(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api)
    device.publish(
        "event.notify.ioboard.pi-hallway", notify(), when=datetime.now(UTC) - timedelta(minutes=10)
    )
    stale = wait_for(lambda: api.decisions(FRONT))
    assert stale[0]["reason"] == "stale" and "s old" in stale[0]["detail"]
    assert consumer.quiet(0.5) == []


def test_disabled_input_does_not_fire(rig) -> None:
    _, _, device, consumer, api = rig
    api.link(FRONT, "Hallway Buzzer")
    device.publish("event.notify.ioboard.pi-hallway", notify())
    assert wait_for(lambda: api.decisions(FRONT))[0]["reason"] == "disabled"
    assert consumer.quiet(0.5) == []


def test_output_interval_limits_an_output_across_inputs(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api)
    arm(api, BACK)
    api.patch("outputs", "Hallway Buzzer", trigger_interval=3600)
    device.publish("event.notify.ioboard.pi-hallway", notify())
    consumer.wait(1)
    device.publish("event.notify.ioboard.pi-hallway", notify(BACK))
    decision = wait_for(lambda: api.decisions(BACK))[0]
    assert decision["fired"] is True  # the input fired; its output was held back
    assert decision["outputs"][0]["reason"] == "output_interval"
    assert len(consumer.quiet(0.5)) == 1


def test_disabled_output_is_skipped(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api)
    api.patch("outputs", "Hallway Buzzer", device_enabled=False)
    device.publish("event.notify.ioboard.pi-hallway", notify())
    assert wait_for(lambda: api.decisions(FRONT))[0]["outputs"][0]["reason"] == "output_disabled"
    assert consumer.quiet(0.5) == []


def test_outputs_off_is_persisted_across_restart(make_settings) -> None:
    settings = make_settings()
    hub = start_hub(settings)
    api = Api(hub)
    assert api.call("PUT", "/api/outputs-enabled", {"enabled": False})[0] == 200
    hub.stop()
    threads.reset()
    health.reset()
    hub = start_hub(settings)
    try:
        api = Api(hub)
        assert api.get("/api/outputs-enabled")["enabled"] is False
        device = Device(settings)
        consumer = ControlConsumer(settings)
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(lambda: any(d["device_key"] == FRONT for d in api.get("/api/devices")["inputs"]))
        arm(api)
        device.publish("event.notify.ioboard.pi-hallway", notify())
        decision = wait_for(lambda: api.decisions(FRONT))[0]
        assert decision["outputs"][0]["reason"] == "outputs_off"
        assert consumer.quiet(0.5) == []
        assert api.call("PUT", "/api/outputs-enabled", {"enabled": True})[0] == 200
        device.publish("event.notify.ioboard.pi-hallway", notify(detail="Tamper"))
        consumer.wait(1)
        device.close()
        consumer.close()
    finally:
        hub.stop()


def test_unknown_active_input_is_registered_disabled(rig) -> None:
    _, _, device, consumer, api = rig
    device.publish("event.notify.ioboard.pi-garage", notify("Garage Door Contact (Garage)"))
    dev = wait_for(
        lambda: next(
            (
                d
                for d in api.get("/api/devices")["inputs"]
                if d["device_key"] == "Garage Door Contact (Garage)"
            ),
            None,
        )
    )
    assert dev["device_enabled"] is False
    assert wait_for(lambda: api.decisions("Garage Door Contact (Garage)"))[0]["reason"] == "disabled"


def test_same_key_from_second_origin_is_not_fatal(rig) -> None:
    _, hub, device, consumer, api = rig
    arm(api)
    device.publish("event.heartbeat.otherboard.pi-2", IOBOARD_HEARTBEAT)
    wait_for(lambda: health.counters().get("heartbeat_filter.origin_conflict"))
    device.publish("event.notify.ioboard.pi-hallway", notify())
    consumer.wait(1)
    assert all(t.is_alive() for t in threads.tracked())


MALFORMED = [
    b"\x00\x01garbage\xff\xfe",
    wire.make_payload(None)[:-1] + b"\xc1",
    b"\x93\x01\x02\x03",  # a msgpack array
    b"\x81\x01\x02",  # a map with an integer key
    b"\x82\xa9timestamp\xa1x\xa4data\xa3abc",  # bad timestamp, data a string
]


def test_malformed_bodies_are_counted_and_threads_live(rig) -> None:
    _, _, device, consumer, api = rig
    arm(api)
    for body in MALFORMED:
        device.publish("event.notify.ioboard.pi-hallway", body=body)
    # well-formed envelopes with wrong types inside
    device.publish("event.notify.ioboard.pi-hallway", {"active_devices": "not a list"})
    device.publish(
        "event.notify.ioboard.pi-hallway", {"active_devices": [42, {"no_key": 1}, {"device_key": 7}]}
    )
    device.publish(
        "event.heartbeat.ioboard.pi-hallway", {"device_info": {"inputs": {"a": 1}, "outputs": [None]}}
    )
    device.publish("event.notify.ioboard.pi-hallway", body=b"\xc4" + b"x" * 10)  # truncated bin
    wait_for(lambda: health.counters().get("rabbitmq_source.malformed", 0) >= len(MALFORMED) + 1)
    # the codec refuses the list that is not a list and the item that is not a map; the HeartbeatFilter
    # counts those and the keyless devices, the processor the keyless devices it was handed
    wait_for(lambda: health.counters().get("processor.malformed", 0) >= 2)
    wait_for(lambda: health.counters().get("heartbeat_filter.bad_device", 0) >= 6)
    device.publish("event.notify.ioboard.pi-hallway", notify())
    consumer.wait(1)
    assert all(t.is_alive() for t in threads.tracked())
    status, body = api.call("GET", "/api/health")
    assert status == 200 and body["counters"]["rabbitmq_source.malformed"] >= len(MALFORMED) + 1


def test_oversize_body_is_counted(make_settings) -> None:
    settings = make_settings(RABBITMQ_MAX_MESSAGE_BYTES="65536")
    hub = start_hub(settings)
    device = Device(settings)
    try:
        device.publish("event.notify.ioboard.pi-hallway", {"blob": b"x" * 100_000})
        wait_for(lambda: health.counters().get("rabbitmq_source.malformed"))
        assert all(t.is_alive() for t in threads.tracked())
    finally:
        device.close()
        hub.stop()


def test_device_label_and_type_changes_follow_unless_customised(rig) -> None:
    _, _, device, _, api = rig
    changed = copy.deepcopy(IOBOARD_HEARTBEAT)
    changed["device_info"]["inputs"][0]["device_label"] = "Front Door PIR"
    changed["device_info"]["inputs"][0]["type"] = "PIR"
    device.publish("event.heartbeat.ioboard.pi-hallway", changed)
    front = wait_for(lambda: (d := api.device("inputs", FRONT))["device_label"] == "Front Door PIR" and d)
    assert front["device_type"] == "PIR"
    api.patch("inputs", FRONT, device_label="Hall door")
    changed["device_info"]["inputs"][0]["device_label"] = "Front Door Sensor"
    changed["device_info"]["inputs"][0]["type"] = "Motion"
    device.publish("event.heartbeat.ioboard.pi-hallway", changed)
    front = wait_for(lambda: (d := api.device("inputs", FRONT))["device_type"] == "Motion" and d)
    assert front["device_label"] == "Hall door"


@pytest.mark.postgres
def test_hub_runs_on_postgresql(make_settings) -> None:
    with temporary_pg_database() as url:
        settings = make_settings(DATABASE_URL=url)
        hub = start_hub(settings)
        device = Device(settings)
        consumer = ControlConsumer(settings)
        try:
            api = Api(hub)
            device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
            wait_for(lambda: any(d["device_key"] == FRONT for d in api.get("/api/devices")["inputs"]))
            arm(api)
            device.publish("event.notify.ioboard.pi-hallway", notify())
            assert consumer.wait(1)[0][2]["data"] == ["Hallway Buzzer", None]
            assert wait_for(lambda: api.decisions(FRONT))[0]["fired"] is True
        finally:
            device.close()
            consumer.close()
            hub.stop()


def test_fire_input_command_runs_the_panic_button_through_the_rules(rig) -> None:
    _, _, _, consumer, api = rig
    reply = commands.request("fire_input", {"device_key": "App Panic Button"}, actor="test")
    assert reply.ok and reply.result["reason"] == "disabled"
    arm(api, "App Panic Button")
    reply = commands.request("fire_input", {"device_key": "App Panic Button"}, actor="test")
    assert reply.ok and reply.result["fired"] is True
    assert consumer.wait(1)[0][2]["data"] == ["Hallway Buzzer", None]
    assert commands.request("fire_input", {"device_key": "nope"}).status == 404
    decision = wait_for(lambda: (d := api.decisions("App Panic Button")) and len(d) == 2 and d)[0]
    assert decision["origin"] == "event-processor (test)" and decision["fired"] is True
