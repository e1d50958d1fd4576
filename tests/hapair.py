"""A standby pair for tests and the take-over bench: hub processes on one PostgreSQL database and broker.

Everything here is real: `python -m app` processes, the local RabbitMQ, a fresh PostgreSQL
database. A Firing thread publishes numbered activations of one input (as remote-monitor does) and
a Collector thread records every control message; `account` says what became of each activation.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pika
import psycopg
from sqlalchemy import select

from app.core.settings import config_defaults
from app.store import db
from app.store.models import Decision, InputConfig, OutputConfig, OutputLink
from pylib import wire
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ORIGIN = "pairbench"
NOTIFY_KEY = f"event.notify.ioboard.{ORIGIN}"
CONTROL_KEY = "event.control.tts"
INPUT = {
    "name": "Front Door",
    "type": "Contact",
    "location": "Hall",
    "device_key": "Front Door Contact (Hall)",
    "device_label": "Front Door",
}
# a second input with the default 60 s latch: its latch must survive a take-over
LATCHED = {
    "name": "Back Door",
    "type": "Contact",
    "location": "Kitchen",
    "device_key": "Back Door Contact (Kitchen)",
    "device_label": "Back Door",
}
OUTPUT_KEY = "Hall Speaker TTS"
_run = uuid.uuid4().hex[:8]
_counter = iter(range(1_000_000))


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A new uniquely named PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    name = f"ep_pair_{_run}_{next(_counter)}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(url: str) -> None:
    """Migrate, and configure the input enabled without a latch, linked to one TTS output."""
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        with db.session_factory(engine)() as session:
            inp = InputConfig(
                device_key=INPUT["device_key"],
                device_label=INPUT["device_label"],
                device_type=INPUT["type"],
                device_enabled=True,
                activation_interval=0,
            )
            latched = InputConfig(
                device_key=LATCHED["device_key"],
                device_label=LATCHED["device_label"],
                device_type=LATCHED["type"],
                device_enabled=True,
                activation_interval=60,
            )
            out = OutputConfig(device_key=OUTPUT_KEY, device_label="Hall Speaker", device_type="TTS")
            session.add_all([inp, latched, out])
            session.flush()
            session.add(OutputLink(input_device_id=inp.id, output_device_id=out.id))
            session.add(OutputLink(input_device_id=latched.id, output_device_id=out.id))
            session.commit()
    finally:
        engine.dispose()


def decisions(url: str, input_key: str = INPUT["device_key"]) -> list[tuple[str | None, bool, str | None]]:
    """(event_detail, fired, reason) of every decision the pair recorded for one input."""
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as session:
            query = select(Decision.event_detail, Decision.fired, Decision.reason)
            rows = session.execute(query.where(Decision.input_key == input_key).order_by(Decision.id)).all()
            return [(d, bool(f), r) for d, f, r in rows]
    finally:
        engine.dispose()


def read_token(url: str, username: str = "admin") -> str:
    """A read-only API token for the pair's admin: /api/health shows its components only after login."""
    from app.web import auth  # the web package only for the tests that ask for a token

    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as session:
            return auth.create_token(session, username, f"ha-test-{uuid.uuid4().hex[:6]}", role="read")
    finally:
        engine.dispose()


def delete_queue(name: str) -> None:
    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
        try:
            conn.channel().queue_delete(name)
        finally:
            conn.close()


