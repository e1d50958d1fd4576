"""Self-observability: log set-up and secret redaction, Sentry, health pings, the heartbeat row, metrics."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import db_writes, health, limits
from app.models import Heartbeat
from app.presence import Presence
from app.processor import TRIGGERS_BY_TYPE
from app.settings import Settings
from pylib import threads

log = logging.getLogger(__name__)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDACTED = "***"
# Shorter values would blank out ordinary words everywhere (a password of "pi" would eat "pid").
MIN_SECRET_LENGTH = 4
TEXT_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
# The components whose loss means alerts stop reaching the house, or decisions stop being kept
# (database: a full disk): a ping reports failure then.
CRITICAL_COMPONENTS = ("rabbitmq_source", "control_publisher", "mqtt", "event_processor", "database")
HEALTHY_STATES = frozenset({"connected", "running", "ok"})
PING_TIMEOUT = 10.0
HEARTBEAT_ROW_ID = 1
# Counter name endings that mean something was thrown away (the part before the dot is the stage).
DROP_REASONS = frozenset(
    {"malformed", "lost", "dropped", "unroutable", "outbox_dropped", "rejected", "invalid", "refused"}
)
# Counters that are work the hub sent out, by kind.
OUTPUT_COUNTERS = {
    "processor.triggers": "trigger",
    "processor.notifications": "notification",
    "control.published": "control_message",
    "telegram.sent": "telegram_message",
    "offline.alerts": "offline_alert",
}
SOURCE_COUNTERS = {"rabbitmq_source.received": "rabbitmq", "mqtt.received": "mqtt"}
# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)


# ---- secrets --------------------------------------------------------------------------------


def secret_values(settings: Settings) -> list[str]:
    """The secret strings in the settings, longest first so a longer secret is replaced whole."""
    values = [
        settings.rabbitmq_password,
        settings.mqtt_password,
        settings.influxdb_token,
        settings.telegram_bot_token,
        settings.mdash_api_key,
        settings.secret_key,
        settings.cronitor_telemetry_key,
        settings.aws_secret_access_key,
        settings.backup_encryption_key,
    ]
    for url in (settings.database_url, settings.sentry_dsn):
        parts = urlsplit(url) if url else None
        if parts is not None:
            values += [parts.password or "", parts.username if url == settings.sentry_dsn else ""]
    if settings.hc_ping_url:
        # Anyone with the ping URL's check id can ping; the last path segment is that id.
        values.append(settings.hc_ping_url.rstrip("/").rsplit("/", 1)[-1])
    wanted = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
    return sorted(wanted, key=len, reverse=True)


class Redactor:
    """Replaces every known secret in a string; one compiled pattern so a record costs one pass."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in values)) if values else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def value(self, value: Any) -> Any:
        """Redact strings inside nested dicts, lists and tuples (Sentry events, `extra` fields)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.value(v) for v in value)
        return value


class SecretFilter(logging.Filter):
    """A handler filter: redacts secrets from the message, its arguments, extras and traceback."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what logging would show anyway
            message = str(record.msg)
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatted here, once, so the traceback text (which can quote a URL) is redacted too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, self.redactor.value(value))
        return True


# ---- logging --------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, thread, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "thread": record.threadName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        if extra:
            entry["extra"] = extra
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str, ensure_ascii=False)


class SyslogFormatter(logging.Formatter):
    """RFC 3164 lines as the original's Docker syslog driver sent them: time, host, tag[pid], message.

    The message part keeps the original's layout: "<logger> <thread> [<LEVEL>] <message>".
    """

    def __init__(self, host: str, tag: str) -> None:
        super().__init__("%(name)s %(threadName)s [%(levelname)s] %(message)s")
        self.host = re.sub(r"\s+", "-", host) or "-"
        self.tag = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)[:32] or "event-processor"

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.localtime(record.created)
        # RFC 3164: "Mmm dd hh:mm:ss", the day padded with a space
        when = f"{time.strftime('%b', stamp)} {stamp.tm_mday:2d} {time.strftime('%H:%M:%S', stamp)}"
        text = super().format(record)
        line = f"{when} {self.host} {self.tag}[{record.process}]: {text}"
        encoded = line.encode("utf-8")
        if len(encoded) > SYSLOG_MAX_BYTES:  # one datagram: a huge traceback must not be lost whole
            line = encoded[: SYSLOG_MAX_BYTES - 3].decode("utf-8", "ignore") + "..."
        return line


