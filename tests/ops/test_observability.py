"""Observability: log format and redaction, run-time level, Sentry, health pings, heartbeat row, /metrics."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.request
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pika
import pytest

from app.core import health
from app.core.settings import SettingsError
from app.ops import observability
from app.store import db
from app.store.models import Heartbeat
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.support import free_port, wait_for
from tests.test_hub_e2e import FRONT, IOBOARD_HEARTBEAT, notify

SECRETS = {
    "RABBITMQ_PASSWORD": "rabbit-secret-1",
    "MQTT_PASSWORD": "mqtt-secret-2",
    "INFLUXDB_TOKEN": "influx-secret-3",
    "TELEGRAM_BOT_TOKEN": "123456:telegram-secret-4",
    "TELEGRAM_CHAT_ROOM": "-100",
    "MDASH_API_KEY": "mdash-secret-5",
    "APP_SECRET_KEY": "flask-secret-6",
    "DATABASE_URL": "postgresql+psycopg://ep:db-secret-7@127.0.0.1/ep",
    "SENTRY_DSN": "https://sentrykey8@sentry.example/1",
}
SECRET_VALUES = [
    "rabbit-secret-1",
    "mqtt-secret-2",
    "influx-secret-3",
    "123456:telegram-secret-4",
    "mdash-secret-5",
    "flask-secret-6",
    "db-secret-7",
    "sentrykey8",
]


class Recorder:
    """A local HTTP stand-in that answers 200 to everything and records method, path, query, body."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                elif self.headers.get("Content-Encoding") == "br":
                    import brotli  # sentry-sdk only uses br when brotli is installed

                    body = brotli.decompress(body)
                parts = urlsplit(self.path)
                recorder.requests.append(
                    {"method": self.command, "path": parts.path, "query": parse_qs(parts.query), "body": body}
                )
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = _record  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="Recorder", daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [r["path"] for r in list(self.requests)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


# ---- logs -----------------------------------------------------------------------------------


def test_observabilitys_import_leaves_prometheus_to_the_metrics_page() -> None:
    """The hub's start-up (logging, pings, queue depths) does not import prometheus_client; /metrics does."""
    code = (
        "import sys; from app.ops import observability; "
        "assert not any(m.startswith('prometheus_client') for m in sys.modules), 'imported at start-up'"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_the_dashboards_app_leaves_prometheus_to_the_first_scrape(tmp_path: Path) -> None:
    """Building the web app (the first dashboard look) does not import prometheus_client; the first
    /metrics scrape does, and answers with the hub's metrics and the backup's."""
    code = f"""
import sys
from app.core import settings
from app.store import db
from app.web import api_tokens, auth_keys, create_app

conf = settings.load(env={{"DATABASE_URL": "sqlite:///{tmp_path}/hub.db"}})
engine = db.make_engine(conf.database_url)
db.upgrade(engine)
sessions = db.session_factory(engine)
auth_keys.start_up(conf, sessions)
app = create_app(conf, sessions)
assert not [m for m in sys.modules if m.startswith("prometheus_client")], "imported with the app"
with sessions() as session:
    token = api_tokens.create_token(session, conf.admin_user, "scrape")
client = app.test_client()
answer = client.get("/metrics", headers={{"Authorization": "Bearer " + token}})
assert answer.status_code == 200, answer.status_code
assert answer.mimetype == "text/plain", answer.mimetype
assert b"event_processor_ready" in answer.data and b"process_cpu_seconds_total" in answer.data
assert "prometheus_client" in sys.modules
assert client.get("/metrics").status_code == 401
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_secret_reaches_the_log_in_text_or_json(make_settings, restore_logging) -> None:
    for fmt in ("text", "json"):
        out = io.StringIO()
        observability.configure_logging(make_settings(LOG_FORMAT=fmt, **SECRETS), out)
        log = logging.getLogger("test.secrets")
        log.info("connecting with %s and %s", SECRETS["RABBITMQ_PASSWORD"], SECRETS["DATABASE_URL"])
        log.warning("extra carries one", extra={"token": SECRETS["INFLUXDB_TOKEN"], "n": 3})
        try:
            raise RuntimeError(f"bad url https://api.telegram.org/bot{SECRETS['TELEGRAM_BOT_TOKEN']}/x")
        except RuntimeError:
            log.exception("failed with %s", ["mdash-secret-5", {"k": "flask-secret-6"}])
        log.error("sentry %s mqtt %s", SECRETS["SENTRY_DSN"], "mqtt-secret-2")
        text = out.getvalue()
        for secret in SECRET_VALUES:
            assert secret not in text, (fmt, secret)
        assert text.count(observability.REDACTED) >= 7  # text lines do not print extras
        assert "RuntimeError" in text and "127.0.0.1/ep" in text  # the rest of each line survives


def test_json_lines_carry_time_level_thread_logger_message_and_extras(make_settings, restore_logging) -> None:
    out = io.StringIO()
    observability.configure_logging(make_settings(LOG_FORMAT="json"), out)
    logging.getLogger("test.json").warning("hello %s", "world", extra={"device_key": "Front", "count": 2})
    entry = json.loads(out.getvalue().splitlines()[-1])
    assert entry["level"] == "WARNING" and entry["logger"] == "test.json"
    assert entry["message"] == "hello world" and entry["thread"] == "MainThread"
    assert entry["extra"] == {"device_key": "Front", "count": 2}
    assert entry["time"].endswith("+00:00")


def test_level_changes_at_run_time_and_sighup_toggles(restore_logging) -> None:
    assert observability.set_level("debug") == "DEBUG"
    assert observability.toggle_debug() == "INFO"
    assert observability.toggle_debug() == "DEBUG"
    with pytest.raises(ValueError):
        observability.set_level("LOUD")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOG_FORMAT", "xml"),
        ("SENTRY_DSN", "ftp://k@h/1"),
        ("SENTRY_DSN", "https://sentry.example/1"),
        ("HC_PING_URL", "hc-ping.com/x"),
        ("HEALTH_PING_SECONDS", "soon"),
        ("HEARTBEAT_ROW_SECONDS", "0"),
        ("CRONITOR_MONITOR_KEY", "monitor"),  # without CRONITOR_TELEMETRY_KEY
    ],
)
def test_bad_monitoring_settings_name_the_variable(make_settings, name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        make_settings(**{name: value})
    wanted = "CRONITOR_TELEMETRY_KEY" if name == "CRONITOR_MONITOR_KEY" else name
    assert err.value.name == wanted


# ---- Sentry ---------------------------------------------------------------------------------


def test_an_error_logged_in_a_thread_reaches_the_sentry_stand_in(
    make_settings, recorder, restore_logging
) -> None:
    import sentry_sdk

    settings = make_settings(
        SENTRY_DSN=f"http://public@127.0.0.1:{recorder.port}/1",
        **{k: v for k, v in SECRETS.items() if k not in ("SENTRY_DSN",)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no option the SDK has deprecated
        assert observability.init_sentry(settings)
    assert sentry_sdk.get_client().should_send_default_pii() is False  # no IP addresses, cookies, users
    try:

        def fail() -> None:
            try:
                raise ValueError(f"broker refused password {SECRETS['RABBITMQ_PASSWORD']}")
            except ValueError:
                logging.getLogger("test.sentry").exception("worker thread failed")

        worker = threading.Thread(target=fail, name="SentryWorker")
        worker.start()
        worker.join()
        sentry_sdk.flush(5)
        wait_for(lambda: "/api/1/envelope/" in recorder.paths(), 10, what="a Sentry envelope")
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # no DSN in the test environment: a disabled client
    body = b"".join(r["body"] for r in recorder.requests if r["path"] == "/api/1/envelope/").decode()
    assert "worker thread failed" in body and "ValueError" in body and "SentryWorker" in body
    assert SECRETS["RABBITMQ_PASSWORD"] not in body


def test_sentry_is_off_without_a_dsn(make_settings, caplog) -> None:
    with caplog.at_level(logging.INFO, "app.ops.observability"):
        assert observability.init_sentry(make_settings()) is False
    assert "Sentry off" in caplog.text


# ---- pings and the heartbeat row ------------------------------------------------------------


def _healthy() -> None:
    for component in observability.CRITICAL_COMPONENTS:
        health.set_state(component, "connected")


def test_pings_report_success_then_failure_and_the_heartbeat_row_moves(make_settings, recorder) -> None:
    base = f"http://127.0.0.1:{recorder.port}"
    settings = make_settings(
        HC_PING_URL=f"{base}/ping/0b7e-check",
        CRONITOR_MONITOR_KEY="event-hub",
        CRONITOR_TELEMETRY_KEY="tkey",
        CRONITOR_PING_URL=f"{base}/p",
        HEALTH_PING_SECONDS="0.1",
        HEARTBEAT_ROW_SECONDS="0.1",
    )
    engine = db.make_engine(settings.database_url, settings.db_timeout)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    _healthy()
    pinger = observability.HealthPinger(settings, sessions)
    pinger.start()
    wait_for(lambda: "/ping/0b7e-check" in recorder.paths(), what="a success ping")
    cronitor = [r for r in list(recorder.requests) if r["path"] == "/p/tkey/event-hub"]
    assert cronitor[0]["query"]["state"] == ["run"]
    wait_for(lambda: any(r["query"].get("state") == ["complete"] for r in list(recorder.requests)))
    with sessions() as s:
        first = s.get(Heartbeat, 1)
        assert first is not None and first.dt is not None and first.ts is not None
        first_ts = first.ts

    def row_moved() -> bool:
        with sessions() as s:
            row = s.get(Heartbeat, 1)
            return row is not None and row.ts is not None and row.ts > first_ts

    wait_for(row_moved, what="the heartbeat row to be rewritten")
    assert health.components()["heartbeat_row"]["state"] == "ok"

    health.set_state("rabbitmq_source", "down", "connection refused")
    fail = wait_for(lambda: [r for r in list(recorder.requests) if r["path"] == "/ping/0b7e-check/fail"])
    assert b"rabbitmq_source" in fail[0]["body"]
    wait_for(lambda: any(r["query"].get("state") == ["fail"] for r in list(recorder.requests)))
    engine.dispose()


def test_a_dead_ping_service_is_counted_not_fatal(make_settings) -> None:
    settings = make_settings(HC_PING_URL=f"http://127.0.0.1:{free_port()}/ping/x", HEALTH_PING_SECONDS="0.05")
    engine = db.make_engine(settings.database_url, settings.db_timeout)
    db.upgrade(engine)
    _healthy()
    pinger = observability.HealthPinger(settings, db.session_factory(engine))
    pinger.start()
    wait_for(lambda: health.counters().get("health_pinger.healthchecks_errors", 0) >= 2)
    assert pinger.is_alive()
    engine.dispose()


# ---- /metrics and /api/logging on a real hub ------------------------------------------------


def _scrape(port: int, token: str | None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", "/metrics", headers=headers)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def test_metrics_after_a_heartbeat_and_an_activation(make_settings, restore_logging) -> None:
    hub = start_hub(make_settings(HEARTBEAT_ROW_SECONDS="0.2"))
    device = Device(hub.settings)
    consumer = ControlConsumer(hub.settings)
    try:
        api = Api(hub)
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(lambda: any(d["device_key"] == "Hallway Buzzer" for d in api.get("/api/devices")["outputs"]))
        api.patch("inputs", FRONT, device_enabled=True)
        api.link(FRONT, "Hallway Buzzer")
        device.publish("event.notify.ioboard.pi-hallway", notify())
        device.publish("event.notify.ioboard.pi-hallway", notify())  # latched: one drop
        consumer.wait(1)
        wait_for(lambda: health.counters().get("processor.blocked.latched") == 1)
        wait_for(lambda: health.counters().get("control.published") == 1)

        status, text = _scrape(hub.port, api.token)
        assert status == 200
        assert 'event_processor_events_received_total{source="rabbitmq"} 3.0' in text
        assert 'event_processor_events_received_total{source="mqtt"} 0.0' in text
        assert 'event_processor_outputs_total{type="trigger"} 1.0' in text
        assert 'event_processor_outputs_total{type="control_message"} 1.0' in text
        assert 'event_processor_triggers_total{type="ioboard"} 1.0' in text
        assert 'event_processor_dropped_total{reason="blocked.latched",stage="processor"} 1.0' in text
        assert 'event_processor_component_up{component="rabbitmq_source"} 1.0' in text
        assert 'event_processor_component_up{component="control_publisher"} 1.0' in text
        assert 'event_processor_queue_depth{queue="control_pending"} 0.0' in text
        assert 'event_processor_queue_depth{queue="mqtt_outbox"}' in text
        assert f'event_processor_device_last_seen_age_seconds{{device_key="{FRONT}"}}' in text
        assert 'event_processor_device_last_seen_age_seconds{device_key="Hallway Buzzer"}' in text
        assert "event_processor_process_rss_bytes " in text and "event_processor_ready 1.0" in text
        wait_for(lambda: "heartbeat_row" in health.components())
        assert "event_processor_heartbeat_row_age_seconds " in _scrape(hub.port, api.token)[1]
        rss = next(
            line for line in text.splitlines() if line.startswith("event_processor_process_rss_bytes ")
        )
        assert float(rss.split()[1]) > 10_000_000

        # Behind login: no valid token (or session), no metrics; a 401 the scraper can report.
        status, text = _scrape(hub.port, None)
        assert status == 401 and "event_processor" not in text
        assert _scrape(hub.port, "ep_not-a-token")[0] == 401

        assert api.call("PUT", "/api/logging", {"level": "DEBUG"}) == (200, {"level": "DEBUG"})
        assert logging.getLogger().level == logging.DEBUG
        assert api.get("/api/logging") == {"level": "DEBUG"}
        status, body = api.call("PUT", "/api/logging", {"level": "CHATTY"})
        assert status == 400 and body["field"] == "level"
        unauthenticated = urllib.request.Request(
            f"http://127.0.0.1:{hub.port}/api/logging", data=b'{"level": "INFO"}', method="PUT"
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(unauthenticated, timeout=10)
        assert err.value.code == 401
    finally:
        device.close()
        consumer.close()
        hub.stop()


# ---- syslog -----------------------------------------------------------------------------------


def test_syslog_address_sends_rfc3164_lines_over_udp_with_secrets_redacted(
    make_settings, restore_logging
) -> None:
    import socket

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    try:
        port = receiver.getsockname()[1]
        settings = make_settings(
            SYSLOG_ADDRESS=f"udp://127.0.0.1:{port}",
            DEVICE_NAME="hub-a",
            **{k: v for k, v in SECRETS.items()},
        )
        out = io.StringIO()
        observability.configure_logging(settings, out)
        logging.getLogger("app.test").warning("broker password %s refused", SECRETS["RABBITMQ_PASSWORD"])
        datagrams = []
        while True:
            data = receiver.recv(65536).decode()
            datagrams.append(data)
            if "refused" in data:
                break
        line = datagrams[-1]
        # <PRI> facility user (1) * 8 + warning (4) = 12, then "Mmm dd hh:mm:ss host tag[pid]: message"
        match = re.fullmatch(
            r"<12>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) hub-a\[(\d+)\]: "
            r"app\.test MainThread \[WARNING\] broker password \*\*\* refused\x00?",
            line,
        )
        assert match is not None, line
        assert int(match.group(3)) == os.getpid()
        assert SECRETS["RABBITMQ_PASSWORD"] not in "".join(datagrams)
        assert "refused" in out.getvalue()  # stdout still gets every line
        # a long traceback is cut to one datagram rather than lost
        logging.getLogger("app.test").error("x" * 20000)
        big = receiver.recv(65536)
        assert len(big) <= observability.SYSLOG_MAX_BYTES + 8 and big.rstrip(b"\x00").endswith(b"...")
    finally:
        receiver.close()


@pytest.mark.parametrize("address", ["tcp://logs:514", "udp://:514", "logs:port", "udp://logs:70000"])
def test_a_bad_syslog_address_stops_start_up_naming_it(make_settings, address: str) -> None:
    with pytest.raises(SettingsError) as err:
        make_settings(SYSLOG_ADDRESS=address)
    assert err.value.name == "SYSLOG_ADDRESS"


def test_syslog_address_forms() -> None:
    from app.core.settings import syslog_target

    assert syslog_target("udp://10.0.0.5:5514") == ("10.0.0.5", 5514)
    assert syslog_target("logs.lan") == ("logs.lan", 514)
    assert syslog_target("unix:///dev/log") == "/dev/log"
    assert syslog_target("/dev/log") == "/dev/log"


def test_a_refused_broker_connection_logs_no_pika_error_lines(make_settings: Any) -> None:
    """A broker restart must not flood the log (and Sentry) with pika's own ERROR lines per attempt."""
    out = io.StringIO()
    observability.configure_logging(make_settings(), out)
    params = pika.ConnectionParameters("127.0.0.1", free_port(), connection_attempts=1)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params)
    logging.getLogger("pylib.rabbit").warning("RabbitSource cannot connect to RabbitMQ (attempt 1)")
    lines = out.getvalue().splitlines()
    assert [line for line in lines if " pika." in line] == []
    assert any("pylib.rabbit: RabbitSource cannot connect" in line for line in lines)
