"""MqttSource against a private Mosquitto per test: the devices' JSON in, Envelopes out, faults survived."""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import zmq
from paho.mqtt.enums import CallbackAPIVersion

from app.core import channels, health
from app.core.settings import Settings
from app.sources.mqtt_source import MqttSource, is_number, outgoing, parse_json, sensor_devices
from pylib import inproc, threads
from tests.mosquitto import Mosquitto
from tests.support import wait_for

# wire-format.md §5.1, exactly as meter-app publishes it on meter/electricity.
METER_TOPIC = "meter/electricity"
METER_READING = b"""{"uptime": 86400.12, "timestamp": 86400.12, "device_id": "esp32_5A1B2C",
 "input_location": "Kitchen", "last_sample_value": 0,
 "last_minute_metered": 12, "last_metered_minute": 86400.12,
 "register_reading": 123456, "pulse_discards": 0}"""

# wire-format.md §5.3, exactly as adc-app publishes it on sensor/garage/<device_id>. The spec elides
# input_3 and input_4 as {...}; they are filled in here with the same shape.
SENSOR_TOPIC = "sensor/garage/esp32_7D8E9F"
SENSOR_READING = b"""{"uptime": 3600.5, "timestamp": 3600.5, "device_id": "esp32_7D8E9F", "input_location": "Garage",
 "input_1": {"input_label": "Back Door", "active": false, "sample_value": 0, "normal_value": 0},
 "input_2": {"input_label": "Motion Detector", "active": true, "sample_value": 4095, "normal_value": 0},
 "input_3": {"input_label": "Side Window", "active": false, "sample_value": 12, "normal_value": 0},
 "input_4": {"input_label": "Smoke Alarm", "active": false, "sample_value": 0, "normal_value": 0}}"""  # noqa: E501


def sensor_description(label: str) -> dict[str, Any]:
    key = f"Garage {label}"
    return {
        "device_key": key,
        "device_label": key,
        "type": label,
        "location": "Garage",
        "device_id": "esp32_7D8E9F",
    }


SENSOR_INPUTS = [
    sensor_description(label) for label in ("Back Door", "Motion Detector", "Side Window", "Smoke Alarm")
]
SENSOR_ACTIVE = [{**sensor_description("Motion Detector"), "sample_value": 4095}]
METER_DESCRIPTION = {
    "device_key": "Electricity Meter",
    "device_label": "Electricity Meter",
    "type": "meter",
    "location": "Kitchen",
    "device_id": "esp32_5A1B2C",
}


def with_changes(raw: bytes, **changes: Any) -> bytes:
    body = json.loads(raw)
    body.update(changes)
    return json.dumps(body).encode()


def without(raw: bytes, key: str) -> bytes:
    body = json.loads(raw)
    del body[key]
    return json.dumps(body).encode()


def sensor_input_changed(index: int, value: Any = None, **fields: Any) -> bytes:
    body = json.loads(SENSOR_READING)
    body[f"input_{index}"] = value if value is not None else {**body[f"input_{index}"], **fields}
    return json.dumps(body).encode()


# --- helpers ------------------------------------------------------------------------------------


def counter(name: str) -> int:
    return health.counters().get(f"mqtt.{name}", 0)


def state() -> str | None:
    return health.components().get("mqtt", {}).get("state")


def next_envelope(inbox: inproc.Inbox, timeout_ms: int = 10000) -> channels.Envelope:
    env = inbox.recv(timeout_ms=timeout_ms)
    assert env is not None, "no Envelope arrived"
    assert isinstance(env, channels.Envelope)
    return env


class Device:
    """A device-side paho client publishing at QoS 1, as the ESP32 firmwares do."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-device-{os.urandom(4).hex()}")
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]  # close() quickly
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"the broker did not acknowledge {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber:
    """A client that (re)subscribes on every connect and collects what arrives."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.subscribed = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.urandom(4).hex()}")
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(lambda: self.subscribed, what="the test subscriber's SUBACK")

    def get(self, timeout: float = 10.0) -> paho.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail("no message reached the subscriber")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as mosquitto:
        yield mosquitto


