"""The hub under test: `python -m app` in a temp dir, driven through its JSON API."""

from __future__ import annotations

import configparser
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import MqttPublisher, Publisher, publish_heartbeat
from bench.config import (
    BROKER_FAILURES,
    BROKER_HOST,
    BROKER_PORT,
    CREATED_EXCHANGES,
    HEALTH_POLL,
    HUB_PYTHON_ENV,
    MQTT_HOST,
    REPO,
    START_TIMEOUT,
    BenchError,
)
from bench.devices import Device, SensorInput, outputs_heartbeat_data
from bench.processes import free_port, rss_mb, stop_process


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
        env.update(HUB_PYTHON_ENV)  # python -OO, as `make run` and the image run it
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
            from app.store import db
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
