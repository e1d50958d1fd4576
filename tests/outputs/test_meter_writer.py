"""MeterWriter against a real victoria-metrics: points arrive intact; outages are buffered and survived."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zmq

from app.core import channels, health
from app.core.settings import Settings
from app.outputs import meter_writer
from app.outputs.meter_writer import MeterWriter
from pylib import inproc, threads
from tests.support import free_port, wait_for
from tests.victoria import VictoriaMetrics

TOKEN = "influx-token-Zq81xKv"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry and batch delays short enough that a restarted server is noticed within a second."""
    monkeypatch.setattr(meter_writer, "RETRY_INITIAL", 0.1)
    monkeypatch.setattr(meter_writer, "RETRY_MAX", 0.5)
    monkeypatch.setattr(meter_writer, "FLUSH_INTERVAL", 0.1)


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A victoria-metrics on a free port, not started yet."""
    server = VictoriaMetrics(free_port(), tmp_path / "vm-data")
    yield server
    server.stop()


@pytest.fixture
def influx_settings(make_settings: Callable[..., Settings], vm: VictoriaMetrics) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        base = {
            "INFLUXDB_URL": vm.url,
            "INFLUXDB_TOKEN": TOKEN,
            "INFLUXDB_ORG": "home",
            "INFLUXDB_BUCKET": "meter",
        }
        base.update(env)
        return make_settings(**base)

    return make


@pytest.fixture
def push() -> Iterator[zmq.Socket]:
    """The processor's end. A send that would block fails after 10 s instead of hanging the test."""
    sock = inproc.connect_push(channels.METER_WRITER)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    yield sock
    sock.close(linger=0)


@pytest.fixture
def start_writer() -> Iterator[Callable[[Settings], MeterWriter]]:
    started: list[MeterWriter] = []

    def start(settings: Settings) -> MeterWriter:
        writer = MeterWriter(settings)
        writer.start()
        started.append(writer)
        return writer

    yield start
    threads.shutting_down.set()
    for writer in started:
        writer.join(timeout=10)
        assert not writer.is_alive(), "MeterWriter did not stop after shutdown"


