"""The baseline: a minimal pika (or paho+pika) relay in a child process, and its legs."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from bench.clients import connect, mqtt_publisher
from bench.config import CONTROL_KEY, CREATED_EXCHANGES, ENTRY, MQTT_HOST, MQTT_QOS, START_TIMEOUT, BenchError
from bench.devices import make_devices, make_sensor_inputs
from bench.legs import measure
from bench.processes import rss_mb, stop_process
from pylib import wire


class Relay:
    """The baseline: `bench.py --relay <exchange>` (or `--mqtt-relay <exchange> --mqtt-port P`) alone."""

    def __init__(self, mqtt_port: int | None = None) -> None:
        self.mqtt_port = mqtt_port
        kind = "relay" if mqtt_port is None else "mqtt_relay"
        self.exchange = f"bench_{kind}_{uuid.uuid4().hex[:10]}"
        CREATED_EXCHANGES.append(self.exchange)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start the relay; returns seconds until it has bound its queue (or subscribed) and said READY."""
        args = ["--relay", self.exchange]
        if self.mqtt_port is not None:
            args = ["--mqtt-relay", self.exchange, "--mqtt-port", str(self.mqtt_port)]
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(ENTRY), *args],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"READY":
            self.proc.kill()
            raise BenchError(f"the relay did not start (said {line!r})")
        return time.perf_counter() - start

    def stop(self) -> tuple[int | None, float] | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        return stop_process(self.proc)

    def recover(self) -> None:
        """After the broker closed connections the relay has died or lost its queue: start a new one."""
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def relay_main(exchange: str) -> int:
    """Consume event.# like the hub, publish [output_key, None] per active input on <exchange>_control."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    outputs = {d.input_key: d.output_key for d in make_devices()}
    control = f"{exchange}_control"
    conn = connect()
    channel = conn.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
    channel.exchange_declare(control, exchange_type="direct", durable=False, auto_delete=False)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, routing_key="event.#")

    def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
        if len((method.routing_key or "").split(".")) < 3:
            return
        try:
            data = msgpack.unpackb(body).get("data") or {}
            active = data.get("active_devices") or ()
        except Exception:
            return
        for device in active:
            key = outputs.get(device.get("device_key")) if isinstance(device, dict) else None
            if key is not None:
                ch.basic_publish(control, CONTROL_KEY, wire.make_payload([key, None]))

    channel.basic_consume(queue, on_message, auto_ack=True)
    print("READY", flush=True)
    while not stopping.is_set():
        conn.process_data_events(time_limit=0.1)
    conn.close()
    return 0


def mqtt_relay_main(exchange: str, port: int) -> int:
    """Subscribe sensor/# at QoS 1 like the hub; per active input_N publish [output_key, None] with pika.

    One thread: paho's loop() (as the hub's MqttSource drives it) and pika's I/O between its calls.
    """
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    outputs = {s.device_key: s.output_key for s in make_sensor_inputs()}
    control = f"{exchange}_control"
    conn = connect()
    channel = conn.channel()
    channel.exchange_declare(control, exchange_type="direct", durable=False, auto_delete=False)
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            location = body["input_location"]
            items = [v for k, v in body.items() if k.startswith("input_") and isinstance(v, dict)]
        except (ValueError, TypeError, KeyError, AttributeError):
            return
        for item in items:
            if item.get("active") is True:
                key = outputs.get(f"{location} {item.get('input_label')}")
                if key is not None:
                    channel.basic_publish(control, CONTROL_KEY, wire.make_payload([key, None]))

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-relay-{uuid.uuid4().hex[:8]}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("sensor/#", qos=MQTT_QOS)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    client.connect(MQTT_HOST, port, keepalive=60)
    deadline = time.monotonic() + START_TIMEOUT
    while not subscribed.is_set() and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    if not subscribed.is_set():
        return 1
    print("READY", flush=True)
    while not stopping.is_set():
        if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
            return 1  # mosquitto went away; the bench notices the silence
        conn.process_data_events(time_limit=0)
    client.disconnect()
    conn.close()
    return 0


def run_baseline(n: int, mqtt_port: int | None = None) -> dict[str, Any]:
    """The RabbitMQ relay, or with mqtt_port the MQTT relay fed by the MQTT publisher."""
    relay = Relay(mqtt_port)
    new_publisher = None if mqtt_port is None else mqtt_publisher(mqtt_port)
    result: dict[str, Any] = {"exchange": relay.exchange}
    try:
        result["startup_s"] = round(relay.start(), 3)
        result.update(measure(relay.exchange, lambda: relay.pid, n, relay.recover, None, new_publisher))
        result["rss_mb"] = rss_mb(relay.pid)
        result["peak_rss_mb"] = rss_mb(relay.pid, "VmHWM")
    finally:
        stopped = relay.stop()
        if stopped is not None:
            result["stop"] = {"exit_code": stopped[0], "seconds": round(stopped[1], 3)}
    return result
