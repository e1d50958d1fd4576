"""Jinja filters: times in USER_TZ, and empty values shown as empty (never "None")."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytz
from flask import Flask, current_app, g

from app.web.context import ctx


def local_time(value: datetime | float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A UTC time (naive datetimes are UTC, as the database stores them) in the user's time zone."""
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(pytz.timezone(ctx().settings.user_tz)).strftime(fmt)


def blank(value: Any) -> Any:
    """For form values: None becomes '' so a page never shows (or saves back) the text 'None'."""
    return "" if value is None else value


def change_value(value: Any) -> str:
    """A before/after value of a configuration change as a person reads it."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


# Navigation bar entries: (endpoint, label, Font Awesome icon); only registered endpoints are shown.
NAV = [
    ("dashboard.index", "Home", "fa-house"),
    ("events.index", "Events", "fa-list"),
    ("charts.index", "Charts", "fa-chart-column"),
    ("config_pages.inputs", "Inputs", "fa-right-to-bracket"),
    ("config_pages.outputs", "Outputs", "fa-right-from-bracket"),
    ("config_pages.links", "Links", "fa-link"),
    ("schedule.page", "Schedule", "fa-clock"),
    ("auth.tokens", "API tokens", "fa-key"),
]


def _endpoints() -> set[str]:
    return {rule.endpoint for rule in current_app.url_map.iter_rules()}


def _nav_items() -> list[tuple[str, str, str]]:
    endpoints = _endpoints()
    return [item for item in NAV if item[0] in endpoints]


def _start_clock() -> None:
    g.started = time.perf_counter()


def render_ms() -> str:
    """Milliseconds since this request began: the footer's render time, as the original showed one."""
    started = getattr(g, "started", None)
    return f"{(time.perf_counter() - started) * 1000:.0f}" if started is not None else "?"


def init_app(app: Flask) -> None:
    app.before_request(_start_clock)
    app.jinja_env.globals["render_ms"] = render_ms
    app.jinja_env.globals["grafana_url"] = lambda: ctx().settings.grafana_url
    app.jinja_env.globals["nav_items"] = _nav_items
    app.jinja_env.globals["url_map_endpoints"] = _endpoints
    app.jinja_env.filters["localtime"] = local_time
    app.jinja_env.filters["blank"] = blank
    app.jinja_env.filters["change_value"] = change_value
    app.jinja_env.globals["user_tz"] = lambda: ctx().settings.user_tz
    app.jinja_env.globals["device_name"] = lambda: ctx().settings.device_name
    app.jinja_env.globals["now"] = lambda: datetime.now(UTC)
