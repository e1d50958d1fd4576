"""MQTT devices end to end on a private Mosquitto: sensor boards, meters, resets, InfluxDB, restarts."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from app.core import health
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.mosquitto import Mosquitto
from tests.support import free_port, wait_for
from tests.victoria import VictoriaMetrics

SENSOR_TOPIC = "sensor/garage/esp32_7D8E9F"
METER_TOPIC = "meter/electricity"


def sensor_payload(active: bool, uptime: float = 3600.5) -> bytes:
    """Exactly the adc-app JSON of wire-format.md §5.3."""
    return json.dumps(
        {
            "uptime": uptime,
            "timestamp": uptime,
            "device_id": "esp32_7D8E9F",
            "input_location": "Garage",
            "input_1": {"input_label": "Back Door", "active": False, "sample_value": 0, "normal_value": 0},
            "input_2": {
                "input_label": "Motion Detector",
                "active": active,
                "sample_value": 4095 if active else 0,
                "normal_value": 0,
            },
            "input_3": {"input_label": "Side Window", "active": False, "sample_value": 0, "normal_value": 0},
            "input_4": {"input_label": "Smoke Alarm", "active": False, "sample_value": 0, "normal_value": 0},
        }
    ).encode()


def meter_payload(register: int, metered: int = 12) -> bytes:
    """Exactly the meter-app JSON of wire-format.md §5.1."""
    return json.dumps(
        {
            "uptime": 86400.12,
            "timestamp": 86400.12,
            "device_id": "esp32_5A1B2C",
            "input_location": "Kitchen",
            "last_sample_value": 0,
            "last_minute_metered": metered,
            "last_metered_minute": 86400.12,
            "register_reading": register,
            "pulse_discards": 0,
        }
    ).encode()


class Board:
    """A paho client standing in for the ESP32 devices (and listening for what the hub sends them)."""

    def __init__(self, port: int, listen: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if listen:
            self.client.subscribe(listen, qos=1)
            assert self._subscribed.wait(5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path) as server:
        yield server


@pytest.fixture
def mqtt_hub(make_settings, broker):
    settings = make_settings(MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}")
    hub = start_hub(settings)
    wait_for(lambda: health.components().get("mqtt", {}).get("state") == "connected", 20)
    board = Board(broker.port, listen="meter/electricity/control/#")
    consumer = ControlConsumer(settings)
    yield settings, Api(hub), board, consumer
    board.close()
    consumer.close()
    hub.stop()


def input_row(api: Api, key: str) -> dict | None:
    return next((d for d in api.get("/api/devices")["inputs"] if d["device_key"] == key), None)


def test_sensor_activation_triggers_a_switch_once_per_latch(mqtt_hub) -> None:
    settings, api, board, consumer = mqtt_hub
    board.publish(SENSOR_TOPIC, sensor_payload(active=False))
    row = wait_for(lambda: input_row(api, "Garage Motion Detector"))
    assert row["device_enabled"] is False and row["online"] is True
    assert {"Garage Back Door", "Garage Side Window", "Garage Smoke Alarm"} <= {
        d["device_key"] for d in api.get("/api/devices")["inputs"]
    }
    # a switch output from an ioboard heartbeat to link to
    device = Device(settings)
    device.publish(
        "event.heartbeat.ioboard.pi",
        {
            "device_info": {
                "outputs": [{"type": "Buzzer", "location": "Garage", "device_key": "Garage Buzzer"}]
            }
        },
    )
    wait_for(lambda: any(d["device_key"] == "Garage Buzzer" for d in api.get("/api/devices")["outputs"]))
    device.close()
    api.patch("inputs", "Garage Motion Detector", device_enabled=True)
    api.link("Garage Motion Detector", "Garage Buzzer")
    for second in range(5):  # the board re-sends an active input every second
        board.publish(SENSOR_TOPIC, sensor_payload(active=True, uptime=3601.5 + second))
    assert consumer.wait(1)[0][2]["data"] == ["Garage Buzzer", None]
    assert len(consumer.quiet(1.0)) == 1
    decisions = wait_for(lambda: (e := api.decisions("Garage Motion Detector")) and len(e) == 5 and e)
    assert [d["reason"] for d in decisions].count("latched") == 4


def test_heartbeat_ok_refreshes_last_seen(mqtt_hub) -> None:
    _, api, board, _ = mqtt_hub
    board.publish(SENSOR_TOPIC, sensor_payload(active=False))
    first = wait_for(lambda: input_row(api, "Garage Back Door"))["last_seen"]
    wait_for(lambda: True, timeout=0.01)

    time.sleep(1.1)
    board.publish("sensor/heartbeat/esp32_7D8E9F", b"OK")
    wait_for(lambda: input_row(api, "Garage Back Door")["last_seen"] > first)


def test_meter_reading_limit_and_reset_over_mqtt(mqtt_hub) -> None:
    settings, api, board, _ = mqtt_hub
    board.publish(METER_TOPIC, meter_payload(123456))
    row = wait_for(lambda: input_row(api, "Electricity Meter"))
    meter = wait_for(lambda: (m := api.get(f"/api/meters/{row['id']}"))["register_value"] == 123456 and m)
    assert meter["meter_reading"] == "123456" and meter["meter_value"] == 12
    # reset with defaults, then set and adjust explicitly; default topic, then the meter's own
    api.call("PATCH", f"/api/meters/{row['id']}", {"meter_reset_value": 5000})
    status, body = api.call("POST", f"/api/meters/{row['id']}/reset", {})
    assert status == 200 and body["register_value"] == 5000
    wait_for(lambda: board.received)
    assert board.received[-1] == (settings.mqtt_meter_reset_topic, b'{"set_register": 5000}')
    api.call(
        "PATCH", f"/api/meters/{row['id']}", {"meter_iot_topic": "meter/electricity/control/esp32_5A1B2C"}
    )
    status, body = api.call("POST", f"/api/meters/{row['id']}/reset", {"value": 250, "mode": "adjust"})
    assert status == 200 and body["register_value"] == 5250 and body["reset"]["mode"] == "adjust"
    wait_for(lambda: len(board.received) == 2)
    assert board.received[-1] == ("meter/electricity/control/esp32_5A1B2C", b'{"adjust_register": 250}')
    assert api.call("POST", f"/api/meters/{row['id']}/reset", {"mode": "double"})[0] == 400
    assert api.call("POST", "/api/meters/999999/reset", {})[0] == 404
    # the hub hears its own reset echo on meter/electricity/control and ignores it
    assert health.counters().get("mqtt.malformed", 0) == 0


def test_malformed_mqtt_payloads_are_counted(mqtt_hub) -> None:
    _, api, board, _ = mqtt_hub
    for payload in [
        b"not json",
        b"[1,2]",
        b'{"device_id": "x"}',
        b'{"device_id": "x", "input_location": "G", "input_1": "oops"}',
        b"\x00" * (1024 * 1024),
    ]:
        board.publish("sensor/garage/x", payload)
    wait_for(lambda: health.counters().get("mqtt.malformed", 0) >= 4, 15)
    board.publish(SENSOR_TOPIC, sensor_payload(active=False))
    wait_for(lambda: input_row(api, "Garage Back Door"))


def test_hub_reconnects_after_mosquitto_restart(make_settings, broker) -> None:
    settings = make_settings(MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}")
    hub = start_hub(settings)
    try:
        api = Api(hub)
        wait_for(lambda: health.components().get("mqtt", {}).get("state") == "connected", 20)
        broker.stop()
        wait_for(lambda: health.components()["mqtt"]["state"] != "connected", 20)
        broker.start()
        wait_for(lambda: health.components()["mqtt"]["state"] == "connected", 30)
        board = Board(broker.port)
        board.publish(METER_TOPIC, meter_payload(42))
        wait_for(lambda: input_row(api, "Electricity Meter"), 15)
        board.close()
    finally:
        hub.stop()


def test_meter_readings_reach_influxdb(make_settings, broker, tmp_path) -> None:
    victoria = VictoriaMetrics(free_port(), tmp_path / "vm")
    victoria.start()
    try:
        settings = make_settings(
            MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}",
            INFLUXDB_URL=victoria.url,
            INFLUXDB_TOKEN="t0ken",
            INFLUXDB_ORG="home",
            INFLUXDB_BUCKET="meter",
        )
        hub = start_hub(settings)
        try:
            wait_for(lambda: health.components().get("mqtt", {}).get("state") == "connected", 20)
            board = Board(broker.port)
            board.publish(METER_TOPIC, meter_payload(2000, metered=7))
            labels = {"device_key": "Electricity Meter", "location": "Kitchen"}
            assert [v for _, v in wait_for(lambda: victoria.samples("meter_register", **labels), 30)] == [
                2000.0
            ]
            assert [v for _, v in victoria.samples("meter_metered", **labels)] == [7.0]
            board.close()
        finally:
            hub.stop()
    finally:
        victoria.stop()
