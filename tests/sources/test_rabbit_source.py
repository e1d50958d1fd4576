"""RabbitSource against the local RabbitMQ: real client bodies in, Envelopes out, faults survived."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import msgpack
import pika
import pytest
import zmq

from app.core import channels, health
from app.core.settings import Settings
from app.sources.rabbit_source import RabbitSource
from pylib import inproc, threads, wire
from tests.support import free_port, wait_for

BROKER = ("127.0.0.1", 5672)


# --- helpers shared with test_control_publisher ---------------------------------------------------


def close_connection_named(name: str, timeout: float = 10.0) -> None:
    """Force-close one broker connection by its connection_name, as `rabbitmqctl close_all_connections`
    would, without disturbing other tests that share the broker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        pids = [line.split("\t")[0] for line in out.splitlines() if f'"{name}"' in line]
        if pids:
            for pid in pids:
                subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"], timeout=30, check=True)
            return
        time.sleep(0.2)
    pytest.fail(f"no broker connection named {name!r}")


class Forwarder:
    """A TCP relay from a local port to the broker, so a test can make the broker vanish and return."""

    def __init__(self, port: int, target: tuple[str, int] = BROKER) -> None:
        self.port = port
        self.target = target
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> Forwarder:
        self._stopped.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Close the port and cut every relayed connection, like a broker host dropping off the LAN."""
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class Publisher:
    """A device-side client: declares the exchange the way remote-monitor does and publishes bodies."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(*BROKER))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange=exchange, exchange_type="topic")

    def publish(self, routing_key: str, body: bytes) -> None:
        self.channel.basic_publish(exchange=self.exchange, routing_key=routing_key, body=body)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def pull() -> Iterator[zmq.Socket]:
    """The HeartbeatFilter end, bound before the source starts (the PULL side binds)."""
    sock = inproc.bind_pull(channels.HEARTBEAT_FILTER)
    yield sock
    sock.close(linger=0)


@pytest.fixture
def publisher_for() -> Iterator[Callable[[str], Publisher]]:
    made: list[Publisher] = []

    def make(exchange: str) -> Publisher:
        pub = Publisher(exchange)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()


@pytest.fixture
def running(
    make_settings: Callable[..., Settings], publisher_for: Callable[[str], Publisher], pull: zmq.Socket
) -> Callable[..., tuple[RabbitSource, Publisher]]:
    """Start a RabbitSource on a fresh exchange, wait until it consumes, return it with a publisher."""

    def start(**env: str) -> tuple[RabbitSource, Publisher]:
        settings = make_settings(**env)
        source = RabbitSource(settings)
        source.start()
        wait_for(source.connected.is_set, what="RabbitSource to connect")
        return source, publisher_for(settings.rabbitmq_exchange)

    return start


def next_envelope(sock: zmq.Socket, timeout_ms: int = 10000) -> channels.Envelope:
    env = inproc.recv(sock, timeout_ms=timeout_ms)
    assert env is not None, "no Envelope arrived"
    assert isinstance(env, channels.Envelope)
    return env


TS = "2023-11-25T09:07:07.123456+0000"
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
            }
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


# --- tests ---------------------------------------------------------------------------------------


def test_remote_monitor_heartbeat_arrives_as_envelope(running, pull) -> None:
    source, pub = running()
    before = time.time()
    body = wire.make_payload(IOBOARD_HEARTBEAT)
    pub.publish("event.heartbeat.ioboard.pi-1", body)

    env = next_envelope(pull)
    assert env.origin == "ioboard"
    assert env.source == "rabbitmq"
    assert env.routing_key == "event.heartbeat.ioboard.pi-1"
    assert env.received_at >= before - 1
    assert env.payload["data"] == IOBOARD_HEARTBEAT
    assert env.payload["timestamp"] == msgpack.unpackb(body)["timestamp"]
    wait_for(lambda: health.counters().get("rabbitmq_source.received") == 1, what="received counter")
    assert health.components()["rabbitmq_source"]["state"] == "connected"
    assert source.is_alive()


def test_snapshot_heartbeat_with_three_part_key(running, pull) -> None:
    _, pub = running()
    pub.publish("event.heartbeat.snapshot", msgpack.packb({"timestamp": TS, "data": SNAPSHOT_HEARTBEAT}))

    env = next_envelope(pull)
    assert env.origin == "snapshot"
    assert env.payload == {"timestamp": TS, "data": SNAPSHOT_HEARTBEAT}


def test_dec_2023_flat_layout_is_normalised_under_data(running, pull) -> None:
    _, pub = running()
    flat = {"timestamp": TS, **IOBOARD_HEARTBEAT, "inputs": [], "outputs": []}
    pub.publish("event.heartbeat.ioboard.pi-1", msgpack.packb(flat))

    env = next_envelope(pull)
    assert env.payload["timestamp"] == TS
    assert env.payload["data"]["device_info"] == IOBOARD_HEARTBEAT["device_info"]
    assert env.payload["data"]["statistics"] == {"sample_count": 123456}
    assert "timestamp" not in env.payload["data"]


