"""Benchmark the hub (`python -m app`) against minimal relays: RabbitMQ in, and MQTT sensor boards in.

RabbitMQ legs: remote-monitor notify messages on the local broker -> control messages, hub vs a minimal
pika relay (these carry the targets; 5 runs of a fresh hub and a fresh relay, then a soak of the last hub
to 100,000 activations for its RSS). MQTT legs: adc-app sensor boards on a private mosquitto -> the
same control messages, hub vs a minimal paho+pika relay (information, no target).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import http.client
import json
import math
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pika

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ is on sys.path, the repo root is not
    sys.path.insert(0, str(REPO))

from pylib import wire  # noqa: E402

RESULTS = REPO / "bench" / "results" / "latest.json"
BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672
ORIGIN = "bench"
HEARTBEAT_KEY = f"event.heartbeat.ioboard.{ORIGIN}"
NOTIFY_KEY = f"event.notify.ioboard.{ORIGIN}"
CONTROL_KEY = "event.control.ioboard"
DEVICES = 100
WARMUP = 5 * DEVICES  # activations sent (and checked) before anything is measured
# Without --n, N is chosen from the hub's warm-up rate so that its throughput leg takes about
# TARGET_LEG_SECONDS, within these bounds; the baseline then gets the same N.
TARGET_LEG_SECONDS = 10.0
MIN_N, MAX_N = 2000, 20000
LATENCY_RATE = 200  # activations per second
LATENCY_SECONDS = 10.0
IDLE_TIMEOUT = 10.0  # a leg gives up when no control message has arrived for this long
LEG_TIMEOUT = 60.0  # and in any case this long after its last publish
QUIET_SECONDS = 0.5  # listened for after the last expected message, to catch duplicates
HEALTH_POLL = 0.02
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# MQTT legs (wire-format.md §5.3): adc-app boards with 4 inputs each on a private mosquitto.
MOSQUITTO = "/usr/sbin/mosquitto"
MQTT_HOST = "127.0.0.1"
MQTT_PLACE = "bench"  # topic sensor/<place>/<device_id>; the hub's origin is sensor/<place>
SENSOR_LABELS = ("Back Door", "Motion Detector", "Side Window", "Smoke Alarm")  # input_1 .. input_4
MQTT_BOARDS = DEVICES // len(SENSOR_LABELS)
MQTT_QOS = 1  # what adc-app publishes with
MQTT_PUBLISH_WINDOW = 20  # the bench publisher's in-flight window: paho's default (and the hub's own)
MQTT_MIN_N = 1000  # the MQTT N is chosen from the hub's MQTT warm-up rate, as N is for RabbitMQ
ACK_TIMEOUT = 60.0  # mosquitto acknowledges every publish well within this

# Flood case: one device floods FLOOD_KEYS new keys (half over MQTT, half over RabbitMQ) in small
# messages, as the report that found the stall did (1,406 messages bringing 20,000 keys), while a
# legitimate ioboard keeps firing at FLOOD_LEGIT_RATE.
FLOOD_KEYS = 20_000
FLOOD_KEYS_PER_MESSAGE = 14
FLOOD_LEGIT_RATE = 20
FLOOD_TAIL_SECONDS = 2.0  # legitimate activations go on this long after the flood's last message
# Flood messages a second per transport (--flood-rate; 0: as fast as the publishers go). 250 a
# second each is 7,000 new keys a second, far beyond any real device; at full speed on a loaded
# 2-core machine the hub falls behind for a moment and the legitimate p99 rises to ~0.5 s.
FLOOD_DEFAULT_RATE = 250.0
FLOOD_RATE = [FLOOD_DEFAULT_RATE]
TARGET_FLOOD_RSS_MB = 120.0
TARGET_FLOOD_P99_MS = 50.0
# Pages case: the page and API timings with 2,000 inputs and 200 outputs (tests/scale.py's house).
PAGE_REPEATS = 3

# Issue 17's targets. Each run is a fresh hub then a fresh relay; the ratio is the median over the runs,
# the p99 must hold in every run (the worst is compared), RSS and start-up are the worst run's.
RUNS = 5
TARGET_RATIO = 0.7
TARGET_P99_MS = 10.0
TARGET_RSS_MB = 64.0  # after start-up (RabbitMQ, MQTT, dashboard and scheduler on)
TARGET_RSS_SOAK_MB = 72.0  # after SOAK activations
TARGET_STARTUP_S = 0.8
SOAK = 100_000  # activations the last run's hub has handled in all before its RSS is taken again
# The throughput and latency legs' single ioboard carries all DEVICES inputs and outputs, above the
# default per-device registration caps (64 inputs, 16 outputs); the flood case keeps the defaults.
LEG_CAPS = {"MAX_INPUTS_PER_DEVICE": str(DEVICES), "MAX_OUTPUTS_PER_DEVICE": str(DEVICES)}


class BenchError(RuntimeError):
    """The benchmark could not run (as opposed to a target being missed)."""


class Disrupted(RuntimeError):
    """A bench connection to the broker was closed mid-leg (e.g. a test elsewhere closed them all)."""


BROKER_FAILURES = (pika.exceptions.AMQPError, OSError, Disrupted)
# Every hub's and relay's exchange, deleted (with its _control twin) at the end of the run.
CREATED_EXCHANGES: list[str] = []
ATTEMPTS = 3  # a set of legs disrupted by the broker closing connections is repeated, this many times at most


# ---- devices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One remote-monitor input and the output it is linked to."""

    input: dict[str, str]
    output: dict[str, str]

    @property
    def input_key(self) -> str:
        return self.input["device_key"]

    @property
    def output_key(self) -> str:
        return self.output["device_key"]


def make_devices(count: int = DEVICES) -> list[Device]:
    """Inputs and outputs described as remote-monitor does (wire-format.md §3.1)."""
    devices = []
    for i in range(1, count + 1):
        name, kind, location = f"Sensor {i:03d}", "Motion", f"Room {i:03d}"
        out_type = "Buzzer" if i % 2 else "switch"
        devices.append(
            Device(
                input={
                    "name": name,
                    "type": kind,
                    "location": location,
                    "device_key": f"{name} {kind} ({location})",
                    "device_label": f"{name} {kind}",
                },
                output={"type": out_type, "location": location, "device_key": f"{location} {out_type}"},
            )
        )
    return devices


def heartbeat_data(devices: list[Device]) -> dict[str, Any]:
    return {
        "statistics": {"sample_count": 123456},
        "device_info": {
            "inputs": [d.input for d in devices],
            "outputs": [d.output for d in devices],
        },
    }


def activation_data(device: Device, value: int) -> dict[str, Any]:
    """One active input, as remote-monitor's notify message carries it (wire-format.md §3.2)."""
    active = dict(device.input, sample_value=value)
    return {"samples": {device.input_key: value}, "active_devices": [active]}


@dataclass(frozen=True)
class SensorInput:
    """One input of an adc-app sensor board on MQTT and the switch output it is linked to."""

    board_id: str
    location: str
    number: int  # N of input_N, 1-4
    label: str
    output: dict[str, str]

    @property
    def topic(self) -> str:
        return f"sensor/{MQTT_PLACE}/{self.board_id}"

    @property
    def device_key(self) -> str:
        """What the hub (app/mqtt_source.py) makes of it: '<input_location> <input_label>'."""
        return f"{self.location} {self.label}"

    @property
    def output_key(self) -> str:
        return self.output["device_key"]