@pytest.fixture
def pull() -> Iterator[inproc.Inbox]:
    """The HeartbeatFilter end, bound before the source starts (the PULL side binds); read a
    message at a time, as the source hands on what one wake-up read in one frame."""
    inbox = inproc.Inbox(inproc.bind_pull(channels.HEARTBEAT_FILTER))
    yield inbox
    inbox.close(linger=0)


@pytest.fixture
def push() -> Iterator[Callable[[channels.MqttPublish], None]]:
    """The EventProcessor end of MQTT_PUBLISH."""
    sock: zmq.Socket | None = None

    def send(msg: channels.MqttPublish) -> None:
        nonlocal sock
        sock = sock or inproc.connect_push(channels.MQTT_PUBLISH)
        inproc.send(sock, msg)

    yield send
    if sock is not None:
        sock.close(linger=0)


@pytest.fixture
def clients() -> Iterator[list[Device | Subscriber]]:
    made: list[Device | Subscriber] = []
    yield made
    for client in made:
        client.close()


@pytest.fixture
def device(broker: Mosquitto, clients: list[Device | Subscriber]) -> Callable[[], Device]:
    def make() -> Device:
        made = Device(broker.port)
        clients.append(made)
        return made

    return make


@pytest.fixture
def subscriber(broker: Mosquitto, clients: list[Device | Subscriber]) -> Callable[[str], Subscriber]:
    def make(topic: str) -> Subscriber:
        made = Subscriber(broker.port, topic)
        clients.append(made)
        return made

    return make


@pytest.fixture
def start_source(
    broker: Mosquitto, make_settings: Callable[..., Settings], pull: inproc.Inbox
) -> Iterator[Callable[..., MqttSource]]:
    """Start an MqttSource on the private broker with a short backoff; wait=True waits until subscribed."""
    started: list[MqttSource] = []

    def start(wait: bool = True, **env: str) -> MqttSource:
        settings = make_settings(MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}", **env)
        source = MqttSource(settings, backoff=threads.Backoff(initial=0.05, maximum=0.3))
        source.start()
        started.append(source)
        if wait:
            wait_for(source.connected.is_set, what="MqttSource to connect and subscribe")
        return source

    yield start
    # stop the source before the broker fixture stops the broker
    threads.shutting_down.set()
    for source in started:
        source.join(timeout=5)


# --- readings -----------------------------------------------------------------------------------


def test_sensor_board_reading_lists_every_input_and_the_active_one(
    start_source: Callable[..., MqttSource], device: Callable[[], Device], pull: inproc.Inbox
) -> None:
    start_source()
    assert state() == "connected"
    device().publish(SENSOR_TOPIC, SENSOR_READING)

    env = next_envelope(pull)
    assert env.origin == "sensor/garage"
    assert env.source == "mqtt"
    assert env.routing_key == SENSOR_TOPIC
    assert abs(env.received_at - time.time()) < 600  # stamped on arrival, not the device's uptime
    assert env.payload == {
        "timestamp": None,
        "data": {"device_info": {"inputs": SENSOR_INPUTS}, "active_devices": SENSOR_ACTIVE},
    }
    assert counter("received") == 1
    assert counter("malformed") == 0


def test_meter_reading_becomes_electricity_meter_with_sample_values(
    start_source: Callable[..., MqttSource], device: Callable[[], Device], pull: inproc.Inbox
) -> None:
    start_source()
    device().publish(METER_TOPIC, METER_READING)

    env = next_envelope(pull)
    assert env.origin == "meter/electricity"
    assert env.routing_key == METER_TOPIC
    assert env.payload == {
        "timestamp": None,
        "data": {
            "device_info": {"inputs": [METER_DESCRIPTION]},
            "active_devices": [{**METER_DESCRIPTION, "sample_values": {"meter": 12, "register": 123456}}],
        },
    }


