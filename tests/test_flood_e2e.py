"""A flooding device on the real brokers: the caps hold, memory stays bounded, the house keeps working."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from app.core import health, limits
from app.engine.presence import presence
from app.store.models import InputConfig
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.mosquitto import Mosquitto
from tests.support import wait_for
from tests.test_hub_e2e import FRONT, IOBOARD_HEARTBEAT, notify

PER_DEVICE = 8
TOTAL = 40
PASSWORD = "flood test password"


def flood_reading(start: int, count: int) -> bytes:
    """One adc-app style reading from one board, carrying `count` input_N keys never seen before."""
    body: dict[str, Any] = {"uptime": 1.0, "device_id": "esp32_F100D", "input_location": "Flood"}
    for n in range(start, start + count):
        body[f"input_{n}"] = {"input_label": f"In {n}", "active": n % 2 == 0, "sample_value": 1}
    return json.dumps(body).encode()


def flood_heartbeat(start: int, count: int) -> dict[str, Any]:
    devices = [{"device_key": f"Flood {n}", "type": "Motion"} for n in range(start, start + count)]
    return {"device_info": {"inputs": devices}, "active_devices": devices[:5]}


@pytest.fixture
def flood_rig(make_settings, tmp_path) -> Iterator[tuple[Any, ...]]:
    with Mosquitto(tmp_path) as broker:
        settings = make_settings(
            MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}",
            MAX_INPUTS_PER_DEVICE=str(PER_DEVICE),
            MAX_INPUTS=str(TOTAL),
            APP_ADMIN_PASSWORD_HASH=generate_password_hash(PASSWORD),
        )
        hub = start_hub(settings)
        wait_for(lambda: health.components().get("mqtt", {}).get("state") == "connected", 20)
        device = Device(settings)
        consumer = ControlConsumer(settings)
        api = Api(hub)
        yield settings, hub, broker, device, consumer, api
        consumer.close()
        device.close()
        hub.stop()


def inputs_from(hub: Any, prefix: str) -> int:
    with hub.sessions() as session:
        stmt = select(func.count()).select_from(InputConfig).where(InputConfig.device_key.like(f"{prefix}%"))
        return int(session.scalar(stmt) or 0)


def test_a_flood_over_mqtt_and_rabbitmq_is_capped_while_the_house_keeps_firing(flood_rig) -> None:
    settings, hub, broker, device, consumer, api = flood_rig
    # The legitimate house: an ioboard whose front door is enabled, unlatched and linked to the buzzer.
    device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
    wait_for(lambda: any(d["device_key"] == "Hallway Buzzer" for d in api.get("/api/devices")["outputs"]))
    api.patch("inputs", FRONT, device_enabled=True, activation_interval=0)
    api.link(FRONT, "Hallway Buzzer")

    # The flood: one board sends 10,000 new input_N keys over MQTT, one ioboard 10,000 over RabbitMQ.
    flood_errors: list[BaseException] = []

    def flood() -> None:
        try:
            board = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            board.connect("127.0.0.1", broker.port)
            board.loop_start()
            flooder = Device(settings)
            for batch in range(50):
                board.publish("sensor/flood/esp32_F100D", flood_reading(batch * 200 + 1, 200), qos=1)
                flooder.publish("event.heartbeat.ioboard.flooder", flood_heartbeat(batch * 200, 200))
            board.publish("sensor/flood/esp32_F100D", flood_reading(1, 1), qos=1).wait_for_publish(10)
            flooder.close()
            board.loop_stop()
            board.disconnect()
        except BaseException as exc:  # reported by the test thread
            flood_errors.append(exc)

    flooding = threading.Thread(target=flood)
    flooding.start()
    fired = 0
    while flooding.is_alive() or fired < 10:
        device.publish("event.notify.ioboard.pi-hallway", notify())
        fired += 1
        consumer.wait(fired, timeout=10)  # every legitimate activation still triggers the buzzer
    flooding.join()
    assert not flood_errors, flood_errors
    assert all(body["data"][0] == "Hallway Buzzer" for _, _, body in consumer.received)

    wait_for(lambda: health.counters().get(limits.CAP_COUNTER + "MAX_INPUTS_PER_DEVICE", 0) >= 2 * 9000)
    # Each flooding device got exactly its share; nothing else was registered.
    assert inputs_from(hub, "Flood In ") == PER_DEVICE  # MQTT: '<input_location> <input_label>'
    assert inputs_from(hub, "Flood ") - PER_DEVICE == PER_DEVICE  # RabbitMQ
    # The refused active inputs were skipped by name, never looked up as unregistered ones.
    assert health.counters().get("processor.unregistered", 0) == 0
    # Memory stays bounded: presence tracks only registered keys, the MQTT source a capped list.
    assert len(presence.timings()) <= 4 + 2 * PER_DEVICE
    mqtt_source = next(t for t in __import__("pylib").threads.tracked() if t.name == "MqttSource")
    assert all(len(inputs) <= PER_DEVICE for _, inputs in mqtt_source._devices.values())

    # More flooding devices run into the total: it holds.
    for n in range(10):
        device.publish(f"event.heartbeat.ioboard.flood{n}", flood_heartbeat(100_000 + n * 100, 20))
    wait_for(lambda: health.counters().get(limits.CAP_COUNTER + "MAX_INPUTS", 0) > 0)
    wait_for(lambda: inputs_from(hub, "") == TOTAL)
    device.publish("event.notify.ioboard.pi-hallway", notify())
    consumer.wait(fired + 1)

    # The refusals are visible: in /metrics by cap, and as a banner on the dashboard naming device and cap.
    req = urllib.request.Request(f"{api.base}/metrics", headers={"Authorization": f"Bearer {api.token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        metrics = resp.read().decode()
    found = re.search(
        r'event_processor_registrations_refused_total\{cap="MAX_INPUTS_PER_DEVICE"\} (\S+)', metrics
    )
    assert found and float(found.group(1)) >= 18_000
    assert 'event_processor_dropped_total{reason="refused",stage="heartbeat_filter"}' in metrics
    web = requests.Session()
    login_page = web.get(f"{api.base}/login", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page)
    assert csrf
    answer = web.post(
        f"{api.base}/login",
        data={"username": "admin", "password": PASSWORD, "csrf_token": csrf.group(1)},
        timeout=10,
    )
    assert answer.status_code == 200 and "refusal-banner" in answer.text
    banners = re.findall(
        r'class="alert alert-warning refusal-banner"[^>]*data-device="([^"]+)" data-cap="([^"]+)"',
        answer.text,
    )
    assert ("sensor/flood/esp32_F100D", "MAX_INPUTS_PER_DEVICE") in banners
    assert ("ioboard.flooder", "MAX_INPUTS_PER_DEVICE") in banners
    assert any(cap == "MAX_INPUTS" for _, cap in banners)
