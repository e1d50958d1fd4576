"""Meters end to end (through RabbitMQ, the MQTT path has its own tests): readings, limits, resets."""

from __future__ import annotations

import pytest

from app.core import health
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.support import wait_for

METER = "Electricity Meter"
HEARTBEAT = {
    "device_info": {
        "inputs": [{"device_key": METER, "type": "meter", "location": "Kitchen"}],
        "outputs": [{"type": "Buzzer", "location": "Kitchen", "device_key": "Kitchen Buzzer"}],
    }
}


def reading(register: int, metered: int = 12) -> dict:
    return {
        "active_devices": [
            {
                "device_key": METER,
                "type": "meter",
                "location": "Kitchen",
                "sample_values": {"meter": metered, "register": register},
            }
        ]
    }


@pytest.fixture
def meter_rig(make_settings):
    settings = make_settings()
    hub = start_hub(settings)
    device = Device(settings)
    consumer = ControlConsumer(settings)
    api = Api(hub)
    device.publish("event.heartbeat.meterboard.esp", HEARTBEAT)
    meter_input = wait_for(
        lambda: next((d for d in api.get("/api/devices")["inputs"] if d["device_key"] == METER), None)
    )
    yield device, consumer, api, meter_input["id"]
    device.close()
    consumer.close()
    hub.stop()


def readings_seen(n: int) -> bool:
    return health.counters().get("processor.meter_readings", 0) >= n


def test_meter_registered_with_settings_row_and_reading_kept_current(meter_rig) -> None:
    device, _, api, meter_id = meter_rig
    meter = api.get(f"/api/meters/{meter_id}")
    assert meter["meter_reading"] == "unset" and meter["meter_iot_topic"] == ""
    status, body = api.call(
        "PATCH",
        f"/api/meters/{meter_id}",
        {"meter_reading_unit": "kWh", "meter_reading_unit_factor": 1000, "meter_reading_unit_precision": 2},
    )
    assert status == 200 and body["meter_reading_unit_factor"] == 1000
    device.publish("event.notify.meterboard.esp", reading(123456, metered=0))
    meter = wait_for(lambda: (m := api.get(f"/api/meters/{meter_id}"))["meter_reading"] == "123.46 kWh" and m)
    assert meter["register_value"] == 123456 and meter["meter_value"] == 0
    # The input's own answer carries the same meter, minus the input's key and label it already has.
    as_input = api.get(f"/api/inputs/{meter_id}")
    assert as_input["meter"] == {k: v for k, v in meter.items() if k not in ("device_key", "device_label")}
    assert as_input["meter"]["meter_reading_unit_factor"] == 1000
    plain = next(d for d in api.get("/api/devices")["inputs"] if d["device_key"] != METER)
    assert api.get(f"/api/inputs/{plain['id']}")["meter"] is None
    device.publish("event.notify.meterboard.esp", reading(-1))  # unset register: shown as such, value kept
    meter = wait_for(lambda: (m := api.get(f"/api/meters/{meter_id}"))["meter_reading"] == "unset" and m)
    assert meter["register_value"] == 123456


def test_meter_settings_are_validated(meter_rig) -> None:
    _, _, api, meter_id = meter_rig
    for fields, field in [
        ({"meter_reading_unit_factor": 0}, "meter_reading_unit_factor"),
        ({"meter_reading_unit_precision": 10}, "meter_reading_unit_precision"),
        ({"meter_low_limit": "five"}, "meter_low_limit"),
        ({"meter_low_limit": 10, "meter_high_limit": 5}, "meter_low_limit"),
        ({"meter_iot_topic": "meter/#"}, "meter_iot_topic"),
        ({"colour": "red"}, "colour"),
    ]:
        status, body = api.call("PATCH", f"/api/meters/{meter_id}", fields)
        assert (status, body.get("field")) == (400, field), (fields, body)
    assert api.call("GET", "/api/meters/999999")[0] == 404


def test_limit_crossing_fires_once_per_crossing(meter_rig) -> None:
    device, consumer, api, meter_id = meter_rig
    api.patch("inputs", METER, device_enabled=True, activation_interval=0)
    api.link(METER, "Kitchen Buzzer")
    api.call(
        "PATCH",
        f"/api/meters/{meter_id}",
        {"meter_high_limit": 5, "meter_low_limit": 0, "meter_reading_unit_factor": 1000},
    )
    sequence = [1000, 6000, 7000, 8000, 4000, 9000, 500]  # in, cross, stay, stay, back, cross, in
    for i, register in enumerate(sequence, start=1):
        device.publish("event.notify.meterboard.esp", reading(register))
        wait_for(lambda n=i: readings_seen(n))
    received = consumer.wait(2)
    assert len(consumer.quiet(1.0)) == 2
    assert [m[2]["data"] for m in received] == [["Kitchen Buzzer", 0], ["Kitchen Buzzer", 0]]
    decisions = api.decisions(METER)
    assert [d["event_detail"] for d in decisions] == ["above 5", "above 5"]
    # zero is a real low limit: a reading below it crosses
    api.call("PATCH", f"/api/meters/{meter_id}", {"meter_low_limit": 1})
    device.publish("event.notify.meterboard.esp", reading(200))
    consumer.wait(3)
    assert wait_for(lambda: api.decisions(METER)[0]["event_detail"] == "below 1")