def test_heartbeat_after_a_reading_refreshes_that_devices_inputs(
    start_source: Callable[..., MqttSource], device: Callable[[], Device], pull: inproc.Inbox
) -> None:
    start_source()
    dev = device()
    dev.publish(SENSOR_TOPIC, SENSOR_READING)
    dev.publish(METER_TOPIC, METER_READING)
    assert next_envelope(pull).origin == "sensor/garage"
    assert next_envelope(pull).origin == "meter/electricity"

    dev.publish("sensor/heartbeat/esp32_7D8E9F", b"OK")
    env = next_envelope(pull)
    assert (env.origin, env.source, env.routing_key) == (
        "sensor/garage",
        "mqtt",
        "sensor/heartbeat/esp32_7D8E9F",
    )
    assert env.payload == {"timestamp": None, "data": {"device_info": {"inputs": SENSOR_INPUTS}}}

    dev.publish("meter/heartbeat/esp32_5A1B2C", b"OK")
    env = next_envelope(pull)
    assert (env.origin, env.routing_key) == ("meter/electricity", "meter/heartbeat/esp32_5A1B2C")
    assert env.payload == {"timestamp": None, "data": {"device_info": {"inputs": [METER_DESCRIPTION]}}}
    assert counter("heartbeats") == 2
    assert counter("received") == 2


def test_heartbeat_before_any_reading_is_only_counted(
    start_source: Callable[..., MqttSource], device: Callable[[], Device], pull: inproc.Inbox
) -> None:
    start_source()
    dev = device()
    dev.publish("sensor/heartbeat/esp32_7D8E9F", b"OK")
    dev.publish(METER_TOPIC, METER_READING)

    # the reading is the first Envelope: the heartbeat before it made none
    assert next_envelope(pull).routing_key == METER_TOPIC
    assert counter("heartbeats") == 1
    assert counter("malformed") == 0


def test_the_hubs_own_meter_reset_echo_is_ignored(
    start_source: Callable[..., MqttSource],
    device: Callable[[], Device],
    push: Callable[[channels.MqttPublish], None],
    pull: inproc.Inbox,
) -> None:
    start_source()
    # published by the source itself and echoed back through its meter/electricity/# subscription
    push(channels.MqttPublish("meter/electricity/control", b'{"set_register": 5000}'))
    wait_for(lambda: counter("ignored") == 1, what="the echoed reset to be ignored")
    wait_for(lambda: counter("published") == 1, what="the PUBACK for the reset")

    device().publish(METER_TOPIC, METER_READING)
    assert next_envelope(pull).routing_key == METER_TOPIC
    assert counter("malformed") == 0


def test_topics_other_than_sensor_and_meter_are_ignored(
    start_source: Callable[..., MqttSource], device: Callable[[], Device], pull: inproc.Inbox
) -> None:
    start_source(MQTT_PUB_TOPIC_CSV="meter/electricity/#,sensor/#,inverter/#")
    dev = device()
    dev.publish("inverter/state", with_changes(METER_READING))
    dev.publish(SENSOR_TOPIC, SENSOR_READING)

    assert next_envelope(pull).routing_key == SENSOR_TOPIC
    assert counter("ignored") == 1


# --- malformed input ----------------------------------------------------------------------------

