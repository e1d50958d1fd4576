"""The bench's broker clients: the RabbitMQ and MQTT publishers, and the control-message consumer."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pika

from bench.config import (
    ACK_TIMEOUT,
    BROKER_HOST,
    BROKER_PORT,
    CONTROL_KEY,
    HEARTBEAT_KEY,
    IDLE_TIMEOUT,
    LEG_TIMEOUT,
    MQTT_HOST,
    MQTT_PUBLISH_WINDOW,
    MQTT_QOS,
    NOTIFY_KEY,
    QUIET_SECONDS,
    BenchError,
    Disrupted,
)
from bench.devices import (
    Device,
    SensorInput,
    activation_data,
    heartbeat_data,
    make_sensor_inputs,
    sensor_reading,
)
from pylib import wire


def connect() -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(BROKER_HOST, BROKER_PORT, blocked_connection_timeout=5)
    )


class Pacing:
    """What a leg needs from a publisher: activation i (cycling over the inputs), as fast or as paced."""

    def activate(self, i: int) -> str:
        """Publish activation number i; returns the output key it should trigger."""
        raise NotImplementedError

    def output_for(self, i: int) -> str:
        """The output key activation number i should trigger (without publishing it)."""
        raise NotImplementedError

    def notes(self) -> dict[str, Any]:
        """Extra figures from the last burst, for the throughput result."""
        return {}

    def close(self) -> None:
        raise NotImplementedError

    def burst(self, n: int) -> tuple[float, float]:
        """Publish n activations as fast as possible; returns (first publish, end of last publish)."""
        first = time.perf_counter()
        for i in range(n):
            self.activate(i)
        return first, time.perf_counter()

    def paced(self, rate: float, count: int) -> tuple[list[tuple[float, str]], float]:
        """Publish count activations at a fixed rate by the clock; returns (send time, key) and max lag."""
        sent: list[tuple[float, str]] = []
        t0 = time.perf_counter() + 0.05
        max_lag = 0.0
        for i in range(count):
            due = t0 + i / rate
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            else:
                max_lag = max(max_lag, now - due)
            published = time.perf_counter()
            sent.append((published, self.activate(i)))
        return sent, max_lag


class Publisher(Pacing):
    """One pika publisher playing the remote-monitor: plain basic_publish, no properties, no confirms."""

    def __init__(self, exchange: str, devices: list[Device]) -> None:
        self.exchange = exchange
        self.devices = devices
        self.conn = connect()
        self.channel = self.conn.channel()
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
        self._data = [activation_data(d, 90 + i % 10) for i, d in enumerate(devices)]

    def heartbeat(self) -> None:
        self.channel.basic_publish(
            self.exchange, HEARTBEAT_KEY, wire.make_payload(heartbeat_data(self.devices))
        )

    def activate(self, i: int) -> str:
        """Publish activation number i (cycling over the inputs, fresh timestamp); returns its output key."""
        j = i % len(self.devices)
        self.channel.basic_publish(self.exchange, NOTIFY_KEY, wire.make_payload(self._data[j]))
        return self.devices[j].output_key

    def output_for(self, i: int) -> str:
        return self.devices[i % len(self.devices)].output_key

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def publish_heartbeat(exchange: str, data: dict[str, Any]) -> None:
    """One ioboard heartbeat on `exchange`, on a connection of its own."""
    conn = connect()
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
        channel.basic_publish(exchange, HEARTBEAT_KEY, wire.make_payload(data))
    finally:
        if conn.is_open:
            conn.close()


class MqttPublisher(Pacing):
    """One paho client playing all the sensor boards: QoS 1, network loop in paho's own thread.

    publish() does not wait: paho keeps MQTT_PUBLISH_WINDOW messages in flight and queues the rest.
    burst() and paced() wait for every PUBACK at the end, so each leg starts with nothing in flight.
    """

    def __init__(self, port: int, sensors: list[SensorInput]) -> None:
        self.sensors = sensors
        self._boards: dict[str, list[SensorInput]] = {}
        for s in sensors:
            self._boards.setdefault(s.board_id, []).append(s)
        for board in self._boards.values():
            board.sort(key=lambda s: s.number)
        self._uptime0 = time.monotonic() - 3600.0  # boards that have been up an hour
        self._acks = threading.Condition()
        self._sent = 0
        self._acked = 0
        self._last_ack = 0.0
        self._notes: dict[str, Any] = {}
        self._connected = threading.Event()
        self._connect_reason = ""
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"bench-boards-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(MQTT_PUBLISH_WINDOW)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        try:
            self.client.connect(MQTT_HOST, port, keepalive=60)
        except OSError as exc:
            raise BenchError(f"the bench's MQTT publisher cannot connect to port {port}: {exc!r}") from exc
        self.client.loop_start()
        if not self._connected.wait(10):
            self.client.loop_stop()
            raise BenchError(f"mosquitto on port {port} did not accept the publisher {self._connect_reason}")

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._connect_reason = f"({reason})"
        else:
            self._connected.set()

    def _on_publish(self, _c: Any, _u: Any, _mid: int, _reason: Any, _props: Any) -> None:
        with self._acks:
            self._acked += 1
            self._last_ack = time.perf_counter()
            self._acks.notify_all()

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=MQTT_QOS)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BenchError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self._sent += 1

    def wait_acked(self, timeout: float = ACK_TIMEOUT) -> None:
        with self._acks:
            if not self._acks.wait_for(lambda: self._acked >= self._sent, timeout):
                raise BenchError(
                    f"mosquitto acknowledged {self._acked} of {self._sent} publishes within {timeout:.0f} s"
                )

    def reading(self, board_id: str, active: int | None) -> bytes:
        return sensor_reading(self._boards[board_id], active, round(time.monotonic() - self._uptime0, 2))

    def all_inactive(self) -> None:
        """Every board's reading with nothing active, as a board sends every 30 s; waits for the PUBACKs."""
        for board_id, board in self._boards.items():
            self._publish(board[0].topic, self.reading(board_id, None))
        self.wait_acked()

    def activate(self, i: int) -> str:
        s = self.sensors[i % len(self.sensors)]
        self._publish(s.topic, self.reading(s.board_id, s.number))
        return s.output_key

    def output_for(self, i: int) -> str:
        return self.sensors[i % len(self.sensors)].output_key

    def burst(self, n: int) -> tuple[float, float]:
        first, end = super().burst(n)
        self.wait_acked()
        self._notes = {"all_acked_s": round(self._last_ack - first, 3)}
        return first, end

    def paced(self, rate: float, count: int) -> tuple[list[tuple[float, str]], float]:
        out = super().paced(rate, count)
        self.wait_acked()
        return out

    def notes(self) -> dict[str, Any]:
        return self._notes

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def mqtt_publisher(port: int) -> Callable[[], Pacing]:
    """A new MqttPublisher for each attempt of a set of legs."""
    sensors = make_sensor_inputs()
    return lambda: MqttPublisher(port, sensors)


