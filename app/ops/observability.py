"""The hub's observability in one import: logging and Sentry, health pings, the queue depths for metrics.

Each lives in a module of its own (app.ops.log_setup, app.ops.health_pinger, app.ops.queue_depths); this
one names them together for the hub's start-up, the web pages and the tests. The Prometheus metrics
themselves (app.ops.hub_metrics) are imported by /metrics only: prometheus_client stays off start-up.
"""

from __future__ import annotations

from app.ops.health_pinger import (
    CRITICAL_COMPONENTS,
    HEALTHY_STATES,
    HEARTBEAT_ROW_ID,
    PING_TIMEOUT,
    HealthPinger,
    critical_components,
    down_components,
)
from app.ops.log_setup import (
    LEVELS,
    MIN_SECRET_LENGTH,
    REDACTED,
    SYSLOG_MAX_BYTES,
    TEXT_FORMAT,
    JsonFormatter,
    Redactor,
    SecretFilter,
    SyslogFormatter,
    configure_logging,
    current_level,
    init_sentry,
    secret_values,
    set_level,
    syslog_handler,
    toggle_debug,
)
from app.ops.queue_depths import clear_depths, register_depth

__all__ = [
    "CRITICAL_COMPONENTS",
    "HEALTHY_STATES",
    "HEARTBEAT_ROW_ID",
    "LEVELS",
    "MIN_SECRET_LENGTH",
    "PING_TIMEOUT",
    "REDACTED",
    "SYSLOG_MAX_BYTES",
    "TEXT_FORMAT",
    "HealthPinger",
    "JsonFormatter",
    "Redactor",
    "SecretFilter",
    "SyslogFormatter",
    "clear_depths",
    "configure_logging",
    "critical_components",
    "current_level",
    "down_components",
    "init_sentry",
    "register_depth",
    "secret_values",
    "set_level",
    "syslog_handler",
    "toggle_debug",
]