# (topic, payload, counters expected, labels of the inputs still forwarded from the bad message)
MALFORMED: dict[str, tuple[str, bytes, dict[str, int], list[str] | None]] = {
    "not json": (SENSOR_TOPIC, b"this is not JSON {", {"malformed": 1}, None),
    "json array": (SENSOR_TOPIC, b'[{"device_id": "esp32_7D8E9F"}]', {"malformed": 1}, None),
    "no device_id": (SENSOR_TOPIC, without(SENSOR_READING, "device_id"), {"ignored": 1}, None),
    "no input_location": (SENSOR_TOPIC, without(SENSOR_READING, "input_location"), {"malformed": 1}, None),
    "device_id a number": (METER_TOPIC, with_changes(METER_READING, device_id=42), {"malformed": 1}, None),
    "input_1 a string": (
        SENSOR_TOPIC,
        sensor_input_changed(1, "Back Door"),
        {"malformed": 1, "received": 1},
        ["Motion Detector", "Side Window", "Smoke Alarm"],
    ),
    "active a string": (
        SENSOR_TOPIC,
        sensor_input_changed(2, active="true"),
        {"malformed": 1, "received": 1},
        ["Back Door", "Side Window", "Smoke Alarm"],
    ),
    "register_reading a string": (
        METER_TOPIC,
        with_changes(METER_READING, register_reading="123456"),
        {"malformed": 1},
        None,
    ),
    "metered NaN": (
        METER_TOPIC,
        METER_READING.replace(b'metered": 12', b'metered": NaN'),
        {"malformed": 1},
        None,
    ),
    "1 MiB of random bytes": (SENSOR_TOPIC, os.urandom(1024 * 1024), {"malformed": 1}, None),
    "deeply nested": (SENSOR_TOPIC, b"[" * 60000, {"malformed": 1}, None),
    "heartbeat not OK": ("sensor/heartbeat/esp32_7D8E9F", b'{"status": "OK"}', {"malformed": 1}, None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_messages_are_counted_and_the_next_good_one_still_arrives(
    case: str,
    start_source: Callable[..., MqttSource],
    device: Callable[[], Device],
    pull: inproc.Inbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, payload, expected, kept = MALFORMED[case]
    source = start_source()
    dev = device()
    with caplog.at_level(logging.DEBUG, logger="app.sources.mqtt_source"):
        dev.publish(topic, payload)
        dev.publish(METER_TOPIC, METER_READING)

        if kept is not None:  # one bad input: the others of the same message are still reported
            env = next_envelope(pull)
            assert env.routing_key == topic
            labels = [d["type"] for d in env.payload["data"]["device_info"]["inputs"]]
            assert labels == kept
        # the good reading published after the bad one is the next Envelope: the bad one made none
        env = next_envelope(pull)
        assert env.routing_key == METER_TOPIC

    assert source.is_alive() and source.connected.is_set()
    counts = {name: counter(name) for name in ("malformed", "ignored", "received", "errors")}
    assert counts == {
        "malformed": 0,
        "ignored": 0,
        "errors": 0,
        **expected,
        "received": expected.get("received", 0) + 1,
    }
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "app.sources.mqtt_source"
    ]
    if expected.get("malformed"):
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert topic in message
        assert len(message) < 1000  # a preview, never the whole payload
    else:
        assert warnings == []  # ignored quietly


# --- outbound -----------------------------------------------------------------------------------


def test_publish_requests_reach_a_subscriber_with_the_exact_bytes(
    start_source: Callable[..., MqttSource],
    subscriber: Callable[[str], Subscriber],
    push: Callable[[channels.MqttPublish], None],
) -> None:
    start_source()
    sub = subscriber("hub/out/#")
    payloads = [b'{"set_register": 5000}', bytes(range(256))]
    push(channels.MqttPublish("hub/out/reset", payloads[0], qos=1))
    push(channels.MqttPublish("hub/out/binary", payloads[1], qos=0))

    received = [sub.get(), sub.get()]
    assert sorted((m.topic, m.payload, m.retain) for m in received) == [
        ("hub/out/binary", payloads[1], False),
        ("hub/out/reset", payloads[0], False),
    ]
    wait_for(lambda: counter("published") == 2, what="both publishes to be counted")


def test_publish_while_the_broker_is_down_waits_in_a_bounded_outbox(
    broker: Mosquitto,
    start_source: Callable[..., MqttSource],
    subscriber: Callable[[str], Subscriber],
    push: Callable[[channels.MqttPublish], None],
) -> None:
    source = start_source(MQTT_OUTBOX_SIZE="3")
    broker.stop()
    wait_for(lambda: not source.connected.is_set(), what="the source to notice the broker is gone")
    for n in range(1, 6):
        # retained, so the subscriber sees them whenever it subscribes after the restart
        push(channels.MqttPublish(f"hub/out/{n}", f"reset {n}".encode(), qos=1, retain=True))
    wait_for(lambda: counter("outbox_dropped") == 2, what="the two oldest to be dropped")
    assert source.outbox_pending == 3
    assert counter("published") == 0

    broker.start()
    wait_for(lambda: counter("published") == 3, what="the outbox to be published after the restart")
    sub = subscriber("hub/out/#")
    received = sorted((m.topic, m.payload) for m in (sub.get(), sub.get(), sub.get()))
    assert received == [(f"hub/out/{n}", f"reset {n}".encode()) for n in (3, 4, 5)]
    assert sub.messages.empty()  # retained messages come all at once: the dropped two never arrived
    assert source.outbox_pending == 0


def test_a_publish_the_broker_never_acknowledged_is_sent_again_after_reconnect(
    broker: Mosquitto,
    start_source: Callable[..., MqttSource],
    subscriber: Callable[[str], Subscriber],
    push: Callable[[channels.MqttPublish], None],
) -> None:
    source = start_source()
    broker.pause()  # the connection stays up, but no PUBACK will come
    push(channels.MqttPublish("hub/out/reset", b'{"set_register": 1}', qos=1, retain=True))
    wait_for(lambda: source.unacknowledged == 1, what="the publish to be handed to the client")
    broker.kill()
    broker.start()

    sub = subscriber("hub/out/#")
    message = sub.get()
    assert (message.topic, message.payload) == ("hub/out/reset", b'{"set_register": 1}')
    wait_for(lambda: counter("published") == 1, what="the PUBACK after the reconnect")
    assert source.unacknowledged == 0


# --- connection faults --------------------------------------------------------------------------


def test_a_broker_down_at_start_up_is_retried_until_it_comes(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    pull: inproc.Inbox,
    clients: list[Device | Subscriber],
) -> None:
    broker = Mosquitto(tmp_path)  # port chosen, broker not started
    settings = make_settings(MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}")
    source = MqttSource(settings, backoff=threads.Backoff(initial=0.05, maximum=0.3))
    source.start()
    try:
        wait_for(lambda: source.connect_attempts >= 3, what="several connection attempts")
        wait_for(lambda: state() == "down", what="the health state to show the broker down")
        assert source.is_alive()
        assert not source.connected.is_set()

        broker.start()
        wait_for(source.connected.is_set, what="the source to connect once the broker is up")
        dev = Device(broker.port)
        clients.append(dev)
        dev.publish(SENSOR_TOPIC, SENSOR_READING)
        assert next_envelope(pull).origin == "sensor/garage"
    finally:
        threads.shutting_down.set()
        source.join(timeout=5)
        broker.stop()


def test_a_broker_restart_reconnects_resubscribes_and_handles_the_next_reading(
    broker: Mosquitto,
    start_source: Callable[..., MqttSource],
    device: Callable[[], Device],
    pull: inproc.Inbox,
) -> None:
    source = start_source()
    device().publish(METER_TOPIC, METER_READING)
    assert next_envelope(pull).routing_key == METER_TOPIC

    broker.stop()
    wait_for(lambda: not source.connected.is_set(), what="the source to notice the broker is gone")
    assert state() in ("connecting", "down")
    broker.start()  # same port, a fresh broker with no memory of our (clean) session
    wait_for(lambda: source.connect_count == 2 and source.connected.is_set(), what="the reconnect")
    assert state() == "connected"

    device().publish(SENSOR_TOPIC, SENSOR_READING)
    env = next_envelope(pull)
    assert env.routing_key == SENSOR_TOPIC
    assert env.payload["data"]["active_devices"] == SENSOR_ACTIVE


def test_shutdown_disconnects_cleanly(broker: Mosquitto, start_source: Callable[..., MqttSource]) -> None:
    source = start_source()
    threads.shutting_down.set()
    source.join(timeout=5)
    assert not source.is_alive()
    assert health.components()["mqtt"]["state"] == "down"
    broker.stop()
    # mosquitto logs "disconnected." only for a DISCONNECT packet ("closed its connection" otherwise)
    assert f"Client {source.client_id} disconnected." in broker.log.read_text()


def test_wrong_credentials_are_retried_and_the_password_is_never_logged(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    pull: inproc.Inbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password_file = tmp_path / "passwords"
    password_file.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(password_file), "hub", "right-Pa55word"], check=True)
    broker = Mosquitto(tmp_path, anonymous=False, extra_config=f"password_file {password_file}\n").start()
    settings = make_settings(
        MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}", MQTT_USERNAME="hub", MQTT_PASSWORD="wrong-Pa55word"
    )
    source = MqttSource(settings, backoff=threads.Backoff(initial=0.05, maximum=0.3))
    try:
        with caplog.at_level(logging.DEBUG):
            source.start()
            wait_for(lambda: source.connect_attempts >= 3, what="several refused attempts")
            wait_for(
                lambda: (
                    state() == "down" and "authori" in (health.components()["mqtt"]["detail"] or "").lower()
                ),
                what="the refusal to show in the health state",
            )
            assert source.is_alive() and not source.connected.is_set()
            threads.shutting_down.set()
            source.join(timeout=5)
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "hub@127.0.0.1" in logged
        assert "wrong-Pa55word" not in logged
        assert "wrong-Pa55word" not in repr(settings) + repr(source._connection.spec)
    finally:
        broker.stop()


