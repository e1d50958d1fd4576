"""The hub as a process: start-up, bad settings, signals, thread death and broker reconnects."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from pathlib import Path

import pytest

from app import __main__ as entry
from app.core import health
from app.store import db
from app.web import auth
from pylib import threads
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.sources.test_rabbit_source import close_connection_named
from tests.support import wait_for
from tests.test_hub_e2e import FRONT, IOBOARD_HEARTBEAT, arm, notify

ROOT = Path(__file__).resolve().parent.parent


def hub_env(tmp_path: Path, unique: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "TABLESPACE", "DATABASE_URL"))
    }
    env.update(
        RABBITMQ_EXCHANGE=unique,
        TABLESPACE_PATH=str(tmp_path / "hub.db"),
        APP_FLASK_HTTP_PORT="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def test_bad_setting_stops_startup_with_a_line_naming_it(tmp_path, unique_name) -> None:
    for name, value in [
        ("RABBITMQ_SERVER_ADDRESS", "broker:notaport"),
        ("APP_FLASK_HTTP_PORT", "eighty"),
        ("USER_TZ", "Mars/Olympus"),
        ("MAX_MESSAGE_VALIDITY_SECONDS", "-5"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "app"],
            cwd=tmp_path,
            env={**hub_env(tmp_path, unique_name("ep")), name: value, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], lines


def test_in_a_container_a_bad_setting_waits_before_exit_2_and_sigterm_ends_the_wait(
    tmp_path, unique_name
) -> None:
    # The image sets BAD_SETTING_EXIT_DELAY_SECONDS=30 so a restart policy cannot spin on a bad setting.
    env = {**hub_env(tmp_path, unique_name("ep")), "USER_TZ": "Mars/Olympus", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=tmp_path,
        env={**env, "BAD_SETTING_EXIT_DELAY_SECONDS": "0.2"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "USER_TZ" in lines[0] and lines[1:] == [
        "event-processor: exiting 2 in 0.2 s (BAD_SETTING_EXIT_DELAY_SECONDS)"
    ]

    # docker stop during the wait: exit 2 at once, not after the hour
    waiting = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=tmp_path,
        env={**env, "BAD_SETTING_EXIT_DELAY_SECONDS": "3600"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        assert "USER_TZ" in waiting.stderr.readline()
        assert "exiting 2 in 3600 s" in waiting.stderr.readline()
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=20) == 2
    finally:
        waiting.kill()
        waiting.wait()


def test_sigterm_shuts_down_cleanly_with_exit_zero(tmp_path, unique_name) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=tmp_path,
        env={**hub_env(tmp_path, unique_name("ep")), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = None
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"API on [\d.]+:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "hub never reported start-up"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as resp:
            assert json.loads(resp.read())["ready"] is True
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert (tmp_path / "hub.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_dying_makes_the_process_exit_one() -> None:
    class Doomed(threads.AppThread):
        def work(self) -> None:
            raise RuntimeError("boom")

    class FakeHub:
        stopped = False

        def stop(self) -> None:
            FakeHub.stopped = True

    Doomed("Doomed").start()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(entry.run(FakeHub(), nanny_interval=0.05)))
    runner.start()
    runner.join(timeout=10)
    assert result == [1] and FakeHub.stopped


def test_signal_path_exits_zero() -> None:
    class FakeHub:
        def stop(self) -> None:
            pass

    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(entry.run(FakeHub(), nanny_interval=0.05)))
    runner.start()
    threads.shutting_down.set()
    runner.join(timeout=10)
    assert result == [0]


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    class Node:
        me: object = None

    threshold = gc.get_threshold()
    node = Node()
    node.me = node  # a cycle left over from start-up: collected, not frozen
    ref = weakref.ref(node)
    del node
    try:
        entry.tune_gc()
        assert ref() is None
        assert gc.get_freeze_count() > 1000  # the modules, classes and functions imported so far
        assert gc.get_threshold() == (entry.GC_GEN0_THRESHOLD, threshold[1], threshold[2])
        assert gc.get_count()[2] == 0  # the old generation was emptied into the frozen one
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_hub_reconnects_after_broker_closes_its_connections(make_settings) -> None:
    settings = make_settings()
    hub = start_hub(settings)
    device = Device(settings)
    consumer = ControlConsumer(settings)
    api = Api(hub)
    try:
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(lambda: any(d["device_key"] == FRONT for d in api.get("/api/devices")["inputs"]))
        arm(api, activation_interval=0)
        device.publish("event.notify.ioboard.pi-hallway", notify())
        consumer.wait(1)
        device.close()
        consumer.close()
        # Only this hub's connections: the broker is shared, and close_all_connections would also cut
        # every other test's (and any running hub's) connections.
        exchange = settings.rabbitmq_exchange
        close_connection_named(f"{settings.app_name} RabbitSource {exchange}")
        close_connection_named(f"{settings.app_name} ControlPublisher {exchange}_control")
        device = Device(settings)
        consumer = ControlConsumer(settings)

        def delivered() -> bool:
            # The source re-binds a new exclusive queue after reconnecting; until then a message is lost
            # at the broker, so keep activating (no latch) until one gets through.
            device.publish("event.notify.ioboard.pi-hallway", notify())
            consumer.pump(0.5)
            return bool(consumer.received)

        wait_for(delivered, timeout=45)
        assert consumer.received[0][2]["data"] == ["Hallway Buzzer", 0]
        assert health.components()["rabbitmq_source"]["state"] == "connected"
        assert all(t.is_alive() for t in threads.tracked())
    finally:
        device.close()
        consumer.close()
        hub.stop()


def test_malloc_trim_runs_once_the_hub_goes_quiet_after_enough_events() -> None:
    count = [0]
    trims: list[int] = []
    trimmer = entry.MallocTrim(lambda: count[0], lambda: trims.append(count[0]), after_events=100)
    assert not trimmer.tick()  # nothing happened
    count[0] = 50
    assert not trimmer.tick() and not trimmer.tick()  # busy, then quiet: too few events to bother
    count[0] = 500
    assert not trimmer.tick()  # still busy
    assert trimmer.tick() and trims == [500]  # quiet after a burst: trimmed once
    assert not trimmer.tick()  # and not again until the next burst
    count[0] = 650
    assert not trimmer.tick() and trimmer.tick() and trims == [500, 650]
    assert entry.MallocTrim(lambda: 0).tick() is False  # glibc's own trim, when there is nothing to do


def make_run_command() -> tuple[dict[str, str], list[str]]:
    """The environment and python arguments `make run` starts the hub with (the Makefile's run recipe)."""
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    line = next(line.strip() for line in recipe.group(1).splitlines() if "-m app" in line)
    words = line.split()
    python = next(i for i, word in enumerate(words) if word.endswith("/python"))
    return dict(word.split("=", 1) for word in words[:python]), [sys.executable, *words[python + 1 :]]


def raw_health(port: int, extra_headers: str = "") -> tuple[str, list[str], bytes]:
    """GET /api/health over a plain socket: (status line, header lines without Date, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"GET /api/health HTTP/1.1\r\nHost: hub\r\n{extra_headers}Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    status, *headers = head.decode("latin-1").split("\r\n")
    return status, sorted(h for h in headers if not h.startswith("Date:")), body


def flask_loaded(pid: int) -> bool:
    """Whether the process has loaded MarkupSafe's C module, which Flask (via Jinja and Werkzeug) imports."""
    return "markupsafe/_speedups" in Path(f"/proc/{pid}/maps").read_text()


def test_the_hub_as_make_run_starts_it_needs_no_flask_for_health_and_fires_an_output(
    tmp_path: Path, unique_name, make_settings
) -> None:
    env, argv = make_run_command()
    assert env == {"PYTHONOPTIMIZE": "2"}  # python -OO, as the image runs it (Dockerfile ENV)
    exchange = unique_name("ep")
    settings = make_settings(RABBITMQ_EXCHANGE=exchange)
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env={**hub_env(tmp_path, exchange), "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            output.append(line)
            match = re.search(r"API on [\d.]+:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "hub never reported start-up:\n" + "".join(output)
        reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
        reader.start()
        wait_for(lambda: json.loads(raw_health(port)[2])["status"] == "ok", 30, 0.1, "every component up")
        # Anonymous health (the container's check) comes from app.web.lazy: no Flask in the process yet.
        light = raw_health(port)
        assert light[0] == "HTTP/1.1 200 OK" and not flask_loaded(proc.pid)
        # A cookie that is no session: still anonymous, but Flask answers it (and is loaded for it).
        full = raw_health(port, "Cookie: unrelated=1\r\n")
        assert flask_loaded(proc.pid)
        assert light == full

        # an activation, end to end, in the hub started as `make run` starts it
        engine = db.make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
        try:
            with db.session_factory(engine)() as session:
                token = auth.create_token(session, settings.admin_user, "make run")
        finally:
            engine.dispose()
        api = Api.__new__(Api)
        api.base, api.token = f"http://127.0.0.1:{port}", token
        device, consumer = Device(settings), ControlConsumer(settings)
        try:
            device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
            wait_for(lambda: any(d["device_key"] == FRONT for d in api.get("/api/devices")["inputs"]), 20)
            arm(api, activation_interval=0)
            device.publish("event.notify.ioboard.pi-hallway", notify())
            routing_key, _props, _body = consumer.wait(1, timeout=20)[0]
            assert routing_key == "event.control.ioboard"
        finally:
            device.close()
            consumer.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in "".join(output), "".join(output)
