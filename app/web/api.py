"""JSON API for the dashboard: reads straight from the database, asks the EventProcessor for every change."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask_login import current_user
from sqlalchemy import func, inspect, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from app.core import health
from app.core.channels import Reply
from app.engine import clocks, commands, config_changes
from app.engine.config_changes import ChangeError
from app.engine.presence import seen_online
from app.ops import backup_status, observability
from app.store import history, roles
from app.store.models import (
    ConfigChange,
    Decision,
    DeviceRow,
    EventLog,
    InputConfig,
    InputLink,
    OutputConfig,
    OutputLink,
)
from app.web import auth, masking
from app.web.context import WebContext
from app.web.context import ctx as web_ctx
from pylib import decoding

log = logging.getLogger(__name__)
# Any here is the wire boundary: JSON request bodies (checked before use) and JSON responses.

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_EVENT_LIMIT = 100
MAX_EVENT_LIMIT = 1000
MAX_EVENT_OFFSET = 10_000_000
MAX_DEVICE_LIMIT = 5000  # devices per list in one answer; above the default caps, so one call lists all
MAX_BODY_BYTES = 1024 * 1024


class ApiError(Exception):
    """An error answered as {"error": ..., "field": ...} with an HTTP status."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


# ---- errors ---------------------------------------------------------------------------------