class ControlConsumer(threading.Thread):
    """An exclusive queue on <exchange>_control bound to event.control.ioboard, in its own thread."""

    def __init__(self, exchange: str) -> None:
        super().__init__(name="ControlConsumer", daemon=True)
        self.control_exchange = f"{exchange}_control"
        self.arrivals: list[tuple[float, str]] = []
        self.undecodable = 0
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop_flag = threading.Event()

    def run(self) -> None:
        try:
            conn = connect()
            channel = conn.channel()
            channel.exchange_declare(self.control_exchange, exchange_type="direct")
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, self.control_exchange, routing_key=CONTROL_KEY)
            channel.basic_consume(queue, self._on_message, auto_ack=True)
            self.ready.set()
            while not self._stop_flag.is_set():
                conn.process_data_events(time_limit=0.02)
            conn.close()
        except Exception as exc:  # reported by start_and_wait / wait_for
            self.error = exc
            self.ready.set()

    def _on_message(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        now = time.perf_counter()
        try:
            key = msgpack.unpackb(body)["data"][0]
        except Exception:
            self.undecodable += 1
            return
        self.arrivals.append((now, key))

    def start_and_wait(self) -> None:
        self.start()
        if not self.ready.wait(10) or self.error is not None:
            raise Disrupted(f"control consumer could not start: {self.error!r}")

    def wait_for(self, count: int, last_publish: float) -> None:
        """Wait until count messages arrived (plus a quiet spell), no progress for a while, or a timeout."""
        seen, progress = -1, time.perf_counter()
        while len(self.arrivals) < count:
            if self.error is not None:
                raise Disrupted(f"control consumer failed: {self.error!r}")
            now = time.perf_counter()
            if len(self.arrivals) != seen:
                seen, progress = len(self.arrivals), now
            if now - progress > IDLE_TIMEOUT or now - last_publish > LEG_TIMEOUT:
                break
            time.sleep(0.01)
        time.sleep(QUIET_SECONDS)
        if self.error is not None:
            raise Disrupted(f"control consumer failed: {self.error!r}")

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5)
