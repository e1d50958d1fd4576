"""Helpers for end-to-end tests: an in-process hub, a device publisher and a control-message consumer."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgpack
import pika

from app.core import health
from app.core.settings import Settings
from app.hub import Hub
from app.web import auth
from pylib import wire
from tests.support import wait_for


def connection() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))


class Device:
    """Publishes on the event exchange exactly as remote-monitor and snapshot-processor do."""

    def __init__(self, settings: Settings) -> None:
        self.exchange = settings.rabbitmq_exchange
        self.conn = connection()
        self.channel = self.conn.channel()
        self.channel.exchange_declare(self.exchange, exchange_type="topic")

    def publish(
        self, routing_key: str, data: Any = None, body: bytes | None = None, when: Any = None
    ) -> None:
        payload = body if body is not None else wire.make_payload(data, when)
        self.channel.basic_publish(self.exchange, routing_key, payload)

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


class ControlConsumer:
    """Binds an exclusive queue on <exchange>_control, as remote-monitor and snapshot-processor do."""

    def __init__(self, settings: Settings, keys: tuple[str, ...] = ("event.control.ioboard",)) -> None:
        self.conn = connection()
        self.channel = self.conn.channel()
        exchange = settings.control_exchange
        self.channel.exchange_declare(exchange, exchange_type="direct")
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        for key in keys:
            self.channel.queue_bind(self.queue, exchange, routing_key=key)
        self.received: list[tuple[str, pika.BasicProperties, dict]] = []
        self.channel.basic_consume(self.queue, self._on_message, auto_ack=True)

    def _on_message(self, _ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.received.append((method.routing_key, props, msgpack.unpackb(body)))

    def pump(self, seconds: float = 0.1) -> None:
        self.conn.process_data_events(time_limit=seconds)

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[str, pika.BasicProperties, dict]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            self.pump(0.05)
        assert len(self.received) >= count, f"got {len(self.received)} control messages, wanted {count}"
        return self.received

    def quiet(self, seconds: float = 1.0) -> list:
        """Pump for a while and return everything received (to check nothing more arrives)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(0.05)
        return self.received

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


class Api:
    """The JSON API over real HTTP, authenticated with a bearer token made straight in the hub's database."""

    def __init__(self, hub: Hub) -> None:
        self.base = f"http://127.0.0.1:{hub.port}"
        assert hub.sessions is not None, "start the hub first"
        with hub.sessions() as session:
            self.token = auth.create_token(session, hub.settings.admin_user, "end-to-end tests")

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def device(self, kind: str, key: str) -> dict:
        for dev in self.get("/api/devices")[kind]:
            if dev["device_key"] == key:
                return dev
        raise KeyError(key)

    def registered(self, kind: str, *keys: str) -> bool:
        """Whether every one of these device keys is listed (the built-in inputs are always there)."""
        listed = {dev["device_key"] for dev in self.get("/api/devices")[kind]}
        return set(keys) <= listed

    def patch(self, kind: str, key: str, **fields: Any) -> dict:
        dev = self.device(kind, key)
        status, body = self.call("PATCH", f"/api/{kind}/{dev['id']}", fields)
        assert status == 200, body
        return body

    def link(self, input_key: str, *output_keys: str) -> None:
        inp = self.device("inputs", input_key)
        ids = [self.device("outputs", k)["id"] for k in output_keys]
        status, body = self.call("PUT", f"/api/inputs/{inp['id']}/outputs", {"output_ids": ids})
        assert status == 200, body

    def decisions(self, input_key: str) -> list[dict]:
        return self.get(f"/api/events?kind=decision&input={urllib.parse.quote(input_key)}")["events"]


def start_hub(settings: Settings) -> Hub:
    """Start a hub and wait until both broker connections are up, so no test message is published early."""
    hub = Hub(settings)
    hub.start()
    for component in ("rabbitmq_source", "control_publisher"):
        wait_for(lambda c=component: health.components().get(c, {}).get("state") == "connected", 30)
    return hub
