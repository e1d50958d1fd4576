"""On the standby hub of a pair: a banner naming the active hub on every page, and every write refused."""

from __future__ import annotations

from typing import Any

from flask import Flask, flash, jsonify, redirect, request
from flask.typing import ResponseReturnValue

from app.store import roles
from app.web.context import ctx, is_api_request

# Signing in and out must work on the standby too: its pages are readable.
ALLOWED_WRITES = frozenset({"auth.login", "auth.logout"})


def banner() -> dict[str, Any] | None:
    """What the banner says, or None when this hub acts (always, with one hub)."""
    if not ctx().settings.ha_enabled or roles.acting():
        return None
    active = roles.active_node_info()
    return {
        "node": roles.node(),
        "active": active["node"] if active else None,
        "url": active.get("url") if active else None,
        "text": roles.standby_message(),
    }


def _refuse_writes() -> ResponseReturnValue | None:
    if request.method in ("GET", "HEAD", "OPTIONS") or request.endpoint in ALLOWED_WRITES:
        return None
    if not ctx().settings.ha_enabled or roles.acting():
        return None
    message = roles.standby_message()
    if is_api_request():
        return jsonify({"error": message}), 503
    flash(message, "error")
    return redirect(request.referrer or "/", code=303)


def init_app(app: Flask) -> None:
    app.jinja_env.globals["standby_banner"] = banner
    app.before_request(_refuse_writes)
