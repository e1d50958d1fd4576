"""GET and PUT /api/quiet-hours: the window in which informational inputs may notify."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from app.engine import config_changes, rules
from app.web.api import ApiError, _change
from app.web.api_common import json_object as _json_object
from app.web.context import ctx as web_ctx

bp = Blueprint("quiet_hours", __name__, url_prefix="/api")
FIELDS = ("not_before", "not_after", "all_outputs")


@bp.get("/quiet-hours")
def get_quiet_hours() -> dict[str, Any]:
    ctx = web_ctx()
    default = rules.QuietHours(ctx.settings.quiet_hours_not_before, ctx.settings.quiet_hours_not_after)
    with ctx.session_factory() as session:
        window = config_changes.quiet_hours(session, default)
    return {
        "not_before": window.not_before.strftime("%H:%M"),
        "not_after": window.not_after.strftime("%H:%M"),
        "all_outputs": window.all_outputs,
        "timezone": ctx.settings.user_tz,
    }


@bp.put("/quiet-hours")
def put_quiet_hours() -> dict[str, Any]:
    body = _json_object()
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", unknown[0])
    # The processor validates and applies, so the new window holds from its next event on.
    _change("set_quiet_hours", {k: body[k] for k in FIELDS if k in body})
    return get_quiet_hours()