def test_jpeg_bytes_survive_as_bytes(running, pull) -> None:
    _, pub = running()
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 400  # ~100 KB, every byte value
    data = {
        "active_devices": [
            {
                "device_key": "Front Camera",
                "device_label": "Front Camera",
                "type": "camera",
                "image": jpeg,
                "event_detail": "1 person(s) and 7 things",
            }
        ],
        "storage_url": None,
        "storage_path": "/data/ftp/uploads/snapshots/front/fetch_front-camera_1700903227.jpg",
    }
    pub.publish("event.notify.snapshot.snapshot-processor.image", wire.make_payload(data))

    env = next_envelope(pull)
    assert env.origin == "snapshot"
    image = env.payload["data"]["active_devices"][0]["image"]
    assert isinstance(image, bytes)
    assert image == jpeg
    assert env.payload["data"]["storage_url"] is None


def test_two_part_key_is_ignored_and_counted(running, pull) -> None:
    source, pub = running()
    pub.publish("event.heartbeat", wire.make_payload(SNAPSHOT_HEARTBEAT))
    pub.publish("event.heartbeat.snapshot", wire.make_payload(SNAPSHOT_HEARTBEAT))

    env = next_envelope(pull)
    assert env.routing_key == "event.heartbeat.snapshot"  # the 2-part one produced nothing
    wait_for(lambda: health.counters().get("rabbitmq_source.ignored") == 1, what="ignored counter")
    assert inproc.recv(pull, timeout_ms=200) is None
    assert source.is_alive()


def test_malformed_bodies_are_counted_and_the_source_carries_on(running, pull, caplog) -> None:
    source, pub = running(RABBITMQ_MAX_MESSAGE_BYTES="1024")
    oversize = wire.make_payload({"blob": b"x" * 5000})
    bad = [
        b"\xc1\xc1 not msgpack at all \x00\xff",  # 0xc1 is never valid msgpack
        msgpack.packb([1, 2, 3]),
        msgpack.packb({1: "x", "timestamp": TS}),
        msgpack.packb({"timestamp": TS, "data": "a string"}),
        msgpack.packb({"timestamp": [2023, 11, 25], "data": {}}),
        oversize,
    ]
    caplog.set_level(logging.WARNING, logger="app.sources.rabbit_source")
    for body in bad:
        pub.publish("event.notify.ioboard.pi-1", body)
    pub.publish("event.heartbeat.ioboard.pi-1", wire.make_payload(IOBOARD_HEARTBEAT))

    env = next_envelope(pull)
    assert env.payload["data"] == IOBOARD_HEARTBEAT
    assert health.counters().get("rabbitmq_source.malformed") == len(bad)
    assert source.is_alive() and source.connected.is_set()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(bad)
    assert all("event.notify.ioboard.pi-1" in w for w in warnings)
    # the oversize body is previewed, never logged whole
    assert any("(5" in w and "bytes)" in w for w in warnings)
    assert all(len(w) < 1000 for w in warnings)


def test_reconnects_after_the_broker_closes_the_connection(running, pull) -> None:
    source, pub = running()
    pub.publish("event.heartbeat.snapshot", wire.make_payload(SNAPSHOT_HEARTBEAT))
    next_envelope(pull)

    close_connection_named(f"{source.settings.app_name} RabbitSource {source.settings.rabbitmq_exchange}")
    wait_for(lambda: source.connect_count >= 2 and source.connected.is_set(), what="a reconnect")
    pub.publish("event.heartbeat.ioboard.pi-1", wire.make_payload(IOBOARD_HEARTBEAT))

    env = next_envelope(pull)
    assert env.origin == "ioboard"
    assert source.is_alive()


def test_broker_down_at_start_is_retried_until_it_appears(make_settings, publisher_for, pull) -> None:
    port = free_port()
    settings = make_settings(RABBITMQ_SERVER_ADDRESS=f"127.0.0.1:{port}")
    source = RabbitSource(settings)
    source.start()
    wait_for(
        lambda: health.components().get("rabbitmq_source", {}).get("state") == "down",
        what="the source to report the broker down",
    )
    time.sleep(0.7)  # let it fail more than once
    assert source.is_alive()
    assert not source.connected.is_set()
    assert health.components()["rabbitmq_source"]["state"] in ("down", "connecting")

    forwarder = Forwarder(port).start()
    try:
        wait_for(source.connected.is_set, timeout=20, what="the source to connect through the forwarder")
        assert health.components()["rabbitmq_source"]["state"] == "connected"
        pub = publisher_for(settings.rabbitmq_exchange)
        pub.publish("event.heartbeat.snapshot", wire.make_payload(SNAPSHOT_HEARTBEAT))
        assert next_envelope(pull).origin == "snapshot"
    finally:
        threads.shutting_down.set()
        source.join(timeout=5)
        forwarder.stop()


def test_stops_soon_after_shutdown(running) -> None:
    source, _ = running()
    threads.shutting_down.set()
    source.join(timeout=3)
    assert not source.is_alive()
    assert threads.failures() == []