def record_batches(writer: MeterWriter, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Wrap the writer's HTTP post to remember each batch InfluxDB accepted, in order."""
    accepted: list[list[str]] = []
    post = writer._post

    def recording(lines: list[str], **kwargs: object) -> None:
        post(lines, **kwargs)
        accepted.append(list(lines))

    monkeypatch.setattr(writer, "_post", recording)
    return accepted


def point(
    i: int, t0: float, device: str = "Electricity Meter", location: str | None = "Kitchen"
) -> channels.MeterPoint:
    return channels.MeterPoint(
        device_key=device,
        location=location,
        metered=float(i),
        register=1000.0 + i,
        reading=i / 10,
        timestamp=t0 + i,
    )


def state() -> str | None:
    return health.components().get("influxdb", {}).get("state")


def counter(name: str) -> int:
    return health.counters().get(f"influxdb.{name}", 0)


def assert_healthy(writer: MeterWriter) -> None:
    assert writer.is_alive()
    assert threads.failures() == []


def test_points_arrive_with_measurement_tags_fields_and_time(
    vm: VictoriaMetrics,
    influx_settings: Callable[..., Settings],
    start_writer: Callable[[Settings], MeterWriter],
    push: zmq.Socket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    urllib3_level = logging.getLogger("urllib3").level
    vm.start()
    writer = start_writer(influx_settings())
    assert logging.getLogger("urllib3").level == urllib3_level  # the client's global tweak undone
    t0 = math.floor(time.time()) - 120 + 0.25  # sub-second part must survive
    # noise first: none of it may stop the writer or the points behind it
    push.send(b"not msgpack")
    inproc.send(push, channels.MqttPublish(topic="x", payload=b"y"))
    inproc.send(push, channels.MeterPoint("Empty Meter", "Hall", None, None, None, t0))
    inproc.send(push, channels.MeterPoint("Electricity Meter", "Kitchen", 12, 123456.0, 123.456, t0))
    inproc.send(push, channels.MeterPoint("Water Meter", None, None, 42.5, None, t0 + 1))
    inproc.send(push, channels.MeterPoint("Gas Meter", "Garage", math.nan, None, 7.0, t0 + 2))

    elec = {"device_key": "Electricity Meter", "location": "Kitchen"}
    t0_ms = round(t0 * 1000)
    wait_for(
        lambda: vm.samples("meter_reading", device_key="Gas Meter", location="Garage"), what="points in VM"
    )
    wait_for(lambda: counter("written") == 3, what="written counter")
    assert vm.samples("meter_metered", **elec) == [(t0_ms, 12.0)]
    assert vm.samples("meter_register", **elec) == [(t0_ms, 123456.0)]
    assert vm.samples("meter_reading", **elec) == [(t0_ms, 123.456)]
    # a None location is left out rather than written as an empty or "None" tag
    assert vm.samples("meter_register", device_key="Water Meter") == [(t0_ms + 1000, 42.5)]
    assert vm.samples("meter_reading", device_key="Gas Meter", location="Garage") == [(t0_ms + 2000, 7.0)]
    series = set(vm.export())
    # nothing else: no point for the meter without fields, no NaN field, no extra labels
    assert series == {
        ("meter_metered", frozenset(elec.items())),
        ("meter_register", frozenset(elec.items())),
        ("meter_reading", frozenset(elec.items())),
        ("meter_register", frozenset({("device_key", "Water Meter")})),
        ("meter_reading", frozenset({("device_key", "Gas Meter"), ("location", "Garage")})),
    }
    assert counter("skipped") == 1
    assert counter("malformed") == 2
    assert state() == "ok"
    assert writer.buffered() == 0
    assert_healthy(writer)
    assert TOKEN not in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_points_sent_before_influxdb_starts_wait_and_arrive_in_order(
    vm: VictoriaMetrics,
    influx_settings: Callable[..., Settings],
    start_writer: Callable[[Settings], MeterWriter],
    push: zmq.Socket,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    writer = start_writer(influx_settings())
    accepted = record_batches(writer, monkeypatch)
    t0 = time.time() - 600
    sent = [point(i, t0) for i in range(20)]
    for p in sent:
        inproc.send(push, p)

    wait_for(lambda: state() == "unreachable", what="InfluxDB reported unreachable")
    wait_for(lambda: writer.buffered() == 20, what="20 points buffered")
    assert counter("failed_batches") >= 1
    assert counter("written") == 0

    vm.start()
    labels = {"device_key": "Electricity Meter", "location": "Kitchen"}
    wait_for(
        lambda: len(vm.samples("meter_metered", **labels)) == 20, timeout=20, what="buffered points in VM"
    )
    assert vm.samples("meter_metered", **labels) == [(round(p.timestamp * 1000), p.metered) for p in sent]
    assert [line for batch in accepted for line in batch] == [meter_writer.to_line(p) for p in sent]
    wait_for(lambda: state() == "ok", what="state ok again")
    assert writer.buffered() == 0
    assert counter("written") == 20
    assert counter("dropped") == 0
    assert_healthy(writer)
    assert TOKEN not in caplog.text
    assert any(
        r.levelno == logging.WARNING and "InfluxDB write failed" in r.getMessage() for r in caplog.records
    )


def test_points_sent_while_influxdb_is_stopped_mid_run_arrive_after_restart(
    vm: VictoriaMetrics,
    influx_settings: Callable[..., Settings],
    start_writer: Callable[[Settings], MeterWriter],
    push: zmq.Socket,
) -> None:
    vm.start()
    writer = start_writer(influx_settings())
    labels = {"device_key": "Electricity Meter", "location": "Kitchen"}
    t0 = time.time() - 900
    inproc.send(push, point(0, t0))
    wait_for(lambda: vm.samples("meter_metered", **labels), what="first point")
    wait_for(lambda: state() == "ok", what="state ok")

    vm.stop()
    for i in range(1, 11):
        inproc.send(push, point(i, t0))
    wait_for(lambda: state() == "unreachable", what="InfluxDB reported unreachable")
    wait_for(lambda: writer.buffered() == 10, what="10 points buffered")
    assert_healthy(writer)

    vm.start()  # same port, same data directory
    wait_for(lambda: len(vm.samples("meter_metered", **labels)) == 11, timeout=20, what="all 11 points")
    assert [v for _, v in vm.samples("meter_metered", **labels)] == [float(i) for i in range(11)]
    wait_for(lambda: writer.buffered() == 0, what="buffer emptied")
    assert state() == "ok"
    assert counter("written") == 11
    assert_healthy(writer)


def test_full_buffer_drops_the_oldest_counts_them_and_never_blocks_the_pusher(
    vm: VictoriaMetrics,
    influx_settings: Callable[..., Settings],
    start_writer: Callable[[Settings], MeterWriter],
    push: zmq.Socket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app.outputs.meter_writer")
    writer = start_writer(influx_settings(INFLUXDB_BUFFER_SIZE="50"))
    t0 = time.time() - 7200
    total = 5000  # well past both ends' ZeroMQ high-water marks (1000 each)
    for i in range(total):
        inproc.send(push, point(i, t0))  # would raise zmq.Again if the writer stopped draining

    wait_for(lambda: counter("dropped") == total - 50, what="the oldest points dropped")
    assert writer.buffered() == 50
    drop_warnings = [r for r in caplog.records if "is full, dropping the oldest" in r.getMessage()]
    assert len(drop_warnings) == 1  # at most one a minute, however many go
    assert drop_warnings[0].levelno == logging.WARNING

    vm.start()
    labels = {"device_key": "Electricity Meter", "location": "Kitchen"}
    wait_for(
        lambda: len(vm.samples("meter_metered", **labels)) == 50, timeout=20, what="the newest 50 points"
    )
    assert [v for _, v in vm.samples("meter_metered", **labels)] == [
        float(i) for i in range(total - 50, total)
    ]
    wait_for(lambda: counter("written") == 50, what="written counter")
    assert counter("dropped") == total - 50
    assert_healthy(writer)


def test_a_server_that_never_answers_does_not_hold_up_the_pusher_or_shutdown(
    make_settings: Callable[..., Settings],
    push: zmq.Socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(meter_writer, "WRITE_TIMEOUT_MS", 1_000)
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = make_settings(
            INFLUXDB_URL=url, INFLUXDB_TOKEN=TOKEN, INFLUXDB_ORG="home", INFLUXDB_BUCKET="meter"
        )
        writer = MeterWriter(settings)
        writer.start()
        t0 = time.time() - 300
        for i in range(3000):
            inproc.send(push, point(i, t0))
        wait_for(lambda: writer.buffered() == 3000, what="all points taken off the socket")
        wait_for(lambda: state() == "unreachable", what="the timeout reported")
        assert "timed out" in (health.components()["influxdb"]["detail"] or "")
        assert_healthy(writer)

        threads.shutting_down.set()
        writer.join(timeout=10)
        assert not writer.is_alive()
        assert state() == "down"


def test_points_pushed_just_before_shutdown_are_flushed(
    vm: VictoriaMetrics,
    influx_settings: Callable[..., Settings],
    push: zmq.Socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(meter_writer, "FLUSH_INTERVAL", 30.0)  # only the shutdown flush can write them
    vm.start()
    writer = MeterWriter(influx_settings())
    writer.start()
    t0 = time.time() - 60
    for i in range(5):
        inproc.send(push, point(i, t0))
    wait_for(lambda: writer.buffered() == 5, what="points received")

    threads.shutting_down.set()
    writer.join(timeout=10)
    assert not writer.is_alive()
    labels = {"device_key": "Electricity Meter", "location": "Kitchen"}
    assert len(vm.samples("meter_metered", **labels)) == 5
    assert counter("written") == 5


class RefusingInflux:
    """An InfluxDB stand-in that answers 401 to a wrong token and 400 to a batch naming a Poison meter."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.token = TOKEN
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if self.headers.get("Authorization") != f"Token {outer.token}":
                    status = 401
                elif "Poison" in body:
                    status = 400
                else:
                    status = 204
                    outer.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_wrong_token_keeps_points_and_refused_data_is_dropped_not_retried_forever(
    make_settings: Callable[..., Settings],
    start_writer: Callable[[Settings], MeterWriter],
    push: zmq.Socket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    influx = RefusingInflux()
    try:
        influx.token = "another-token"
        settings = make_settings(
            INFLUXDB_URL=influx.url, INFLUXDB_TOKEN=TOKEN, INFLUXDB_ORG="home", INFLUXDB_BUCKET="meter"
        )
        writer = start_writer(settings)
        t0 = time.time() - 60
        inproc.send(push, point(0, t0))
        wait_for(lambda: counter("failed_batches") >= 2, what="401 retried")
        assert health.components()["influxdb"]["detail"] == "HTTP 401 Unauthorized (check INFLUXDB_TOKEN)"
        assert writer.buffered() == 1  # a configuration fault: the point waits

        influx.token = TOKEN
        wait_for(lambda: counter("written") == 1, what="written once the token is accepted")
        inproc.send(push, point(1, t0, device="Poison Meter"))
        wait_for(lambda: counter("rejected") == 1, what="refused batch dropped")
        inproc.send(push, point(2, t0))
        wait_for(lambda: counter("written") == 2, what="the next point goes through")
        assert writer.buffered() == 0
        assert len(influx.bodies) == 2 and all("Poison" not in b for b in influx.bodies)
        assert_healthy(writer)
        assert TOKEN not in caplog.text
    finally:
        influx.close()
