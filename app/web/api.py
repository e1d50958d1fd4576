"""JSON API for the dashboard: devices, links, meters, switches, health; every change goes to the processor.

The blueprint, its errors and helpers are in api_common, the event history in api_events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Response, current_app, jsonify, request
from flask_login import current_user
from sqlalchemy import func, inspect, or_, select
from sqlalchemy.orm import Session

from app.engine import clocks, commands, config_changes
from app.engine.config_changes import ChangeError
from app.engine.presence import seen_online
from app.store.models import (
    DeviceRow,
    InputConfig,
    InputLink,
    OutputConfig,
    OutputLink,
)
from app.web import api_common as common
from app.web import api_events as api_events  # its routes join bp when the API is imported
from app.web import auth, health_status, masking
from app.web.api_common import MAX_BODY_BYTES as MAX_BODY_BYTES
from app.web.api_common import MAX_DEVICE_LIMIT as MAX_DEVICE_LIMIT
from app.web.api_common import ApiError as ApiError
from app.web.api_common import api_error as api_error
from app.web.api_common import bp as bp
from app.web.api_common import database_error as database_error
from app.web.api_common import http_error as http_error
from app.web.api_common import internal_error as internal_error
from app.web.api_common import json_body as json_body
from app.web.context import WebContext
from app.web.context import ctx as web_ctx


def _columns(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in inspect(row).mapper.column_attrs:
        value = getattr(row, attr.key)
        out[attr.columns[0].name] = common.iso_dt(value) if isinstance(value, datetime) else value
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
        "last_seen": common.iso(last),
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
    out["last_seen"] = common.iso(last)
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
        # a meter's settings and reading, as GET /api/meters/<id> shows them; null for other inputs
        out["meter"] = _columns(row.meter) if row.meter is not None else None
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
    common.raise_for(commands.request(action, args, actor=auth.actor()))


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
    """Status for anyone (Docker's health check, a monitor); broker details only after login.

    Anonymous calls normally never reach Flask: app.web.lazy answers them from the same function.
    """
    body, status = health_status.answer(web_ctx().settings, web_ctx().session_factory, _may_see_details())
    return jsonify(body), status


@bp.get("/devices")
def get_devices() -> dict[str, Any]:
    """Inputs and outputs by device key; ?q= filters (key, label, type), ?limit=&offset= page each list."""
    ctx = web_ctx()
    now = time.time()
    limit = common.whole_param("limit", MAX_DEVICE_LIMIT, MAX_DEVICE_LIMIT)
    offset = common.whole_param("offset", 0, config_changes.MAX_ID)
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
    body = common.json_object()
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
    body = common.json_object()
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
    body = common.json_object()
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
    body = common.json_object()
    _checked(config_changes.validate_meter_fields, body)
    _change("update_meter", {"input_id": input_id, "fields": body})
    return _meter_detail(input_id)


@bp.post("/meters/<int:input_id>/reset")
def reset_meter(input_id: int) -> dict[str, Any]:
    """Reset a meter's register: {"value": N, "mode": "set"|"adjust"}, both optional."""
    body = common.json_object() if request.content_length else {}
    value, mode = body.get("value"), body.get("mode")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, "value must be a whole number", "value")
    if mode not in (None, "set", "adjust"):
        raise ApiError(400, "mode must be 'set' or 'adjust'", "mode")
    reply = commands.request(
        "meter_reset", {"input_id": input_id, "value": value, "mode": mode}, actor=auth.actor()
    )
    common.raise_for(reply)
    out = _meter_detail(input_id)
    out["reset"] = reply.result
    return out