SYSLOG_MAX_BYTES = 8192  # rsyslog's default maximum message size


def syslog_handler(settings: Settings) -> logging.Handler | None:
    """A handler sending every record to SYSLOG_ADDRESS (UDP or a local socket), or None when unset."""
    import logging.handlers
    import socket

    from app.settings import syslog_target

    if not settings.syslog_address:
        return None
    target = syslog_target(settings.syslog_address)
    try:
        handler = logging.handlers.SysLogHandler(
            address=target, facility=logging.handlers.SysLogHandler.LOG_USER, socktype=socket.SOCK_DGRAM
        )
    except OSError as exc:
        # Logs still reach stdout; a missing /dev/log must not keep the house unguarded.
        log.warning("syslog at %s unavailable (%s): logging to stdout only", settings.syslog_address, exc)
        return None
    handler.setFormatter(SyslogFormatter(socket.gethostname(), settings.device_name))
    return handler


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Root handler with the chosen format and the secret filter (and syslog when set); returns it."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    secret_filter = SecretFilter(Redactor(secret_values(settings)))
    handler.addFilter(secret_filter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    syslog = syslog_handler(settings)
    if syslog is not None:
        syslog.addFilter(secret_filter)
        root.addHandler(syslog)
        log.info("logging to syslog at %s too", settings.syslog_address)
    root.setLevel(settings.log_level)
    # pika and waitress narrate every connection step at INFO; the hub logs the state changes itself.
    for noisy in ("waitress", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika also logs each failed connection attempt at ERROR, several lines a try (44 lines for a 7 s
    # broker restart, each a Sentry event); pylib.rabbit logs one WARNING per failure instead.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    return handler


def set_level(level: str) -> str:
    """Change the root level at run time; raises ValueError for an unknown level name."""
    name = level.strip().upper() if isinstance(level, str) else ""
    if name not in LEVELS:
        raise ValueError(f"{level!r} is not one of {', '.join(LEVELS)}")
    logging.getLogger().setLevel(name)
    log.warning("log level set to %s", name)  # WARNING so the change shows at every level
    return name


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level)


def toggle_debug() -> str:
    """SIGHUP: DEBUG when not at DEBUG, else back to INFO (as the original service did)."""
    return set_level("INFO" if logging.getLogger().level == logging.DEBUG else "DEBUG")


# ---- Sentry ---------------------------------------------------------------------------------


def init_sentry(settings: Settings) -> bool:
    """Report errors from every thread and from Flask to Sentry when SENTRY_DSN is set."""
    if not settings.sentry_enabled:
        log.info("Sentry off: set SENTRY_DSN to report errors")
        return False
    import sentry_sdk  # imported only when used: it costs memory on a Pi
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.threading import ThreadingIntegration

    redactor = Redactor(secret_values(settings))

    def scrub(event: Any, _hint: Any) -> Any:
        # The logging integration sees records before the handler's filter, so redact here too.
        return redactor.value(event)

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or None,
        send_default_pii=False,
        # An AppThread logs its crash with log.exception; ERROR records become Sentry events.
        integrations=[
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
            ThreadingIntegration(propagate_scope=True),
            FlaskIntegration(),
        ],
        before_send=scrub,
        before_breadcrumb=scrub,
        traces_sample_rate=0.0,
    )
    log.info("Sentry on: errors go to %s", urlsplit(settings.sentry_dsn).hostname)
    return True


# ---- health pings and the heartbeat row -----------------------------------------------------


def critical_components(settings: Settings | None = None) -> tuple[str, ...]:
    """The components whose trouble fails a health ping; MQTT only when it is configured."""
    if settings is not None and not settings.mqtt_enabled:
        return tuple(c for c in CRITICAL_COMPONENTS if c != "mqtt")
    return CRITICAL_COMPONENTS


def down_components(
    components: dict[str, dict[str, Any]] | None = None, settings: Settings | None = None
) -> list[str]:
    """The critical components not in a healthy state (missing counts as down)."""
    states = health.components() if components is None else components
    return [c for c in critical_components(settings) if states.get(c, {}).get("state") not in HEALTHY_STATES]


class HealthPinger(threads.AppThread):
    """Writes the heartbeat row each HEARTBEAT_ROW_SECONDS and pings Healthchecks/Cronitor each
    HEALTH_PING_SECONDS, in its own thread so a slow monitoring service never delays an event."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("HealthPinger")
        self.settings = settings
        self._sessions = session_factory
        self._clock = clock
        self._http: Any = None
        self._quiet = threads.QuietRepeats()

    @property
    def pings_enabled(self) -> bool:
        return bool(self.settings.hc_ping_url or self.settings.cronitor_monitor_key)

    def work(self) -> None:
        if self.pings_enabled:
            import requests  # only when a ping service is configured

            self._http = requests.Session()
            self._cronitor("run")  # a restart shows in Cronitor's timeline
        else:
            log.info("health pings off: set HC_PING_URL or CRONITOR_MONITOR_KEY to use them")
        health.set_state("health_pinger", "running")
        now = time.monotonic()
        next_row = now
        next_ping = now + self.settings.health_ping_seconds
        try:
            while True:
                now = time.monotonic()
                if now >= next_row:
                    self.write_heartbeat()
                    next_row = now + self.settings.heartbeat_row_seconds
                if self.pings_enabled and now >= next_ping:
                    self.ping()
                    next_ping = now + self.settings.health_ping_seconds
                wait = min(next_row, next_ping if self.pings_enabled else next_row) - time.monotonic()
                if threads.sleep(max(0.0, wait)):
                    break
        finally:
            if self._http is not None:
                self._http.close()

    def write_heartbeat(self) -> None:
        now = self._clock()
        try:
            with self._sessions() as session:
                row = session.get(Heartbeat, HEARTBEAT_ROW_ID) or Heartbeat(id=HEARTBEAT_ROW_ID)
                row.dt = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)  # naive UTC, as elsewhere
                row.ts = now
                session.add(row)
                session.commit()
        except SQLAlchemyError as exc:
            health.count("health_pinger.heartbeat_errors")
            health.set_state("heartbeat_row", "failing", type(exc).__name__)
            db_writes.failed("heartbeat_row", exc)
            if self._quiet.should_log(f"heartbeat {type(exc).__name__}"):
                log.warning("could not write the heartbeat row: %s", exc)
            return
        health.count("health_pinger.heartbeats")
        db_writes.ok("heartbeat_row")
        # /api/health shows this state's `since`: the age of the last row written.
        health.set_state("heartbeat_row", "ok", row.dt.isoformat() + "Z")

    def ping(self) -> None:
        down = down_components(settings=self.settings)
        summary = "down: " + ", ".join(down) if down else "all components healthy"
        if self.settings.hc_ping_url:
            url = self.settings.hc_ping_url + ("/fail" if down else "")
            self._send("healthchecks", "POST", url, data=summary.encode())
        if self.settings.cronitor_monitor_key:
            self._cronitor("fail" if down else "complete", summary)

    def _cronitor(self, state: str, message: str | None = None) -> None:
        if not self.settings.cronitor_monitor_key:
            return
        s = self.settings
        url = f"{s.cronitor_ping_url}/{s.cronitor_telemetry_key}/{s.cronitor_monitor_key}"
        params = {"state": state} | ({"message": message[:200]} if message else {})
        self._send("cronitor", "GET", url, params=params)

    def _send(self, service: str, method: str, url: str, **kwargs: Any) -> None:
        try:
            response = self._http.request(method, url, timeout=PING_TIMEOUT, **kwargs)
            response.raise_for_status()
        except Exception as exc:  # requests' errors and anything odd: a failed ping is never fatal
            health.count(f"health_pinger.{service}_errors")
            # The URL carries the check id or key, so only the exception type and status are logged.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            problem = f"{type(exc).__name__}" + (f" {status}" if status else "")
            if self._quiet.should_log(f"{service} {problem}"):
                log.warning("%s ping failed: %s", service, problem)
            return
        health.count(f"health_pinger.{service}_pings")


# ---- metrics --------------------------------------------------------------------------------

# Queue depths that live inside thread objects (not in health): the hub registers a reader for
# each one it starts, and the collector calls them at scrape time.
_depths: dict[str, Callable[[], int]] = {}


def register_depth(queue: str, read: Callable[[], int]) -> None:
    _depths[queue] = read


def clear_depths() -> None:
    _depths.clear()


def rss_bytes(path: str = "/proc/self/status") -> int | None:
    """Resident set size from /proc (VmRSS, in kB); None off Linux."""
    try:
        with open(path, encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class HubCollector(Collector):
    """Reads health counters, component states, presence and queue depths at scrape time."""

    def __init__(
        self, presence: Presence, clock: Callable[[], float] = time.time, settings: Settings | None = None
    ) -> None:
        self.presence = presence
        self.clock = clock
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        counts = health.counters()
        states = health.components()
        now = self.clock()

        received = CounterMetricFamily(
            "event_processor_events_received", "Messages received, by source.", labels=["source"]
        )
        for name, source in SOURCE_COUNTERS.items():
            received.add_metric([source], counts.get(name, 0))
        yield received

        sent = CounterMetricFamily(
            "event_processor_outputs",
            "Work sent out (triggers, notifications, messages), by type.",
            labels=["type"],
        )
        for name, kind in OUTPUT_COUNTERS.items():
            sent.add_metric([kind], counts.get(name, 0))
        yield sent

        by_type = CounterMetricFamily(
            "event_processor_triggers",
            "Output triggers published, by output type (ioboard, snapshot, tts, bluetooth, topic) "
            "and the built-in Telegram notifications (sms).",
            labels=["type"],
        )
        for name, value in sorted(counts.items()):
            if name.startswith(TRIGGERS_BY_TYPE):
                by_type.add_metric([name[len(TRIGGERS_BY_TYPE) :]], value)
        by_type.add_metric(["sms"], counts.get("processor.notifications", 0))
        yield by_type

        dropped = CounterMetricFamily(
            "event_processor_dropped",
            "Messages or work thrown away, by stage and reason.",
            labels=["stage", "reason"],
        )
        for name, value in sorted(counts.items()):
            stage, _, rest = name.partition(".")
            if (stage == "processor" and rest.startswith("blocked.")) or rest in DROP_REASONS:
                dropped.add_metric([stage, rest], value)
        yield dropped

        refused = CounterMetricFamily(
            "event_processor_registrations_refused",
            "New device keys not registered because a registration cap was reached, by cap.",
            labels=["cap"],
        )
        for cap in limits.CAPS:
            refused.add_metric([cap], counts.get(limits.CAP_COUNTER + cap, 0))
        yield refused

        every = CounterMetricFamily(
            "event_processor_health_counter",
            "Every health counter, as /api/health shows it.",
            labels=["name"],
        )
        for name, value in sorted(counts.items()):
            every.add_metric([name], value)
        yield every

        up = GaugeMetricFamily(
            "event_processor_component_up",
            "1 when the component is connected/running/ok.",
            labels=["component"],
        )
        for component in sorted(set(states) | set(critical_components(self.settings))):
            state = states.get(component, {}).get("state")
            up.add_metric([component], 1.0 if state in HEALTHY_STATES else 0.0)
        yield up

        depth = GaugeMetricFamily(
            "event_processor_queue_depth", "Items waiting in a queue.", labels=["queue"]
        )
        for queue, read in sorted(_depths.items()):
            try:
                depth.add_metric([queue], float(read()))
            except Exception:  # a thread mid-shutdown: leave this queue out of the scrape
                log.debug("could not read the depth of %s", queue, exc_info=True)
        yield depth

        age = GaugeMetricFamily(
            "event_processor_device_last_seen_age_seconds",
            "Seconds since a device key was heard.",
            labels=["device_key"],
        )
        for key, timing in sorted(self.presence.timings().items()):
            age.add_metric([key], max(0.0, now - timing.last_seen))
        yield age

        heartbeat = states.get("heartbeat_row")
        if heartbeat is not None:
            yield GaugeMetricFamily(
                "event_processor_heartbeat_row_age_seconds",
                "Seconds since the heartbeat row was last written.",
                value=max(0.0, time.time() - heartbeat["since"]),
            )

        yield GaugeMetricFamily(
            "event_processor_ready", "1 once start-up completed.", value=float(health.is_ready())
        )

        rss = rss_bytes()
        if rss is not None:
            yield GaugeMetricFamily(
                "event_processor_process_rss_bytes",
                "Resident memory (VmRSS of /proc/self/status).",
                value=rss,
            )


def make_registry(presence: Presence, settings: Settings | None = None) -> CollectorRegistry:
    """A registry of its own per web app, so tests can run several hubs in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(presence, settings=settings))
    ProcessCollector(registry=registry)  # the standard process_* metrics (CPU, fds, start time)
    return registry