def hub_env(url: str, exchange: str, node: str, port: int, workdir: Path, **extra: str) -> dict[str, str]:
    """Every setting at its default, whatever this shell exports, plus the pair's."""
    settings = set(config_defaults())
    env = {k: v for k, v in os.environ.items() if k not in settings and not k.startswith("OUTPUT_TYPE_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        DATABASE_URL=url,
        RABBITMQ_EXCHANGE=exchange,
        APP_FLASK_HTTP_PORT=str(port),
        APP_FLASK_BIND_ADDRESS="127.0.0.1",
        HA_ENABLED="true",
        HA_NODE_NAME=node,
        HA_NODE_URL=f"http://127.0.0.1:{port}/",
        BACKUP_STATUS_PATH=str(workdir / f"{node}-backup.json"),
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


@dataclass
class HubProcess:
    """One hub of the pair as a real process."""

    node: str
    url: str
    exchange: str
    workdir: Path
    extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.node}.log"

    def start(self) -> None:
        self.starts += 1
        env = hub_env(self.url, self.exchange, self.node, self.port, self.workdir, **self.extra)
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app"], cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lease release, no acks; the kernel closes its sockets."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def health(self, timeout: float = 1.0, token: str | None = None) -> dict[str, Any] | None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/health")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read() or b"null")
        except (OSError, ValueError):
            return None

    def role(self) -> str | None:
        body = self.health()
        return body.get("ha", {}).get("role") if body else None

    def wait_role(self, role: str, timeout: float = 30.0, poll: float = 0.02) -> float:
        """Seconds until /api/health shows this role; raises on timeout or exit."""
        start = time.monotonic()
        while self.role() != role:
            if not self.alive():
                raise RuntimeError(
                    f"{self.node} exited ({self.proc and self.proc.returncode}): {self.tail()}"
                )
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{self.node} not {role} after {timeout:.0f} s: {self.tail()}")
            time.sleep(poll)
        return time.monotonic() - start

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def publish(channel: Any, exchange: str, device: dict[str, str], detail: str) -> None:
    """One activation of device, stamped now, as remote-monitor's notify message carries it."""
    active = dict(device, sample_value=1, event_detail=detail)
    data = {"samples": {device["device_key"]: 1}, "active_devices": [active]}
    body = wire.make_payload(data, datetime.fromtimestamp(time.time(), UTC))
    channel.basic_publish(exchange, NOTIFY_KEY, body)


def publish_now(exchange: str, device: dict[str, str], detail: str) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange, exchange_type="topic")
        publish(channel, exchange, device, detail)
    finally:
        conn.close()


class Firing(threading.Thread):
    """Publishes activation i of the input (event_detail a<i>), `rate` a second, as remote-monitor does."""

    def __init__(self, exchange: str, rate: float) -> None:
        super().__init__(name="Firing", daemon=True)
        self.exchange = exchange
        self.interval = 1.0 / rate
        self.sent: list[tuple[str, float]] = []  # (detail, unix time published)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def publish_one(self, channel: Any, detail: str) -> None:
        publish(channel, self.exchange, INPUT, detail)
        self.sent.append((detail, time.time()))

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
            channel = conn.channel()
            channel.exchange_declare(self.exchange, exchange_type="topic")
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                self.publish_one(channel, f"a{len(self.sent):05d}")
                next_at += self.interval
                conn.process_data_events(time_limit=max(0.0, next_at - time.monotonic()))
            conn.close()
        except BaseException as exc:  # reported by the test, never swallowed
            self.error = exc


class Collector(threading.Thread):
    """Binds a queue on <exchange>_control for the TTS key and records every control message."""

    def __init__(self, exchange: str) -> None:
        super().__init__(name="Collector", daemon=True)
        self.exchange = f"{exchange}_control"
        self.received: list[tuple[str, float]] = []  # (event detail, unix time received)
        self.ready = threading.Event()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
            channel = conn.channel()
            channel.exchange_declare(self.exchange, exchange_type="direct")
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, self.exchange, routing_key=CONTROL_KEY)
            channel.basic_consume(queue, self._on_message, auto_ack=True)
            self.ready.set()
            while not self.stop_event.is_set():
                conn.process_data_events(time_limit=0.05)
            conn.close()
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def _on_message(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        data = msgpack.unpackb(body)["data"]
        message = str(data[3])  # [key, label, params, "<input label> <detail>"]
        self.received.append((message.rsplit(" ", 1)[-1], time.time()))


def account(
    sent: list[str], received: list[str], recorded: list[tuple[str | None, bool, str | None]]
) -> dict:
    """What became of each activation: fired once, fired more than once, recorded stale, or missing."""
    fired = Counter(received)
    stale = {d for d, f, r in recorded if not f and r == "stale"}
    other = {d: r for d, f, r in recorded if not f and r != "stale"}
    once = [d for d in sent if fired[d] == 1]
    twice = [d for d in sent if fired[d] > 1]
    stale_only = [d for d in sent if not fired[d] and d in stale]
    missing = [d for d in sent if not fired[d] and d not in stale]
    return {
        "sent": len(sent),
        "fired_once": len(once),
        "fired_more": twice,
        "stale": stale_only,
        "missing": missing,
        "blocked_other": {d: other[d] for d in missing if d in other},
        "unexpected": sorted(set(fired) - set(sent)),
    }