def make_sensor_inputs() -> list[SensorInput]:
    """DEVICES inputs on MQTT_BOARDS boards of 4, in activation order, linked to make_devices()' outputs.

    Consecutive inputs are on different boards (board = j % 25, input = j // 25 + 1), so a burst
    touches every board, as a house of boards would, and every input is distinct.
    """
    outputs = [d.output for d in make_devices()]
    sensors = []
    for j in range(DEVICES):
        board, number = j % MQTT_BOARDS, j // MQTT_BOARDS + 1
        sensors.append(
            SensorInput(
                board_id=f"esp32_BE{board + 1:04X}",
                location=f"Zone {board + 1:02d}",
                number=number,
                label=SENSOR_LABELS[number - 1],
                output=outputs[j],
            )
        )
    return sensors


def sensor_reading(board: list[SensorInput], active: int | None, uptime: float) -> bytes:
    """A board's reading exactly as adc-app publishes it (wire-format.md §5.3); input `active` is on."""
    first = board[0]
    body: dict[str, Any] = {
        "uptime": uptime,
        "timestamp": uptime,
        "device_id": first.board_id,
        "input_location": first.location,
    }
    for s in board:
        on = s.number == active
        body[f"input_{s.number}"] = {
            "input_label": s.label,
            "active": on,
            "sample_value": 4095 if on else 0,
            "normal_value": 0,
        }
    return json.dumps(body).encode()


def outputs_heartbeat_data(outputs: list[dict[str, str]]) -> dict[str, Any]:
    """An ioboard heartbeat advertising only switch outputs (the inputs come from MQTT)."""
    return {"statistics": {"sample_count": 1}, "device_info": {"inputs": [], "outputs": outputs}}


# ---- broker clients -------------------------------------------------------------------------


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


# ---- measurements ---------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list, rounded to 0.01."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(p / 100 * len(sorted_values))))
    return round(sorted_values[rank - 1], 2)


def tally(arrivals: list[tuple[float, str]], expected: Counter[str]) -> tuple[int, int]:
    """(missing, extra) control messages per output key against what was expected."""
    got = Counter(key for _, key in arrivals)
    missing = sum(max(0, n - got[k]) for k, n in expected.items())
    extra = sum(max(0, n - expected.get(k, 0)) for k, n in got.items())
    return missing, extra


def run_warmup(exchange: str, publisher: Pacing) -> dict[str, Any]:
    """Two activations per input; every one must come back once before anything is measured."""
    consumer = ControlConsumer(exchange)
    consumer.start_and_wait()
    try:
        first, end = publisher.burst(WARMUP)
        consumer.wait_for(WARMUP, end)
    finally:
        consumer.stop()
    expected = Counter(publisher.output_for(i) for i in range(WARMUP))
    missing, extra = tally(consumer.arrivals, expected)
    if missing == WARMUP:
        raise BenchError(f"none of the {WARMUP} warm-up activations produced a control message")
    elapsed = max(t for t, _ in consumer.arrivals) - first
    return {
        "sent": WARMUP,
        "received": len(consumer.arrivals),
        "missing": missing,
        "extra": extra,
        "rate": round(min(len(consumer.arrivals), WARMUP) / elapsed, 1) if elapsed > 0 else None,
    }


def choose_n(warmup_rate: float | None, min_n: int = MIN_N) -> int:
    """N for a throughput leg of about TARGET_LEG_SECONDS at the warm-up rate, in steps of 1000."""
    if not warmup_rate:
        return min_n
    return int(max(min_n, min(MAX_N, round(warmup_rate * TARGET_LEG_SECONDS, -3))))


def run_throughput(
    exchange: str, publisher: Pacing, n: int, cpu: Callable[[], float | None]
) -> dict[str, Any]:
    consumer = ControlConsumer(exchange)
    consumer.start_and_wait()
    cpu_before = cpu()
    try:
        first, end = publisher.burst(n)
        consumer.wait_for(n, end)
    finally:
        consumer.stop()
    cpu_after = cpu()
    cpu_used = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    arrivals = consumer.arrivals
    expected = Counter(publisher.output_for(i) for i in range(n))
    missing, extra = tally(arrivals, expected)
    counted = min(len(arrivals), n)
    last = max((t for t, _ in arrivals), default=first)
    elapsed = last - first
    return {
        "n": n,
        "received": len(arrivals),
        "missing": missing,
        "extra": extra,
        "undecodable": consumer.undecodable,
        "publish_s": round(end - first, 3),
        "publish_rate": round(n / (end - first), 1),
        "elapsed_s": round(elapsed, 3),
        "rate": round(counted / elapsed, 1) if elapsed > 0 else None,
        "drain_after_publish_s": round(last - end, 3),
        "cpu_s": None if cpu_used is None else round(cpu_used, 2),
        "cpu_ms_per_msg": None if cpu_used is None else round(1000 * cpu_used / n, 3),
        **publisher.notes(),
    }


def run_latency(exchange: str, publisher: Pacing) -> dict[str, Any]:
    count = int(LATENCY_RATE * LATENCY_SECONDS)
    consumer = ControlConsumer(exchange)
    consumer.start_and_wait()
    try:
        sent, max_lag = publisher.paced(LATENCY_RATE, count)
        consumer.wait_for(count, sent[-1][0])
    finally:
        consumer.stop()
    return {"rate": LATENCY_RATE, "max_publish_lag_ms": round(max_lag * 1000, 2)} | latency_stats(
        sent, consumer.arrivals
    )


def latency_stats(sent: list[tuple[float, str]], arrivals: list[tuple[float, str]]) -> dict[str, Any]:
    """Match each control message to the oldest activation of its output still waiting; percentiles."""
    pending: dict[str, deque[float]] = defaultdict(deque)
    for t, key in sent:
        pending[key].append(t)
    latencies: list[float] = []
    extra = 0
    for t, key in sorted(arrivals):
        queue = pending.get(key)
        if queue:
            latencies.append((t - queue.popleft()) * 1000)
        else:
            extra += 1
    missing = sum(len(q) for q in pending.values())
    latencies.sort()
    span = sent[-1][0] - sent[0][0] if sent else 0
    return {
        "sent": len(sent),
        "achieved_rate": round((len(sent) - 1) / span, 1) if span > 0 else None,
        "received": len(arrivals),
        "missing": missing,
        "extra": extra,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else None,
    }


