"""Logging and Sentry: secrets redacted, text/JSON/syslog formats, the runtime level, error reports."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from app.core import settings as settings_module
from app.core.settings import Settings

# logs as app.ops.observability, whichever of its modules speaks
log = logging.getLogger("app.ops.observability")


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDACTED = "***"
# Shorter values would blank out ordinary words everywhere (a password of "pi" would eat "pid").
MIN_SECRET_LENGTH = 4
TEXT_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)


def secret_values(settings: Settings) -> list[str]:
    """The secret strings in the settings, longest first so a longer secret is replaced whole."""
    # Which settings are secret, and which part of each, is the flag on their fields (app/core/settings.py).
    values = settings_module.secret_strings(settings)
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

    def value(self, value: Any) -> Any:  # Any: Sentry's events and `extra` hold values of any type
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

    from app.core.settings import syslog_target

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


def configure_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
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

    def scrub(event: Any, _hint: Any) -> Any:  # Any: one scrubber for Sentry's events and breadcrumbs
        # The logging integration sees records before the handler's filter, so redact here too.
        return redactor.value(event)

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or None,
        # No personal data (IP addresses, cookies, users): send_default_pii's default, False. Not passed,
        # because newer 2.x SDKs warn that it is deprecated for data_collection, which older ones lack.
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