def _error(status: int, message: str, field: str | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return jsonify(body), status


def api_error(exc: ApiError) -> tuple[Response, int]:
    return _error(exc.status, exc.message, exc.field)


def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response, _ = _error(status, (exc.name or "error").lower())
    response.status_code = status
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def internal_error(exc: InternalServerError) -> tuple[Response, int]:
    original = getattr(exc, "original_exception", None) or exc
    log.error("%s %s failed", request.method, request.path, exc_info=original)
    return _error(500, "internal error")


def database_error(exc: OperationalError) -> tuple[Response, int]:
    # A locked or vanished database is a passing condition, not a bug: the client should retry.
    log.warning("%s %s: database unavailable: %s", request.method, request.path, exc.orig)
    return _error(503, "the database is busy or unavailable; try again")


def _raise_for(reply: Reply) -> None:
    if not reply.ok:
        raise ApiError(reply.status if reply.status >= 400 else 500, reply.error or "failed", reply.field)


# ---- helpers --------------------------------------------------------------------------------


def json_body() -> Any:
    """The request body as JSON, decoded once within pylib.decoding's limits; None when it is not.

    Read whatever the Content-Type says: a client that forgets the header still gets its JSON read.
    """
    try:
        return decoding.loads(request.get_data(cache=True))
    except decoding.DecodeError:
        health.count("api.malformed")
        return None


def _json_object() -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def _iso_dt(value: datetime | None) -> str | None:
    if value is None:
        return None
    # The database holds naive UTC times.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _columns(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in inspect(row).mapper.column_attrs:
        value = getattr(row, attr.key)
        out[attr.columns[0].name] = _iso_dt(value) if isinstance(value, datetime) else value
    return out


def _summary(ctx: WebContext, row: InputConfig | OutputConfig, now: float) -> dict[str, Any]:
    last, online = seen_online(ctx.presence, ctx.settings, row, now)
    # Outputs predate their flag, so NULL means on; the original treats a NULL input flag as off.
    is_output = isinstance(row, OutputConfig)
    enabled = row.device_enabled is not False if is_output else bool(row.device_enabled)
    out = {
        "id": row.id,
        "device_key": row.device_key,
        "device_label": row.device_label,
        "device_type": row.device_type,
        "device_enabled": enabled,
        "online": online,
        "last_seen": _iso(last),
        "clock_offset": _offset(row.device_key),
        "location": row.location,
        "origin": row.origin,
    }
    if isinstance(row, InputConfig):
        out["group_name"] = row.group_name
    return out


def _detail(ctx: WebContext, row: InputConfig | OutputConfig, now: float) -> dict[str, Any]:
    out = _columns(row)
    if isinstance(row, OutputConfig):
        # Write-only: a camera's password and the SMS numbers never leave the hub in an answer.
        out["device_params"] = masking.mask_params(row.device_params) or None
    last, online = seen_online(ctx.presence, ctx.settings, row, now)
    out["online"] = online
    out["last_seen"] = _iso(last)
    out["clock_offset"] = _offset(row.device_key)
    return out


def _offset(device_key: str) -> float | None:
    """Seconds the device's clock is behind the hub's (negative: ahead), learned from its heartbeats."""
    offset = clocks.offsets.offset(device_key)
    return None if offset is None else round(offset, 1)


def _output_ids(session: Session, input_id: int) -> list[int]:
    stmt = select(OutputLink.output_device_id).where(OutputLink.input_device_id == input_id)
    return sorted(set(session.scalars(stmt)))


def _input_ids(session: Session, input_id: int) -> list[int]:
    stmt = select(InputLink.linked_device_id).where(InputLink.input_device_id == input_id)
    return sorted(set(session.scalars(stmt)))


def _input_detail(input_id: int) -> dict[str, Any]:
    ctx = web_ctx()
    with ctx.session_factory() as session:
        row = session.get(InputConfig, input_id)
        if row is None:
            raise ApiError(404, f"there is no input with id {input_id}")
        out = _detail(ctx, row, time.time())
        out["output_ids"] = _output_ids(session, input_id)
        out["input_ids"] = _input_ids(session, input_id)
        return out


def _output_detail(output_id: int) -> dict[str, Any]:
    ctx = web_ctx()
    with ctx.session_factory() as session:
        row = session.get(OutputConfig, output_id)
        if row is None:
            raise ApiError(404, f"there is no output with id {output_id}")
        return _detail(ctx, row, time.time())


def _change(action: str, args: dict[str, Any]) -> None:
    """Ask the EventProcessor to apply a change; its refusal becomes an ApiError."""
    _raise_for(commands.request(action, args, actor=auth.actor()))


def _checked(check: Callable[..., Any], *args: Any) -> Any:
    """Run a config_changes validator and turn its ChangeError into a 400 naming the field."""
    try:
        return check(*args)
    except ChangeError as exc:
        raise ApiError(exc.status, str(exc), exc.field) from None


# ---- routes ---------------------------------------------------------------------------------


@bp.url_value_preprocessor
def _check_row_ids(endpoint: str | None, values: dict[str, Any] | None) -> None:
    # A Python int beyond SQLite INTEGER cannot even be bound as a parameter; no such row exists.
    for name, value in (values or {}).items():
        if name.endswith("_id") and isinstance(value, int) and value > config_changes.MAX_ID:
            raise ApiError(404, f"there is no row with id {value}")


def _may_see_details() -> bool:
    return bool(current_user.is_authenticated or current_app.config.get("LOGIN_DISABLED"))


@bp.get("/health")
def get_health() -> tuple[Response, int]:
    """Status for anyone (Docker's health check, a monitor); broker details only after login."""
    ready = health.is_ready()
    components = health.components()
    down = observability.down_components(components, web_ctx().settings)
    # RabbitMQ or MQTT down for longer than HEALTH_DOWN_GRACE_SECONDS: what turns this (and the
    # container's health check) into a 503; a shorter outage (a broker restart) is only "degraded"
    unhealthy = health.critical_down(web_ctx().settings.health_down_grace_seconds)
    body: dict[str, Any] = {
        "status": "starting" if not ready else "unhealthy" if unhealthy else "degraded" if down else "ok",
        "ready": ready,
        "down": down,
        "unhealthy": unhealthy,
    }
    if _may_see_details():
        # addresses, users, vhosts and versions sit in the components' details and the counters
        body.update(
            components=components,
            counters=health.counters(),
            # shown, never part of the status code: a stale backup must not make Docker restart the hub
            backup=backup_status.read_status(web_ctx().settings).as_dict(),
            # device clocks that differ from the hub's, learned from heartbeats (app.engine.clocks)
            clocks=clocks.offsets.summary(),
        )
    if web_ctx().settings.ha_enabled:  # the standby pair: both hubs, which is active and since when
        pair = roles.status(web_ctx().session_factory, web_ctx().settings)
        if not _may_see_details():
            # which hub is active is status (a monitor asks it); where each hub is reached is not
            for node in (*pair.get("nodes", []), pair.get("active") or {}):
                node.pop("url", None)
        body["ha"] = pair
    return jsonify(body), 200 if ready and not unhealthy else 503


def _whole(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise ApiError(400, f"{name} must be a whole number from 0 to {maximum}", name)
    return int(raw)


@bp.get("/devices")
def get_devices() -> dict[str, Any]:
    """Inputs and outputs by device key; ?q= filters (key, label, type), ?limit=&offset= page each list."""
    ctx = web_ctx()
    now = time.time()
    limit = _whole("limit", MAX_DEVICE_LIMIT, MAX_DEVICE_LIMIT)
    offset = _whole("offset", 0, config_changes.MAX_ID)
    query = request.args.get("q", "").strip()[:100]
    out: dict[str, Any] = {}
    total: dict[str, int] = {}
    with ctx.session_factory() as session:
        total["inputs"], out["inputs"] = _device_page(ctx, session, InputConfig, query, offset, limit, now)
        total["outputs"], out["outputs"] = _device_page(ctx, session, OutputConfig, query, offset, limit, now)
    out["total"] = total
    return out


def _device_page(
    ctx: WebContext, session: Session, model: type[DeviceRow], query: str, offset: int, limit: int, now: float
) -> tuple[int, list[dict[str, Any]]]:
    """(how many devices of this model match ?q=, the summaries of one page of them)."""
    stmt = select(model)
    if query:
        stmt = stmt.where(
            or_(
                model.device_key.icontains(query, autoescape=True),
                model.device_label.icontains(query, autoescape=True),
                model.device_type.icontains(query, autoescape=True),
            )
        )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(stmt.order_by(model.device_key).offset(offset).limit(limit))
    return total, [_summary(ctx, row, now) for row in rows]


# kind in the URL -> (validator of the fields, processor action, detail reader)
_DEVICE_KINDS: dict[str, tuple[Callable[[Any], Any], str, Callable[[int], dict[str, Any]]]] = {
    "inputs": (config_changes.validate_input_fields, "update_input", _input_detail),
    "outputs": (config_changes.validate_output_fields, "update_output", _output_detail),
}


@bp.get("/<any(inputs, outputs):kind>/<int:row_id>")
def get_device(kind: str, row_id: int) -> dict[str, Any]:
    return _DEVICE_KINDS[kind][2](row_id)


def _unmasked_params(row_id: int, body: dict[str, Any]) -> None:
    """A device_params sent back as GET showed it (masked) keeps the stored value; edited around the
    mask, the hidden parts are put back."""
    submitted = body.get("device_params")
    if not isinstance(submitted, str) or masking.MASK_CHAR not in submitted:
        return
    with web_ctx().session_factory() as session:
        row = session.get(OutputConfig, row_id)
        stored = row.device_params if row is not None else None
    params = _checked(masking.unmask_params, submitted, stored)
    if params is None:
        del body["device_params"]
    else:
        body["device_params"] = params


@bp.patch("/<any(inputs, outputs):kind>/<int:row_id>")
def patch_device(kind: str, row_id: int) -> dict[str, Any]:
    validate, action, detail = _DEVICE_KINDS[kind]
    body = _json_object()
    if kind == "outputs":
        _unmasked_params(row_id, body)
    _checked(validate, body)
    _change(action, {"id": row_id, "fields": body})
    # Re-read so the answer shows what was saved (stripped, nulled), not what was sent.
    return detail(row_id)


# what an input links to, in the URL -> (body field, processor action, reader of the saved set)
_LINK_KINDS: dict[str, tuple[str, str, Callable[[Session, int], list[int]]]] = {
    "outputs": ("output_ids", "set_output_links", _output_ids),
    "inputs": ("input_ids", "set_input_links", _input_ids),
}


@bp.put("/inputs/<int:input_id>/<any(outputs, inputs):linked>")
def put_links(input_id: int, linked: str) -> dict[str, Any]:
    name, action, saved_ids = _LINK_KINDS[linked]
    body = _json_object()
    ids = _checked(config_changes.validate_id_list, body.get(name), name)
    _change(action, {"input_id": input_id, name: ids})
    with web_ctx().session_factory() as session:
        return {"input_id": input_id, name: saved_ids(session, input_id)}


@bp.get("/outputs-enabled")
def get_outputs_enabled() -> dict[str, Any]:
    with web_ctx().session_factory() as session:
        return {"enabled": config_changes.outputs_enabled(session)}


@bp.put("/outputs-enabled")
def put_outputs_enabled() -> dict[str, Any]:
    body = _json_object()
    if not isinstance(body.get("enabled"), bool):
        raise ApiError(400, "enabled must be true or false", "enabled")
    _change("set_outputs_enabled", {"enabled": body["enabled"]})
    return get_outputs_enabled()


# ---- meters ---------------------------------------------------------------------------------


def _meter_detail(input_id: int) -> dict[str, Any]:
    with web_ctx().session_factory() as session:
        row = session.get(InputConfig, input_id)
        if row is None or row.meter is None:
            raise ApiError(404, f"there is no meter with input id {input_id}")
        out = _columns(row.meter)
        out.update(device_key=row.device_key, device_label=row.device_label)
        return out


@bp.get("/meters/<int:input_id>")
def get_meter(input_id: int) -> dict[str, Any]:
    return _meter_detail(input_id)


@bp.patch("/meters/<int:input_id>")
def patch_meter(input_id: int) -> dict[str, Any]:
    body = _json_object()
    _checked(config_changes.validate_meter_fields, body)
    _change("update_meter", {"input_id": input_id, "fields": body})
    return _meter_detail(input_id)


@bp.post("/meters/<int:input_id>/reset")
def reset_meter(input_id: int) -> dict[str, Any]:
    """Reset a meter's register: {"value": N, "mode": "set"|"adjust"}, both optional."""
    body = _json_object() if request.content_length else {}
    value, mode = body.get("value"), body.get("mode")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, "value must be a whole number", "value")
    if mode not in (None, "set", "adjust"):
        raise ApiError(400, "mode must be 'set' or 'adjust'", "mode")
    reply = commands.request(
        "meter_reset", {"input_id": input_id, "value": value, "mode": mode}, actor=auth.actor()
    )
    _raise_for(reply)
    out = _meter_detail(input_id)
    out["reset"] = reply.result
    return out


# ---- events ---------------------------------------------------------------------------------


def _limit_param() -> int:
    raw = request.args.get("limit", "").strip()
    if not raw:
        return DEFAULT_EVENT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"limit must be a whole number, not {raw!r}", "limit") from None
    if not 1 <= limit <= MAX_EVENT_LIMIT:
        raise ApiError(400, f"limit must be from 1 to {MAX_EVENT_LIMIT}", "limit")
    return limit