# ---- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int, field_name: str = "VmRSS") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (all its threads); None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    """SIGTERM, wait; SIGKILL after STOP_TIMEOUT. Returns (exit code, seconds taken)."""
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        code = None  # did not stop by itself
    return code, time.perf_counter() - start


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((MQTT_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class MqttBroker:
    """The bench's own mosquitto on a free port: no other client on it, no queue limit, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> float:
        """Start mosquitto; returns seconds until its port accepts connections."""
        if not os.access(MOSQUITTO, os.X_OK):
            raise BenchError(f"{MOSQUITTO} is not installed (the MQTT legs need it)")
        # max_queued_messages 0: no limit, so no QoS 1 message is dropped for a slow subscriber (the
        # figures would otherwise count drops as missing); as root, mosquitto would switch users.
        config = self.workdir / "mosquitto.conf"
        config.write_text(
            ("user root\n" if os.geteuid() == 0 else "") + f"listener {self.port} {MQTT_HOST}\n"
            "allow_anonymous true\n"
            "max_queued_messages 0\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
        )
        start = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=log)
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise BenchError(f"mosquitto exited with code {self.proc.returncode}: {self.log_tail()}")
            if time.perf_counter() - start > timeout:
                self.stop()
                raise BenchError(f"mosquitto did not open port {self.port} within {timeout:.0f} s")
            time.sleep(0.02)
        return time.perf_counter() - start

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)
        self.proc = None

    def log_tail(self, lines: int = 10) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Hub:
    """`python -m app` in a temp dir with its own exchange, database and port (and the bench's mosquitto)."""

    workdir: Path
    mqtt_port: int | None = None
    exchange: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:10]}")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    token: str | None = None  # bearer token for the JSON API, when the hub wants one (authorize)
    extra_env: dict[str, str] = field(default_factory=dict)  # settings beyond app.conf's defaults

    def __post_init__(self) -> None:
        CREATED_EXCHANGES.append(self.exchange)

    @property
    def database(self) -> Path:
        return self.workdir / "event_processor.db"

    def start(self) -> float:
        """Start the hub; returns seconds from Popen until GET /api/health first answers 200."""
        # Every other setting at its config/app.conf default, whatever this shell exports (an
        # exported DATABASE_URL, say, would otherwise point the hub at another database).
        conf = configparser.ConfigParser(interpolation=None)
        conf.optionxform = str  # type: ignore[assignment,method-assign]
        conf.read(REPO / "config" / "app.conf")
        settings = {key for section in conf.sections() for key in conf[section]}
        env = {k: v for k, v in os.environ.items() if k not in settings and not k.startswith("OUTPUT_TYPE_")}
        env.update(
            PYTHONPATH=str(REPO),
            RABBITMQ_SERVER_ADDRESS=f"{BROKER_HOST}:{BROKER_PORT}",
            RABBITMQ_EXCHANGE=self.exchange,
            TABLESPACE_PATH=str(self.database),
            APP_FLASK_HTTP_PORT=str(self.port),
            LOG_LEVEL="INFO",  # the default, as its owner runs it: a line per activation would show here
        )
        if self.mqtt_port is not None:
            env["MQTT_SERVER_ADDRESS"] = f"{MQTT_HOST}:{self.mqtt_port}"
        env.update(self.extra_env)
        self.log_path = self.workdir / "hub.log"
        log_file = self.log_path.open("wb")
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=self.workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        while True:
            if self.health_status() == 200:
                return time.perf_counter() - start
            if self.proc.poll() is not None:
                raise BenchError(f"the hub exited with code {self.proc.returncode} during start-up")
            if time.perf_counter() - start > START_TIMEOUT:
                raise BenchError(f"GET /api/health did not answer 200 within {START_TIMEOUT:.0f} s")
            time.sleep(HEALTH_POLL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _request(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """(status, JSON body); BenchError when the API does not answer at all."""
        try:
            return self._request(method, path, body, timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise BenchError(f"{method} {path} got no answer: {exc!r}") from exc

    def authorize(self) -> None:
        """When the JSON API wants a login (401), make a bearer token in the hub's own database.

        As tests/hubtools.py does: the app's own create_token for its configured admin user, whom
        the hub creates at start-up. Imported here, so a hub without logins costs the bench nothing.
        """
        if self.call("GET", "/api/devices")[0] != 401:
            return
        try:
            from app import db
            from app.web import auth
        except ImportError as exc:
            raise BenchError(f"the API wants a login and the bench cannot make a token: {exc!r}") from exc
        conf = configparser.ConfigParser(interpolation=None)
        conf.optionxform = str  # type: ignore[assignment,method-assign]
        conf.read(REPO / "config" / "app.conf")
        admin = next(
            (conf[s]["APP_ADMIN_USER"] for s in conf.sections() if "APP_ADMIN_USER" in conf[s]), "admin"
        )
        engine = db.make_engine(f"sqlite:///{self.database}")
        try:
            with db.session_factory(engine)() as session:
                self.token = auth.create_token(session, admin, "bench")
        except Exception as exc:  # whatever the app raises: the bench cannot go on without a token
            raise BenchError(f"the API wants a login and making a token failed: {exc!r}") from exc
        finally:
            engine.dispose()
        status, body = self.call("GET", "/api/devices")
        if status != 200:
            raise BenchError(f"GET /api/devices with the bench's token answered {status}: {body}")

    def health_status(self) -> int | None:
        try:
            return self._request("GET", "/api/health", None, 1.0)[0]
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {body}")
        return body

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> float:
        start = time.perf_counter()
        while not predicate():
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"the hub exited with code {self.proc.returncode} while waiting for {what}")
            if time.perf_counter() - start > timeout:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)
        return time.perf_counter() - start

    def broker_connected(self) -> bool:
        components = self.get("/api/health").get("components", {})
        return all(
            components.get(name, {}).get("state") == "connected"
            for name in ("rabbitmq_source", "control_publisher")
        )

    def counter(self, name: str) -> int:
        return int(self.get("/api/health").get("counters", {}).get(name, 0))

    def mqtt_connected(self) -> bool:
        return bool(self.get("/api/health").get("components", {}).get("mqtt", {}).get("state") == "connected")

    def _advertise_until_listed(
        self, links: list[tuple[str, str]], advertise: Callable[[], None]
    ) -> tuple[float, list[tuple[int, int]]]:
        """Advertise (again every 3 s) until the API lists every (input, output); returns their ids."""
        wanted = {"inputs": {i for i, _ in links}, "outputs": {o for _, o in links}}
        ids: dict[str, dict[str, int]] = {}
        last_advert = 0.0

        def listed() -> bool:
            nonlocal last_advert
            if time.perf_counter() - last_advert > 3.0:  # again, in case the broker dropped it
                last_advert = time.perf_counter()
                try:
                    advertise()
                except BROKER_FAILURES as exc:
                    print(f"  heartbeat publish failed ({exc!r}); retrying", flush=True)
            listing = self.get("/api/devices")
            for kind, keys in wanted.items():
                ids[kind] = {d["device_key"]: d["id"] for d in listing[kind] if d["device_key"] in keys}
            return all(len(ids[kind]) == len(keys) for kind, keys in wanted.items())

        registered = self.wait_until("the API to list the advertised devices", listed)
        return registered, [(ids["inputs"][i], ids["outputs"][o]) for i, o in links]

    def _enable_and_link(self, pairs: list[tuple[int, int]]) -> None:
        """Enable each input with no latch (activation_interval 0) and link it to its one output."""
        for input_id, output_id in pairs:
            fields = {"device_enabled": True, "activation_interval": 0}
            status, body = self.call("PATCH", f"/api/inputs/{input_id}", fields)
            if status != 200:
                raise BenchError(f"PATCH /api/inputs/{input_id} answered {status}: {body}")
            links = {"output_ids": [output_id]}
            status, body = self.call("PUT", f"/api/inputs/{input_id}/outputs", links)
            if status != 200:
                raise BenchError(f"PUT /api/inputs/{input_id}/outputs answered {status}: {body}")

    def set_up(self, devices: list[Device]) -> dict[str, Any]:
        """Advertise the devices, enable every input (no latch) and link input i to output i."""
        start = time.perf_counter()
        connected = self.wait_until("RabbitSource and ControlPublisher to connect", self.broker_connected)

        def advertise() -> None:
            publisher = Publisher(self.exchange, devices)
            publisher.heartbeat()
            publisher.close()

        registered, pairs = self._advertise_until_listed(
            [(d.input_key, d.output_key) for d in devices], advertise
        )
        self._enable_and_link(pairs)
        return {
            "broker_connected_s": round(connected, 3),
            "devices_listed_s": round(registered, 3),
            "total_s": round(time.perf_counter() - start, 3),
        }

    def set_up_mqtt(self, sensors: list[SensorInput]) -> dict[str, Any]:
        """Each board's all-inactive reading registers its 4 inputs; an ioboard heartbeat the outputs;
        then every input is enabled (no latch) and linked to its output, as in set_up."""
        assert self.mqtt_port is not None
        start = time.perf_counter()
        connected = self.wait_until(
            "RabbitSource, ControlPublisher and MqttSource to connect",
            lambda: self.broker_connected() and self.mqtt_connected(),
        )
        outputs = outputs_heartbeat_data([s.output for s in sensors])
        boards = MqttPublisher(self.mqtt_port, sensors)
        try:

            def advertise() -> None:
                boards.all_inactive()
                publish_heartbeat(self.exchange, outputs)

            registered, pairs = self._advertise_until_listed(
                [(s.device_key, s.output_key) for s in sensors], advertise
            )
        finally:
            boards.close()
        self._enable_and_link(pairs)
        return {
            "brokers_connected_s": round(connected, 3),
            "devices_listed_s": round(registered, 3),
            "total_s": round(time.perf_counter() - start, 3),
        }

    def settle(self, timeout: float = 30.0) -> float | None:
        """Seconds until the AuditWriter has stored a decision for every activation (None on timeout)."""

        def stored() -> bool:
            counters = self.get("/api/health").get("counters", {})
            return counters.get("audit.decisions", 0) >= counters.get("processor.activations", 0)

        try:
            return round(self.wait_until("the audit backlog", stored, timeout), 2)
        except BenchError:
            return None

    def recover(self) -> None:
        """After the broker closed connections: wait for the hub to reconnect and go quiet."""
        self.wait_until("the hub to reconnect to RabbitMQ", self.broker_connected, 60.0)
        last, quiet_since = -1, time.perf_counter()
        while time.perf_counter() - quiet_since < 1.0:
            published = self.counter("control.published")
            if published != last:
                last, quiet_since = published, time.perf_counter()
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


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
            [sys.executable, str(Path(__file__).resolve()), *args],
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


# ---- the run --------------------------------------------------------------------------------


def measure_once(
    exchange: str,
    pid: int,
    n: int | None,
    settle: Callable[[], Any] | None,
    new_publisher: Callable[[], Pacing] | None = None,
    min_n: int = MIN_N,
) -> dict[str, Any]:
    """Warm-up, throughput and latency legs against whatever relays `exchange` (hub or baseline)."""
    publisher = new_publisher() if new_publisher is not None else Publisher(exchange, make_devices())
    try:
        print(f"  warm-up: {WARMUP} activations ...", flush=True)
        out: dict[str, Any] = {"warmup": run_warmup(exchange, publisher)}
        if n is None:
            n = choose_n(out["warmup"]["rate"], min_n)
            print(f"  warm-up rate {out['warmup']['rate']} msg/s, so N = {n}", flush=True)
        out["n"] = n
        print(f"  throughput: {n} activations as fast as possible ...", flush=True)
        out["throughput"] = run_throughput(exchange, publisher, n, lambda: cpu_seconds(pid))
        if settle is not None:
            out["settle_s"] = settle()
        print(f"  latency: {LATENCY_RATE}/s for {LATENCY_SECONDS:.0f} s ...", flush=True)
        out["latency"] = run_latency(exchange, publisher)
    finally:
        with contextlib.suppress(*BROKER_FAILURES):
            publisher.close()
    return out


def measure(
    exchange: str,
    pid: Callable[[], int],
    n: int | None,
    recover: Callable[[], None],
    settle: Callable[[], Any] | None = None,
    new_publisher: Callable[[], Pacing] | None = None,
    min_n: int = MIN_N,
) -> dict[str, Any]:
    """measure_once, repeated (after `recover`) when the broker closes a connection mid-leg."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            out = measure_once(exchange, pid(), n, settle, new_publisher, min_n)
            out["attempts"] = attempt
            return out
        except BROKER_FAILURES as exc:
            if attempt == ATTEMPTS:
                raise BenchError(
                    f"broker connections were closed during {ATTEMPTS} attempts: {exc!r}"
                ) from exc
            print(f"  a broker connection was lost ({exc!r}); recovering and measuring again", flush=True)
            recover()
    raise AssertionError("unreachable")


def mqtt_publisher(port: int) -> Callable[[], Pacing]:
    """A new MqttPublisher for each attempt of a set of legs."""
    sensors = make_sensor_inputs()
    return lambda: MqttPublisher(port, sensors)


def with_hub(
    hub: Hub, legs: Callable[[dict[str, Any]], None], counter_prefixes: tuple[str, ...]
) -> dict[str, Any]:
    """Start the hub, run `legs` (which fill in the result), take RSS and counters, SIGTERM it."""
    result: dict[str, Any] = {"exchange": hub.exchange, "port": hub.port}
    try:
        result["startup_s"] = round(hub.start(), 3)
        result["pid"] = hub.pid
        print(
            f"  hub pid {hub.pid} on port {hub.port}, healthy after {result['startup_s']:.2f} s", flush=True
        )
        result["rss_startup_mb"] = rss_mb(hub.pid)
        hub.authorize()
        legs(result)
        result["rss_mb"] = rss_mb(hub.pid)
        result["peak_rss_mb"] = rss_mb(hub.pid, "VmHWM")
        counters = hub.get("/api/health").get("counters", {})
        result["counters"] = {k: v for k, v in counters.items() if k.startswith(counter_prefixes)}
    except Exception:
        print("---- hub log (tail) ----\n" + hub.log_tail(), file=sys.stderr)
        raise
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            code, took = stop_process(hub.proc)
            result["stop"] = {"exit_code": code, "seconds": round(took, 3)}
        elif hub.proc is not None:
            result["stop"] = {"exit_code": hub.proc.returncode, "seconds": None, "note": "exited by itself"}
    return result


def activations(result: dict[str, Any]) -> int:
    """How many activations the legs in `result` published to the hub."""
    return WARMUP + (result.get("n") or 0) + int(LATENCY_RATE * LATENCY_SECONDS) * ("latency" in result)


class SoakDone(Exception):
    """Nothing left to publish in the soak."""


def soak(hub: Hub, total: int, done: int) -> dict[str, Any]:
    """Bursts until the hub has handled `total` activations in all; RSS before and after."""
    out: dict[str, Any] = {"activations": total, "rss_before_mb": rss_mb(hub.pid)}
    left = max(total - done, 0)
    print(f"  soak: {left} more activations (to {total} in all) ...", flush=True)
    started = time.perf_counter()
    try:
        if not left:  # the legs alone reached `total`
            raise SoakDone
        publisher = Publisher(hub.exchange, make_devices())
        try:
            leg = run_throughput(hub.exchange, publisher, left, lambda: cpu_seconds(hub.pid))
        finally:
            with contextlib.suppress(*BROKER_FAILURES):
                publisher.close()
    except SoakDone:
        leg = {"rate": None, "missing": 0, "extra": 0}
    except BROKER_FAILURES as exc:  # the activations the hub did handle still count for its RSS
        print(f"  soak disrupted by the broker ({exc!r}); RSS taken anyway", flush=True)
        hub.recover()
        leg = {"rate": None, "missing": None, "extra": None}
        out["error"] = repr(exc)
    out.update(
        seconds=round(time.perf_counter() - started, 1),
        rate=leg["rate"],
        missing=leg["missing"],
        extra=leg["extra"],
        settle_s=hub.settle(),
        rss_after_mb=rss_mb(hub.pid),
        peak_rss_mb=rss_mb(hub.pid, "VmHWM"),
    )
    return out


def run_hub(n: int | None, workdir: Path, mqtt_port: int, soak_to: int = 0) -> dict[str, Any]:
    # Connected to the bench's own (idle) mosquitto, so nothing published elsewhere reaches it.
    hub = Hub(workdir, mqtt_port=mqtt_port, extra_env=LEG_CAPS)

    def legs(result: dict[str, Any]) -> None:
        result["setup"] = hub.set_up(make_devices())
        result["rss_idle_mb"] = rss_mb(hub.pid)
        result.update(measure(hub.exchange, lambda: hub.pid, n, hub.recover, hub.settle))
        if soak_to:
            result["soak"] = soak(hub, soak_to, activations(result))

    return with_hub(hub, legs, ("audit.", "control.", "processor."))


def run_mqtt_hub(n: int | None, workdir: Path, mqtt_port: int) -> dict[str, Any]:
    """A second hub, fresh database and all, with 100 sensor inputs on MQTT."""
    hub = Hub(workdir, mqtt_port=mqtt_port, extra_env=LEG_CAPS)

    def legs(result: dict[str, Any]) -> None:
        result["setup"] = hub.set_up_mqtt(make_sensor_inputs())
        result["rss_idle_mb"] = rss_mb(hub.pid)
        result.update(
            measure(
                hub.exchange,
                lambda: hub.pid,
                n,
                hub.recover,
                hub.settle,
                mqtt_publisher(mqtt_port),
                MQTT_MIN_N,
            )
        )

    return with_hub(hub, legs, ("audit.", "control.", "processor.", "mqtt.", "heartbeat_filter."))


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


def run_mqtt(n: int | None, workdir: Path, broker: MqttBroker) -> dict[str, Any]:
    """The MQTT legs: a hub of its own, then the MQTT relay with the same N."""
    result: dict[str, Any] = {
        "broker": {
            "port": broker.port,
            "config": "listener 127.0.0.1, max_queued_messages 0 (no limit), persistence false",
        },
        "boards": MQTT_BOARDS,
        "inputs_per_board": len(SENSOR_LABELS),
        "topic": f"sensor/{MQTT_PLACE}/<device_id>",
        "qos": MQTT_QOS,
        "publish_window": MQTT_PUBLISH_WINDOW,
        "n": n,
        "n_source": "--mqtt-n" if n else "hub MQTT warm-up rate",
    }
    print("MQTT hub leg ...", flush=True)
    result["hub"] = run_mqtt_hub(n, workdir, broker.port)
    result["n"] = result["hub"]["n"]
    print("MQTT baseline leg ...", flush=True)
    result["baseline"] = run_baseline(result["n"], broker.port)
    hub_rate = _get(result["hub"], "throughput.rate")
    base_rate = _get(result["baseline"], "throughput.rate")
    result["throughput_ratio"] = round(hub_rate / base_rate, 3) if hub_rate and base_rate else None
    return result


# ---- flood: one device floods new keys while a legitimate one keeps firing -------------------


def pace(start: float, m: int, rate: float) -> None:
    """Sleep until message m is due at `rate` a second (0: no pacing)."""
    if rate > 0:
        delay = start + m / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def flood_mqtt(port: int, messages: int, done: threading.Event, stats: dict[str, Any]) -> None:
    """One adc-app board sending `messages` readings, each with FLOOD_KEYS_PER_MESSAGE new input_N keys."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(MQTT_PUBLISH_WINDOW)
    client.connect(MQTT_HOST, port)
    client.loop_start()
    try:
        last = None
        start = time.perf_counter()
        for m in range(messages):
            pace(start, m, FLOOD_RATE[0])
            body: dict[str, Any] = {"uptime": 1.0, "device_id": "esp32_F100D", "input_location": "Flood"}
            for k in range(FLOOD_KEYS_PER_MESSAGE):
                n = m * FLOOD_KEYS_PER_MESSAGE + k + 1
                body[f"input_{n}"] = {"input_label": f"In {n}", "active": k == 0, "sample_value": 1}
            last = client.publish(
                f"sensor/flood/{body['device_id']}", json.dumps(body).encode(), qos=MQTT_QOS
            )
        if last is not None:
            last.wait_for_publish(ACK_TIMEOUT)
        stats["mqtt_messages"] = messages
    finally:
        client.loop_stop()
        client.disconnect()
        done.set()


def flood_rabbit(exchange: str, messages: int, done: threading.Event, stats: dict[str, Any]) -> None:
    """One ioboard heartbeating `messages` times, each with FLOOD_KEYS_PER_MESSAGE new inputs (one active)."""
    conn = connect()
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
        start = time.perf_counter()
        for m in range(messages):
            pace(start, m, FLOOD_RATE[0])
            devices = [
                {"name": f"F{n}", "type": "Motion", "location": "Flood", "device_key": f"Flood {n}"}
                for n in range(m * FLOOD_KEYS_PER_MESSAGE, (m + 1) * FLOOD_KEYS_PER_MESSAGE)
            ]
            data = {"device_info": {"inputs": devices}, "active_devices": devices[:1]}
            channel.basic_publish(exchange, "event.notify.ioboard.flooder", wire.make_payload(data))
        stats["rabbitmq_messages"] = messages
    finally:
        if conn.is_open:
            conn.close()
        done.set()


def run_flood(workdir: Path, mqtt_port: int) -> dict[str, Any]:
    """A hub at its default caps; a legitimate ioboard fires at FLOOD_LEGIT_RATE through the flood."""
    hub = Hub(workdir, mqtt_port=mqtt_port)

    def legs(result: dict[str, Any]) -> None:
        devices = make_devices(2)
        result["setup"] = hub.set_up(devices)
        result["rss_idle_mb"] = rss_mb(hub.pid)
        per_transport = FLOOD_KEYS // 2 // FLOOD_KEYS_PER_MESSAGE
        consumer = ControlConsumer(hub.exchange)
        consumer.start_and_wait()
        publisher = Publisher(hub.exchange, devices)
        stats: dict[str, Any] = {}
        done = [threading.Event(), threading.Event()]
        flooders = [
            threading.Thread(target=flood_mqtt, args=(mqtt_port, per_transport, done[0], stats), daemon=True),
            threading.Thread(
                target=flood_rabbit, args=(hub.exchange, per_transport, done[1], stats), daemon=True
            ),
        ]
        sent: list[tuple[float, str]] = []
        rss_samples: list[float] = []
        started = time.perf_counter()
        try:
            for t in flooders:
                t.start()
            flood_end: float | None = None
            i = 0
            while flood_end is None or time.perf_counter() < flood_end + FLOOD_TAIL_SECONDS:
                due = started + i / FLOOD_LEGIT_RATE
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                sent.append((time.perf_counter(), publisher.activate(i)))
                i += 1
                if i % FLOOD_LEGIT_RATE == 0 and (rss := rss_mb(hub.pid)) is not None:
                    rss_samples.append(rss)
                if flood_end is None and all(d.is_set() for d in done):
                    flood_end = time.perf_counter()
                if time.perf_counter() - started > LEG_TIMEOUT * 5:
                    raise BenchError("the flood did not finish within five minutes")
            consumer.wait_for(len(sent), sent[-1][0])
        finally:
            publisher.close()
            consumer.stop()
            for t in flooders:
                t.join(10)
        result["flood"] = {
            "keys": FLOOD_KEYS,
            "keys_per_message": FLOOD_KEYS_PER_MESSAGE,
            "messages": stats,
            "flood_seconds": round((flood_end or time.perf_counter()) - started, 2),
            "legit_rate": FLOOD_LEGIT_RATE,
            "flood_rate_per_transport": FLOOD_RATE[0] or "as fast as possible",
            "rss_max_sampled_mb": max(rss_samples, default=None),
        } | latency_stats(sent, consumer.arrivals)
        hub.settle(60)
        listing = hub.get("/api/devices?limit=1")
        result["registered"] = listing.get("total")

    return with_hub(
        hub, legs, ("limits.", "heartbeat_filter.", "mqtt.", "processor.", "rabbitmq_source.", "presence.")
    )


def flood_report(flood: dict[str, Any] | None) -> list[str]:
    if flood is None:
        return []
    if "error" in flood:
        return ["", f"flood case: could not run: {flood['error']}"]
    f = flood["flood"]
    rate = f.get("flood_rate_per_transport")
    refused = {
        k.rsplit(".", 1)[-1]: v for k, v in flood.get("counters", {}).items() if k.startswith("limits.")
    }
    return [
        "",
        f"flood: one device sends {f['keys']:,} new keys ({f['keys_per_message']} a message, half over MQTT,"
        f" half over RabbitMQ, {rate} messages/s each) in {f['flood_seconds']:.1f} s while a legitimate"
        f" ioboard fires {f['legit_rate']}/s",
        f"  legitimate activations: {f['sent']} sent, {f['received']} control messages,"
        f" {f['missing']} missing, {f['extra']} extra",
        f"  latency p50 / p95 / p99 / max: {_fmt(f['p50_ms'], ' ms', 2)} / {_fmt(f['p95_ms'], ' ms', 2)}"
        f" / {_fmt(f['p99_ms'], ' ms', 2)} / {_fmt(f['max_ms'], ' ms', 2)}",
        f"  hub peak RSS (VmHWM) {_fmt(flood.get('peak_rss_mb'), ' MB')},"
        f" after {_fmt(flood.get('rss_mb'), ' MB')}",
        f"  registered after the flood: {flood.get('registered')}; refused by cap: {refused}",
    ]


def flood_targets(flood: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if flood is None or "error" in flood:
        return {}
    f = flood["flood"]
    rss, p99 = flood.get("peak_rss_mb"), f.get("p99_ms")
    return {
        "flood_peak_rss_mb": {
            "value": rss,
            "target": f"<= {TARGET_FLOOD_RSS_MB}",
            "met": None if rss is None else rss <= TARGET_FLOOD_RSS_MB,
        },
        "flood_p99_ms": {
            "value": p99,
            "target": f"<= {TARGET_FLOOD_P99_MS}",
            "met": None if p99 is None else p99 <= TARGET_FLOOD_P99_MS,
        },
        "flood_all_delivered": {
            "value": f["missing"] == 0,
            "target": "every activation",
            "met": f["missing"] == 0 and f["received"] >= f["sent"],
        },
    }


# ---- pages at scale -------------------------------------------------------------------------

SCALE_PAGES = (
    "/",
    "/events",
    "/charts",
    "/config/inputs",
    "/config/inputs?page=20",
    "/config/inputs?q=sensor+1",
    "/config/outputs",
    "/config/links",
    "/config/links?id={open_id}",
    "/config/schedule",
    "/api/devices",
    "/api/devices?limit=100&offset=1000",
    "/api/events",
    "/api/schedules",
    "/metrics",
)


def run_pages(workdir: Path) -> dict[str, Any]:
    """Render every page and API list of a 2,000-input, 200-output house (Flask test client, no login)."""
    from app import db, registry
    from app.models import InputConfig
    from app.presence import Presence
    from app.settings import load
    from app.web import create_app
    from tests import scale

    path = workdir / "house.db"
    env = {"TABLESPACE_PATH": str(path), "APP_FLASK_HTTP_PORT": "0", "LOG_LEVEL": "WARNING"}
    settings = load(env=env, dotenv_path=workdir / "no.env")
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions() as session:
        registry.ensure_builtin(session, settings.device_name)
        scale.build_house(session)
        open_id = session.query(InputConfig.id).filter_by(device_key=scale.input_key(1000)).scalar()
    presence = Presence()
    presence.seen("ioboard", [scale.input_key(i) for i in range(0, scale.INPUTS, 2)])
    app = create_app(settings, sessions, presence)
    # Login is measured elsewhere; only the work of each page is timed here.
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True)
    client = app.test_client()
    timings: dict[str, Any] = {}
    try:
        for page in SCALE_PAGES:
            url = page.format(open_id=open_id)
            took = []
            size = 0
            for _ in range(PAGE_REPEATS):
                start = time.perf_counter()
                response = client.get(url)
                took.append((time.perf_counter() - start) * 1000)
                size = len(response.data)
                if response.status_code != 200:
                    raise BenchError(f"GET {url} answered {response.status_code}")
            timings[page] = {"median_ms": round(sorted(took)[len(took) // 2], 1), "bytes": size}
    finally:
        engine.dispose()
    return {"inputs": scale.INPUTS, "outputs": scale.OUTPUTS, "decisions": scale.DECISIONS, "pages": timings}


def pages_report(pages: dict[str, Any] | None) -> list[str]:
    if pages is None:
        return []
    if "error" in pages:
        return ["", f"pages case: could not run: {pages['error']}"]
    lines = [
        "",
        f"pages with {pages['inputs']:,} inputs, {pages['outputs']} outputs, {pages['decisions']:,} decisions"
        f" (median of {PAGE_REPEATS}, server side):",
    ]
    for page, t in pages["pages"].items():
        lines.append(f"  {page:40}{t['median_ms']:>10.1f} ms{t['bytes'] / 1024:>10.0f} KiB")
    return lines


def delete_exchanges(*exchanges: str) -> None:
    """Remove this run's exchanges (and their _control twins) from the broker; best effort."""
    with contextlib.suppress(*BROKER_FAILURES):
        conn = connect()
        channel = conn.channel()
        for exchange in exchanges:
            for name in (exchange, f"{exchange}_control"):
                channel.exchange_delete(name)
        conn.close()


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def run_ratio(run: dict[str, Any]) -> float | None:
    hub_rate = _get(run["hub"], "throughput.rate")
    base_rate = _get(run["baseline"], "throughput.rate")
    return round(hub_rate / base_rate, 3) if hub_rate and base_rate else None


def median(values: list[float]) -> float | None:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _target(value: Any, target: float, at_least: bool = False) -> dict[str, Any]:
    met = None if value is None else (value >= target if at_least else value <= target)
    return {"value": value, "target": f"{'>=' if at_least else '<='} {target:g}", "met": met}


def evaluate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Targets 1-4 over the runs: median ratio, worst p99, worst RSS, worst start-up."""

    def worst(path: str) -> Any:
        values = [v for r in runs if (v := _get(r["hub"], path)) is not None]
        return max(values) if values else None

    ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
    ratio = median(ratios)
    soaked = [r["hub"]["soak"] for r in runs if "soak" in r["hub"]]
    return {
        "throughput_ratio": _target(None if ratio is None else round(ratio, 3), TARGET_RATIO, at_least=True),
        "p99_ms_at_200_per_s": _target(worst("latency.p99_ms"), TARGET_P99_MS),
        "rss_mb": _target(worst("rss_startup_mb"), TARGET_RSS_MB),
        "rss_soak_mb": _target(soaked[-1]["rss_after_mb"] if soaked else None, TARGET_RSS_SOAK_MB),
        "startup_s": _target(worst("startup_s"), TARGET_STARTUP_S),
    }


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _get(side: dict[str, Any], path: str) -> Any:
    value: Any = side
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


TABLE: list[tuple[str, tuple[str, ...], str, int]] = [
    ("start-up (healthy / READY)", ("startup_s",), " s", 2),
    ("throughput", ("throughput.rate",), " msg/s", 1),
    ("  publisher alone managed", ("throughput.publish_rate",), " msg/s", 1),
    ("  first publish -> last control", ("throughput.elapsed_s",), " s", 2),
    ("  received/missing/extra", ("throughput.received", "throughput.missing", "throughput.extra"), "", 0),
    ("  CPU time per activation", ("throughput.cpu_ms_per_msg",), " ms", 3),
    ("  audit backlog stored after", ("settle_s",), " s", 2),
    (f"latency p50 at {LATENCY_RATE}/s", ("latency.p50_ms",), " ms", 2),
    ("latency p95", ("latency.p95_ms",), " ms", 2),
    ("latency p99", ("latency.p99_ms",), " ms", 2),
    ("latency max", ("latency.max_ms",), " ms", 2),
    ("  publish rate achieved", ("latency.achieved_rate",), " /s", 1),
    ("  received/missing/extra", ("latency.received", "latency.missing", "latency.extra"), "", 0),
    ("RSS after start-up", ("rss_startup_mb",), " MB", 1),
    ("RSS after the run", ("rss_mb",), " MB", 1),
    ("peak RSS (VmHWM)", ("peak_rss_mb",), " MB", 1),
    ("SIGTERM -> exit", ("stop.seconds",), " s", 2),
    ("exit code", ("stop.exit_code",), "", 0),
    ("attempts (broker disruptions)", ("attempts",), "", 0),
]


# The MQTT table: the same rows, except that publish() only queues in paho, so when mosquitto had
# acknowledged the whole burst is shown too.
MQTT_TABLE = [
    *TABLE[:2],
    ("  paho publish() calls managed", ("throughput.publish_rate",), " msg/s", 1),  # queued, not sent
    ("  mosquitto acked them all after", ("throughput.all_acked_s",), " s", 2),
    *TABLE[3:],
]


def table(
    rows: list[tuple[str, tuple[str, ...], str, int]], hub: dict[str, Any], base: dict[str, Any]
) -> list[str]:
    lines = [f"{'':32}{'hub':>16}{'baseline':>16}"]
    for label, paths, unit, digits in rows:
        cells = [
            "/".join(_fmt(_get(side, p), "" if len(paths) > 1 else unit, digits) for p in paths)
            for side in (hub, base)
        ]
        lines.append(f"{label:32}{cells[0]:>16}{cells[1]:>16}")
    return lines


def mqtt_report(results: dict[str, Any]) -> list[str]:
    mq = results.get("mqtt")
    if mq is None:
        return []
    if "error" in mq:
        return ["", f"MQTT legs: could not run: {mq['error']}"]
    hub, base = mq["hub"], mq["baseline"]
    return [
        "",
        f"MQTT: {mq['boards']} adc-app boards x {mq['inputs_per_board']} inputs on {mq['topic']},"
        f" QoS {mq['qos']}, one paho publisher (window {mq['publish_window']}),"
        f" private mosquitto :{mq['broker']['port']}",
        f"throughput N = {mq['n']} activations (one active input each, cycling over {DEVICES} inputs);"
        f" latency at {LATENCY_RATE}/s for {LATENCY_SECONDS:.0f} s",
        "",
        *table(MQTT_TABLE, hub, base),
        "",
        f"delivery, hub (MQTT): {delivery(hub)}",
        f"delivery, baseline (MQTT): {delivery(base)}",
        f"MQTT hub/baseline throughput {_fmt(mq['throughput_ratio'], '', 3)} (information: no target)",
    ]


def runs_report(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run: the ratio, the latency percentiles, RSS and start-up."""
    lines = [
        f"{'run':>4}{'hub msg/s':>11}{'relay msg/s':>13}{'ratio':>7}{'p50 ms':>9}{'p99 ms':>10}{'max ms':>10}"
        f"{'RSS up MB':>11}{'RSS end MB':>12}{'start s':>9}{'load':>6}"
    ]
    for i, r in enumerate(runs, 1):
        hub, base = r["hub"], r["baseline"]
        lines.append(
            f"{i:>4}{_fmt(_get(hub, 'throughput.rate')):>11}{_fmt(_get(base, 'throughput.rate')):>13}"
            f"{_fmt(r['ratio'], '', 3):>7}{_fmt(_get(hub, 'latency.p50_ms'), '', 2):>9}"
            f"{_fmt(_get(hub, 'latency.p99_ms'), '', 2):>10}{_fmt(_get(hub, 'latency.max_ms'), '', 2):>10}"
            f"{_fmt(hub.get('rss_startup_mb')):>11}{_fmt(hub.get('rss_mb')):>12}"
            f"{_fmt(hub.get('startup_s'), '', 2):>9}{r['loadavg']:>6}"
        )
    return lines


def soak_report(runs: list[dict[str, Any]]) -> list[str]:
    soaked = [r["hub"]["soak"] for r in runs if "soak" in r["hub"]]
    if not soaked:
        return []
    s = soaked[-1]
    return [
        "",
        f"soak (last run's hub): {s['activations']:,} activations in all;"
        f" RSS {_fmt(s['rss_before_mb'], ' MB')} before the soak burst,"
        f" {_fmt(s['rss_after_mb'], ' MB')} after (peak {_fmt(s['peak_rss_mb'], ' MB')});"
        f" {_fmt(s['rate'])} msg/s, {s['missing']} missing, {s['extra']} extra"
        + (f" (disrupted: {s['error']})" if "error" in s else ""),
    ]


def report(results: dict[str, Any]) -> str:
    hub, base, targets = results["hub"], results["baseline"], results["targets"]
    lines = [
        "",
        f"event-processor bench {results['when']} ({results['cpus']} CPUs, load before {results['loadavg']})",
        f"throughput N = {results['n']} activations over {DEVICES} inputs;"
        f" latency at {LATENCY_RATE}/s for {LATENCY_SECONDS:.0f} s; {len(results['runs'])} run(s)",
        "",
        *runs_report(results["runs"]),
        *soak_report(results["runs"]),
        "",
        f"the median run (run {results['median_run']}) in detail:",
        *table(TABLE, hub, base),
    ]
    delivered = [
        f"run {i}: hub: {delivery(r['hub'])}; baseline: {delivery(r['baseline'])}"
        for i, r in enumerate(results["runs"], 1)
    ]
    lines += ["", "delivery:", *delivered]
    lines += ["", "targets:"]
    names = {
        "throughput_ratio": "hub/baseline throughput, median",
        "p99_ms_at_200_per_s": f"hub p99 at {LATENCY_RATE}/s, worst (ms)",
        "rss_mb": "hub RSS after start-up, worst",
        "rss_soak_mb": "hub RSS after the soak",
        "startup_s": "hub start-up, worst (s)",
        "flood_peak_rss_mb": "flood: hub peak RSS (MB)",
        "flood_p99_ms": "flood: legitimate p99 (ms)",
        "flood_all_delivered": "flood: all delivered",
    }
    for key, t in targets.items():
        value = _fmt(t["value"], "", 3 if key == "throughput_ratio" else 2)  # 0.497 must not read 0.50
        lines.append(f"  {names[key]:36}{value:>10}  {t['target']:>8}  {verdict(t['met'])}")
    lines += mqtt_report(results)
    lines += flood_report(results.get("flood"))
    lines += pages_report(results.get("pages"))
    lines += ["", results["summary"]]
    return "\n".join(lines)


def delivery(side: dict[str, Any]) -> str:
    """'exactly once' or what went wrong, over the throughput and latency legs."""
    missing = sum(_get(side, f"{leg}.missing") or 0 for leg in ("throughput", "latency"))
    extra = sum(_get(side, f"{leg}.extra") or 0 for leg in ("throughput", "latency"))
    if not missing and not extra:
        return "every activation produced exactly one control message"
    return f"{missing} activations produced no control message, {extra} control messages were extra"


def summary(results: dict[str, Any]) -> str:
    targets = results["targets"]
    met = sum(1 for t in targets.values() if t["met"])
    missed = [k for k, t in targets.items() if not t["met"]]
    return (
        f"SUMMARY: {met}/{len(targets)} targets met"
        + (f" (missed: {', '.join(missed)})" if missed else "")
        + f"; {len(results['runs'])} runs:"
        f" median {_fmt(targets['throughput_ratio']['value'], '', 3)}x baseline,"
        f" worst p99 {_fmt(targets['p99_ms_at_200_per_s']['value'], ' ms', 2)},"
        f" RSS after start-up {_fmt(targets['rss_mb']['value'], ' MB')},"
        f" after the soak {_fmt(targets['rss_soak_mb']['value'], ' MB')},"
        f" start-up {_fmt(targets['startup_s']['value'], ' s', 2)}"
    )


def mqtt_summary(results: dict[str, Any]) -> str:
    """Appended to the summary line: the MQTT figures, which have no target."""
    mq = results.get("mqtt")
    if mq is None:
        return ""
    if "error" in mq:
        return "; MQTT: could not run"
    return (
        f"; MQTT (no target): hub {_fmt(_get(mq['hub'], 'throughput.rate'))} msg/s"
        f" = {_fmt(mq['throughput_ratio'], '', 3)}x MQTT baseline,"
        f" p99 {_fmt(_get(mq['hub'], 'latency.p99_ms'), ' ms', 2)}"
    )


def guarded(name: str, run: Callable[[], dict[str, Any]], tmp: str) -> dict[str, Any]:
    """Run one case in its own folder; a failure is recorded and printed, the other figures stand."""
    print(f"{name} case ...", flush=True)
    (Path(tmp) / name).mkdir(exist_ok=True)
    try:
        return run()
    except BenchError as exc:
        print(f"bench: the {name} case could not run: {exc}", file=sys.stderr)
        return {"error": str(exc)}


def run_single(case: str) -> int:
    """`--case flood` or `--case pages`: that case alone, written to bench/results/<case>.json."""
    if case == "flood":
        try:
            connect().close()
        except pika.exceptions.AMQPError as exc:
            print(f"bench: cannot reach RabbitMQ on {BROKER_HOST}:{BROKER_PORT}: {exc!r}", file=sys.stderr)
            return 1
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="ep-bench-") as tmp:
            if case == "pages":
                results["pages"] = guarded("pages", lambda: run_pages(Path(tmp) / "pages"), tmp)
            else:
                broker = MqttBroker(Path(tmp))
                try:
                    broker.start()
                    results["flood"] = guarded(
                        "flood", lambda: run_flood(Path(tmp) / "flood", broker.port), tmp
                    )
                finally:
                    broker.stop()
    finally:
        delete_exchanges(*CREATED_EXCHANGES)
    lines = flood_report(results.get("flood")) + pages_report(results.get("pages"))
    targets = flood_targets(results.get("flood"))
    for key, t in targets.items():
        lines.append(f"  {key:30}{_fmt(t['value'], '', 2):>10}  {t['target']:>16}  {verdict(t['met'])}")
    results["targets"] = targets
    print("\n".join(lines))
    out = RESULTS.parent / f"{case}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"(figures in {out.relative_to(REPO)})")
    failed = any("error" in v for v in results.values() if isinstance(v, dict))
    return 1 if failed or any(t["met"] is False for t in targets.values()) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--n",
        type=int,
        help=f"activations per throughput leg (default: from the hub's warm-up rate, {MIN_N}-{MAX_N})",
    )
    parser.add_argument(
        "--mqtt-n",
        type=int,
        help=f"activations per MQTT throughput leg (default: from the hub's MQTT warm-up rate,"
        f" {MQTT_MIN_N}-{MAX_N})",
    )
    parser.add_argument(
        "--case",
        choices=("all", "flood", "pages"),
        default="all",
        help="all (default): every leg, the flood and the pages; flood or pages: that case alone",
    )
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=FLOOD_DEFAULT_RATE,
        help=f"flood messages a second per transport (default {FLOOD_DEFAULT_RATE:g}; 0: as fast as they go)",
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"hub + relay pairs (default {RUNS})")
    parser.add_argument(
        "--soak",
        type=int,
        default=SOAK,
        help=f"activations the last run's hub handles before RSS is taken again (default {SOAK}; 0: none)",
    )
    parser.add_argument("--no-mqtt", action="store_true", help="leave out the MQTT legs (no target)")
    parser.add_argument("--relay", metavar="EXCHANGE", help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-relay", metavar="EXCHANGE", help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.relay:
        return relay_main(args.relay)
    if args.mqtt_relay:
        return mqtt_relay_main(args.mqtt_relay, args.mqtt_port)
    FLOOD_RATE[0] = max(0.0, args.flood_rate)
    if args.case != "all":
        return run_single(args.case)
    started = time.perf_counter()
    try:
        connect().close()
    except pika.exceptions.AMQPError as exc:
        print(f"bench: cannot reach RabbitMQ on {BROKER_HOST}:{BROKER_PORT}: {exc!r}", file=sys.stderr)
        return 1
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
        "n": args.n,
        "n_source": "--n" if args.n else "hub warm-up rate",
    }
    mqtt_failed = False
    try:
        with tempfile.TemporaryDirectory(prefix="ep-bench-") as tmp:
            broker = MqttBroker(Path(tmp))
            try:
                broker.start()
                runs: list[dict[str, Any]] = []
                for i in range(1, max(args.runs, 1) + 1):
                    run: dict[str, Any] = {"loadavg": Path("/proc/loadavg").read_text().split()[0]}
                    (Path(tmp) / f"hub{i}").mkdir()
                    last = i == max(args.runs, 1)
                    print(f"run {i}: hub leg ...", flush=True)
                    run["hub"] = run_hub(
                        results["n"], Path(tmp) / f"hub{i}", broker.port, args.soak if last else 0
                    )
                    results["n"] = run["hub"]["n"]  # the first run's warm-up picks N for every run
                    print(f"run {i}: baseline leg ...", flush=True)
                    run["baseline"] = run_baseline(results["n"])
                    run["ratio"] = run_ratio(run)
                    runs.append(run)
                results["runs"] = runs
                by_ratio = sorted(range(len(runs)), key=lambda k: runs[k]["ratio"] or 0.0)
                middle = by_ratio[len(runs) // 2]
                results["median_run"] = middle + 1
                results["hub"], results["baseline"] = runs[middle]["hub"], runs[middle]["baseline"]
                if not args.no_mqtt:
                    (Path(tmp) / "mqtt-hub").mkdir()
                    try:
                        results["mqtt"] = run_mqtt(args.mqtt_n, Path(tmp) / "mqtt-hub", broker)
                    except BenchError as exc:  # the RabbitMQ figures still stand
                        mqtt_failed = True
                        tail = broker.log_tail()
                        results["mqtt"] = {"error": str(exc) + (f"; mosquitto log: {tail}" if tail else "")}
                        print(
                            f"bench: the MQTT legs could not run: {results['mqtt']['error']}", file=sys.stderr
                        )
                results["flood"] = guarded("flood", lambda: run_flood(Path(tmp) / "flood", broker.port), tmp)
                results["pages"] = guarded("pages", lambda: run_pages(Path(tmp) / "pages"), tmp)
            finally:
                broker.stop()
    except BenchError as exc:
        print(f"bench: could not run: {exc}", file=sys.stderr)
        return 1
    finally:
        delete_exchanges(*CREATED_EXCHANGES)
    results["targets"] = evaluate(results["runs"]) | flood_targets(results.get("flood"))
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["summary"] = summary(results) + mqtt_summary(results)
    print(report(results))
    print(f"(run took {results['duration_s']:.0f} s; figures in {RESULTS.relative_to(REPO)})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if mqtt_failed else 0


if __name__ == "__main__":
    sys.exit(main())
