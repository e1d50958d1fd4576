"""Jinja filters and globals: times in USER_TZ, empty values shown as empty (never "None"), icons."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import TypeVar

from flask import Flask, current_app, g, url_for
from markupsafe import Markup

from app.core import zones
from app.engine import config_changes
from app.web.context import ctx

_T = TypeVar("_T")


def local_time(value: datetime | float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A UTC time (naive datetimes are UTC, as the database stores them) in the user's time zone."""
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(zones.zone(ctx().settings.user_tz)).strftime(fmt)


def blank(value: _T | None) -> _T | str:
    """For form values: None becomes '' so a page never shows (or saves back) the text 'None'."""
    return "" if value is None else value


def counted(n: int, noun: str) -> str:
    """'1 output', '2 outputs', '0 outputs': a count with its noun (regular plurals only)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# Navigation bar entries: (endpoint, label, icon in static/icons.svg); only registered endpoints are shown.
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


# The symbols of static/icons.svg (Font Awesome Free's solid icons, CC BY 4.0); a test keeps them in step
# with the templates.
ICON_NAME = re.compile(r"fa-[a-z0-9-]+")


def icon(name: str, extra_class: str = "") -> Markup:
    """An icon from the sprite static/icons.svg, e.g. icon('fa-house'); decorative, so hidden from
    screen readers (the text beside it says what it is)."""
    if not ICON_NAME.fullmatch(name) or (extra_class and not re.fullmatch(r"[a-z0-9 -]+", extra_class)):
        raise ValueError(f"not an icon name or class: {name!r} {extra_class!r}")
    href = f"{url_for('static', filename='icons.svg')}#{name}"
    classes = f"icon {extra_class}".strip()
    return Markup(
        f'<svg class="{classes}" aria-hidden="true" focusable="false"><use href="{href}"></use></svg>'
    )


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
    app.jinja_env.globals["icon"] = icon
    app.jinja_env.filters["localtime"] = local_time
    app.jinja_env.filters["blank"] = blank
    app.jinja_env.filters["change_value"] = config_changes.shown_value
    app.jinja_env.filters["counted"] = counted
    app.jinja_env.globals["user_tz"] = lambda: ctx().settings.user_tz
    app.jinja_env.globals["device_name"] = lambda: ctx().settings.device_name
    app.jinja_env.globals["now"] = lambda: datetime.now(UTC)
