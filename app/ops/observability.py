"""The hub's observability in one import: logging and Sentry, health pings, Prometheus metrics.

Each lives in a module of its own (app.ops.log_setup, app.ops.health_pinger, app.ops.hub_metrics); this one
names them together for the hub's start-up, the web pages and the tests.
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
from app.ops.hub_metrics import (
    DROP_REASONS,
    OUTPUT_COUNTERS,
    SOURCE_COUNTERS,
    HubCollector,
    clear_depths,
    make_registry,
    register_depth,
    rss_bytes,
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

__all__ = [
    "CRITICAL_COMPONENTS",
    "DROP_REASONS",
    "HEALTHY_STATES",
    "HEARTBEAT_ROW_ID",
    "LEVELS",
    "MIN_SECRET_LENGTH",
    "OUTPUT_COUNTERS",
    "PING_TIMEOUT",
    "REDACTED",
    "SOURCE_COUNTERS",
    "SYSLOG_MAX_BYTES",
    "TEXT_FORMAT",
    "HealthPinger",
    "HubCollector",
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
    "make_registry",
    "register_depth",
    "rss_bytes",
    "secret_values",
    "set_level",
    "syslog_handler",
    "toggle_debug",
]