def _since_param(name: str = "since") -> datetime | None:
    """since (or until) as naive UTC (as the database stores times), from ISO 8601 or unix seconds."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        try:
            if not math.isfinite(seconds):
                raise ValueError(raw)
            return datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None)
        except (ValueError, OverflowError, OSError):
            raise ApiError(400, f"{name} {raw!r} is not a usable unix time", name) from None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, f"{name} {raw!r} is not ISO 8601 or unix seconds", name) from None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def _decision(row: Decision) -> dict[str, Any]:
    return {
        "id": row.id,
        "timestamp": _iso_dt(row.timestamp),
        "input_id": row.input_device_id,
        "input_key": row.input_key,
        "input_label": row.input_label,
        "origin": row.origin,
        "event_detail": row.event_detail,
        "fired": row.fired,
        "reason": row.reason,
        "detail": row.detail,
        "outputs": [
            {
                "output_id": out.output_device_id,
                "output_key": out.output_key,
                "output_label": out.output_label,
                "fired": out.fired,
                "reason": out.reason,
                "detail": out.detail,
            }
            for out in row.outputs
        ],
    }


def _history_row(row: EventLog) -> dict[str, Any]:
    return {
        "kind": "history",
        "id": row.id,
        "timestamp": _iso_dt(row.timestamp) if row.timestamp else None,
        "input_device": row.input_device,
        "output_device": row.output_device,
    }


def _change_row(row: ConfigChange) -> dict[str, Any]:
    return {
        "kind": "change",
        "id": row.id,
        "timestamp": _iso_dt(row.timestamp),
        "actor": row.actor,
        "action": row.action,
        "target_kind": row.target_kind,
        "target_id": row.target_id,
        "target_key": row.target_key,
        "summary": row.summary,
        "before": history.values(row.before),
        "after": history.values(row.after),
    }


def _entry(entry: history.Entry) -> dict[str, Any]:
    if entry.kind == "decision":
        return {"kind": "decision", **_decision(entry.row)}
    if entry.kind == "history":
        return _history_row(entry.row)
    return _change_row(entry.row)


def _kinds_param() -> tuple[str, ...]:
    raw = request.args.get("kind", "").strip()
    if not raw:
        return history.KINDS
    kinds = tuple(dict.fromkeys(k.strip() for k in raw.split(",") if k.strip()))
    bad = [k for k in kinds if k not in history.KINDS]
    if bad or not kinds:
        raise ApiError(400, f"kind must be a comma list of {', '.join(history.KINDS)}", "kind")
    return kinds


def _cursor_param() -> history.Cursor | None:
    raw = request.args.get("before", "").strip()
    if not raw:
        return None
    try:
        return history.Cursor.parse(raw)
    except ValueError:
        raise ApiError(400, "before must be a cursor from an answer's next", "before") from None


@bp.get("/events")
def get_events() -> dict[str, Any]:
    """Decisions, the original's migrated event_log rows and configuration changes, newest first.

    `next` is where the following page starts (pass it as `before`): a keyset page costs the same
    however deep it is, where `offset` reads every row it skips.
    """
    limit = _limit_param()
    before = _cursor_param()
    since = _since_param()
    until = _since_param("until")
    kinds = _kinds_param()
    search = request.args.get("q", "").strip()
    if len(search) > history.MAX_SEARCH:
        raise ApiError(400, f"q must be at most {history.MAX_SEARCH} characters", "q")
    offset = _whole("offset", 0, MAX_EVENT_OFFSET)
    if before is not None and offset:
        raise ApiError(400, "give before or offset, not both", "offset")
    with web_ctx().session_factory() as session:
        input_value = request.args.get("input", "").strip()
        output_value = request.args.get("output", "").strip()
        filters = history.Filters(
            input=history.device(session, InputConfig, input_value) if input_value else None,
            output=history.device(session, OutputConfig, output_value) if output_value else None,
            since=since,
            until=until,
            search=search,
            kinds=kinds,
        )
        shown = history.window(session, filters, limit, before=before, offset=offset)
        return {
            "events": [_entry(e) for e in shown.entries],
            "next": shown.older.text() if shown.older else None,
        }