def test_right_credentials_connect(
    tmp_path: Path, make_settings: Callable[..., Settings], pull: inproc.Inbox
) -> None:
    password_file = tmp_path / "passwords"
    password_file.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(password_file), "hub", "right-Pa55word"], check=True)
    broker = Mosquitto(tmp_path, anonymous=False, extra_config=f"password_file {password_file}\n").start()
    settings = make_settings(
        MQTT_SERVER_ADDRESS=f"127.0.0.1:{broker.port}", MQTT_USERNAME="hub", MQTT_PASSWORD="right-Pa55word"
    )
    source = MqttSource(settings, backoff=threads.Backoff(initial=0.05, maximum=0.3))
    try:
        source.start()
        wait_for(source.connected.is_set, what="an authenticated connection")
    finally:
        threads.shutting_down.set()
        source.join(timeout=5)
        broker.stop()


# --- pure helpers (no broker) -------------------------------------------------------------------


def test_inputs_are_taken_in_numeric_order_and_non_inputs_left_alone() -> None:
    item = {"input_label": "X", "active": False, "sample_value": 0, "normal_value": 0}
    body = {
        "input_10": {**item, "input_label": "Ten"},
        "input_2": {**item, "input_label": "Two"},
        "inputs": 1,
    }
    inputs, active, problems = sensor_devices("id", "Loft", body)
    assert [d["device_key"] for d in inputs] == ["Loft Two", "Loft Ten"]
    assert active == [] and problems == []


def test_numbers_must_be_finite_and_not_bools() -> None:
    assert is_number(0) and is_number(-1.5) and is_number(2**63)
    assert not any(is_number(v) for v in (True, None, "1", math.inf, math.nan, 2**64, [1]))
    with pytest.raises(ValueError):
        parse_json(b'{"a": Infinity}')


def test_publish_requests_are_checked() -> None:
    assert outgoing(channels.MqttPublish("a/b", "text")).payload == b"text"  # type: ignore[arg-type]
    for bad in (
        channels.MqttPublish("", b"x"),
        channels.MqttPublish("a/b", b"x", qos=3),
        channels.MqttPublish("a/b", 5),  # type: ignore[arg-type]
        channels.Envelope("o", 0.0, {}),
    ):
        with pytest.raises(ValueError):
            outgoing(bad)
