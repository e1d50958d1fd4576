"""Schedule page (/config/schedule) and JSON API (/api/schedules): daily enable/disable times per device."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from app.core import zones
from app.core.settings import parse_hhmm
from app.engine import commands, config_changes, rules
from app.engine.config_changes import ChangeError
from app.engine.scheduler import KINDS, convert_time, next_transition, zone_of
from app.store.models import DeviceRow, InputConfig, OutputConfig
from app.web import api, auth, paging
from app.web.api import ApiError
from app.web.context import ctx

bp = Blueprint("schedule", __name__, url_prefix="/config")
# Any here: JSON bodies and responses of /api/schedules, and the form values a page shows back.
api_bp = Blueprint("schedule_api", __name__, url_prefix="/api")

Errors = dict[str, str]


# ---- shared -------------------------------------------------------------------------------


def _tz() -> tzinfo:
    return zones.zone(ctx().settings.user_tz)


def _rows(session: Session, kind: str) -> list[InputConfig] | list[OutputConfig]:
    return _sorted_rows(session, InputConfig) if kind == "input" else _sorted_rows(session, OutputConfig)


def _sorted_rows(session: Session, model: type[DeviceRow]) -> list[DeviceRow]:
    rows = list(session.scalars(select(model)).all())
    return sorted(rows, key=lambda r: ((r.device_label or r.device_key).lower(), r.id))


def _describe(kind: str, row: InputConfig | OutputConfig, now: datetime) -> dict[str, Any]:
    """One device's schedule as the page and the API show it, with its next scheduled transition."""
    enable, disable = row.auto_schedule_enable, row.auto_schedule_disable
    valid = {
        name: value is None or bool(config_changes.HHMM.fullmatch(value))
        for name, value in (("enable", enable), ("disable", disable))
    }
    zone = zone_of(row.auto_schedule_tz, _tz())
    upcoming = next_transition(enable, disable, zone, now) if row.auto_schedule and zone is not None else None
    user_tz = ctx().settings.user_tz
    return {
        "kind": kind,
        "id": row.id,
        "device_key": row.device_key,
        "device_label": row.device_label,
        "device_enabled": row.device_enabled is not False,
        "auto_schedule": bool(row.auto_schedule),
        "enable": enable,
        "disable": disable,
        # A time stored by the original (e.g. "7:00" or "") that the scheduler skips.
        "invalid": [name for name, ok in valid.items() if not ok],
        # The zone the times are read in: the row's own (UTC on the original's rows) or USER_TZ.
        "timezone": row.auto_schedule_tz or user_tz,
        # True when the row keeps a zone of its own that differs from USER_TZ: the page offers to convert.
        "own_timezone": bool(row.auto_schedule_tz) and row.auto_schedule_tz != user_tz,
        "timezone_known": zone is not None,
        "next_transition": None
        if upcoming is None
        else {"at": upcoming[0].isoformat(), "enabled": upcoming[1], "local": upcoming[0]},
    }


def _all(session: Session) -> tuple[bool, list[dict[str, Any]]]:
    now = datetime.now(_tz())
    devices = [_describe(kind, row, now) for kind in KINDS for row in _rows(session, kind)]
    return config_changes.scheduler_enabled(session), devices


def _validate(body: dict[str, Any], current: InputConfig | OutputConfig) -> dict[str, Any]:
    """The set_schedule args for a request; raises ChangeError naming the first bad field."""
    args: dict[str, Any] = {"auto_schedule": body.get("auto_schedule")}
    if "timezone" in body:
        args["schedule_tz"] = config_changes.validate_zone(body["timezone"], "timezone")
    for name in ("enable", "disable"):
        if name in body:
            args[name] = config_changes.validate_time(body[name], name)
    # Checked here as well as in the processor so the API answers 400 before anything is sent.
    stored = {
        "enable": config_changes.parse_hhmm(current.auto_schedule_enable),
        "disable": config_changes.parse_hhmm(current.auto_schedule_disable),
    }
    config_changes.validate_schedule(
        args["auto_schedule"], args.get("enable", stored["enable"]), args.get("disable", stored["disable"])
    )
    return args


def _load(session: Session, kind: str, device_id: int) -> InputConfig | OutputConfig:
    row: InputConfig | OutputConfig | None = None
    if kind == "input":
        row = session.get(InputConfig, device_id)
    elif kind == "output":
        row = session.get(OutputConfig, device_id)
    if row is None:
        abort(404)
    return row


# ---- JSON API -----------------------------------------------------------------------------


def _api_view(device: dict[str, Any]) -> dict[str, Any]:
    view = dict(device)
    if view["next_transition"] is not None:
        view["next_transition"] = {k: v for k, v in view["next_transition"].items() if k != "local"}
    return view


@api_bp.get("/schedules")
def get_schedules() -> dict[str, Any]:
    with ctx().session_factory() as session:
        enabled, devices = _all(session)
    return {
        "enabled": enabled,
        "timezone": ctx().settings.user_tz,
        "devices": [_api_view(d) for d in devices],
    }


@api_bp.put("/schedules/<kind>/<int:device_id>")
def put_schedule(kind: str, device_id: int) -> dict[str, Any]:
    body = api.json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    with ctx().session_factory() as session:
        current = _load(session, kind, device_id)
        try:
            args = _validate(body, current)
        except ChangeError as exc:
            raise ApiError(exc.status, str(exc), exc.field) from None
    reply = commands.request("set_schedule", {"kind": kind, "id": device_id, **args}, actor=auth.actor())
    if not reply.ok:
        raise ApiError(reply.status if reply.status >= 400 else 500, reply.error or "failed", reply.field)
    with ctx().session_factory() as session:
        return _api_view(_describe(kind, _load(session, kind, device_id), datetime.now(_tz())))


@api_bp.put("/scheduler-enabled")
def put_scheduler_enabled() -> dict[str, Any]:
    body = api.json_body()
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        raise ApiError(400, "enabled must be true or false", "enabled")
    reply = commands.request("set_scheduler_enabled", {"enabled": body["enabled"]}, actor=auth.actor())
    if not reply.ok:
        raise ApiError(reply.status if reply.status >= 400 else 500, reply.error or "failed", reply.field)
    with ctx().session_factory() as session:
        return {"enabled": config_changes.scheduler_enabled(session)}


# ---- page ---------------------------------------------------------------------------------


def _quiet_window(session: Session) -> rules.QuietHours:
    settings = ctx().settings
    default = rules.QuietHours(settings.quiet_hours_not_before, settings.quiet_hours_not_after)
    return config_changes.quiet_hours(session, default)


def _quiet_view(window: rules.QuietHours) -> dict[str, Any]:
    return {
        "not_before": window.not_before.strftime("%H:%M"),
        "not_after": window.not_after.strftime("%H:%M"),
        "all_outputs": window.all_outputs,
    }


def _render(
    typed: dict[str, Any] | None = None,
    errors: Errors | None = None,
    open_key: str | None = None,
    status: int = 200,
    quiet_typed: dict[str, Any] | None = None,
    quiet_errors: Errors | None = None,
) -> tuple[str, int]:
    with ctx().session_factory() as session:
        rows = [(kind, row) for kind in KINDS for row in _rows(session, kind)]
        keys = {f"{kind}-{row.id}": i for i, (kind, row) in enumerate(rows)}
        names = [
            (i, f"{row.device_label or ''} {row.device_key} {kind}") for i, (kind, row) in enumerate(rows)
        ]
        # One page of devices (inputs, then outputs); the open one's page when a form was refused.
        listing = paging.paginate(names, open_id=keys.get(open_key or ""), keep_order=True)
        now = datetime.now(_tz())
        devices = [_describe(rows[i][0], rows[i][1], now) for i in listing.ids]
        enabled = config_changes.scheduler_enabled(session)
        # A refused form shows what was typed, so the person can correct it instead of retyping.
        quiet = quiet_typed if quiet_typed is not None else _quiet_view(_quiet_window(session))
    if typed is not None and open_key is not None:
        for device in devices:
            if f"{device['kind']}-{device['id']}" == open_key:
                device.update(typed)
    page = render_template(
        "config_schedule.html",
        enabled=enabled,
        devices=devices,
        errors=errors or {},
        open_key=open_key,
        tz_name=ctx().settings.user_tz,
        quiet=quiet,
        quiet_errors=quiet_errors or {},
        page=listing,
    )
    return page, status


def _posted_device() -> tuple[str, int]:
    """The form's device kind and id; anything else is a 400, as no page of ours posts it."""
    kind = request.form.get("kind", "")
    raw_id = request.form.get("id", "").strip()
    if kind not in KINDS or not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > 19:
        abort(400)
    return kind, int(raw_id)


@bp.get("/schedule")
def page() -> tuple[str, int]:
    # ?open=input-5 shows the page holding that device, its card open (where a save lands)
    return _render(open_key=request.args.get("open", "")[:40] or None)


@bp.post("/schedule")
def save() -> Response | tuple[str, int]:
    form = request.form
    kind, device_id = _posted_device()
    body = {
        "auto_schedule": "auto_schedule" in form,  # an unticked checkbox is absent
        "enable": form.get("enable", ""),
        "disable": form.get("disable", ""),
    }
    errors: Errors = {}
    with ctx().session_factory() as session:
        current = _load(session, kind, device_id)
        name = current.device_label or current.device_key
        args: dict[str, Any] = {}
        # Each time on its own first, so both bad fields are marked at once.
        for field in ("enable", "disable"):
            try:
                config_changes.validate_time(body[field], field)
            except ChangeError as exc:
                errors[field] = str(exc)
        if not errors:
            try:
                args = _validate(body, current)
            except ChangeError as exc:
                errors[exc.field or "_form"] = str(exc)
    if not errors:
        reply = commands.request("set_schedule", {"kind": kind, "id": device_id, **args}, actor=auth.actor())
        if reply.ok:
            flash(f"Saved the schedule of {name}.", "success")
            return redirect(url_for(".page", open=f"{kind}-{device_id}", _anchor=f"{kind}-{device_id}"))
        if reply.status == 404:
            abort(404)
        errors[reply.field or "_form"] = reply.error or "The change was refused"
    typed = {"auto_schedule": body["auto_schedule"], "enable": body["enable"], "disable": body["disable"]}
    return _render(typed, errors, f"{kind}-{device_id}", status=400)


@bp.post("/schedule/enabled")
def save_enabled() -> Response:
    enabled = request.form.get("enabled") == "1"
    reply = commands.request("set_scheduler_enabled", {"enabled": enabled}, actor=auth.actor())
    if reply.ok:
        flash(f"The auto-scheduler is {'on' if enabled else 'off'}.", "success")
    else:
        flash(f"Not saved: {reply.error}", "danger")
    return redirect(url_for(".page"))


def local_times(row: InputConfig | OutputConfig, now: datetime) -> dict[str, str | None]:
    """The row's stored times moved to USER_TZ, each naming the same instant today as now."""
    zone = zone_of(row.auto_schedule_tz, _tz())
    if zone is None:
        zone = UTC  # an unknown zone name: read the times as the original did
    converted: dict[str, str | None] = {}
    for name, stored in (("enable", row.auto_schedule_enable), ("disable", row.auto_schedule_disable)):
        hhmm = config_changes.parse_hhmm(stored)
        converted[name] = convert_time(hhmm, zone, _tz(), now) if hhmm is not None else None
    return converted


@bp.post("/schedule/convert")
def convert_to_local() -> Response | tuple[str, int]:
    """One click: a schedule kept in its own zone (the original's UTC) moved to USER_TZ, same instants."""
    kind, device_id = _posted_device()
    with ctx().session_factory() as session:
        row = _load(session, kind, device_id)
        name = row.device_label or row.device_key
        was = row.auto_schedule_tz or ctx().settings.user_tz
        before = (row.auto_schedule_enable, row.auto_schedule_disable)
        times = local_times(row, datetime.now(_tz()))
        auto = bool(row.auto_schedule)
    args = {"auto_schedule": auto, **times, "schedule_tz": None}
    reply = commands.request("set_schedule", {"kind": kind, "id": device_id, **args}, actor=auth.actor())
    if reply.ok:
        flash(
            f"Converted the schedule of {name} from {was} to {ctx().settings.user_tz}: "
            f"enable {before[0] or '–'} → {times['enable'] or '–'}, "
            f"disable {before[1] or '–'} → {times['disable'] or '–'} (the same moments today).",
            "success",
        )
        return redirect(url_for(".page", _anchor=f"{kind}-{device_id}"))
    if reply.status == 404:
        abort(404)
    errors = {reply.field or "_form": reply.error or "The change was refused"}
    return _render(None, errors, f"{kind}-{device_id}", status=400)


_QUIET_LABELS = {"not_before": "Not before", "not_after": "Not after"}


@bp.post("/schedule/quiet-hours")
def save_quiet_hours() -> Response | tuple[str, int]:
    form = request.form
    times = {name: form.get(name, "").strip() for name in ("not_before", "not_after")}
    typed: dict[str, object] = {**times, "all_outputs": "all_outputs" in form}  # unticked: absent
    errors: Errors = {}
    # Both times are checked before anything is sent, so one bad field never saves the other.
    for name, text in times.items():
        try:
            parse_hhmm(text)
        except ValueError:
            errors[name] = f"{_QUIET_LABELS[name]} must be a time as HH:MM (00:00 to 23:59)."
    if not errors:
        reply = commands.request("set_quiet_hours", typed, actor=auth.actor())
        if reply.ok:
            # The flash reads the stored window back, so it shows what the processor actually saved.
            with ctx().session_factory() as session:
                saved = _quiet_view(_quiet_window(session))
            held = "every output is" if saved["all_outputs"] else "only notifications are"
            flash(
                f"Saved quiet hours: informational inputs may notify from {saved['not_before']} "
                f"to {saved['not_after']}; outside that window {held} held back.",
                "success",
            )
            return redirect(url_for(".page", _anchor="quiet-hours"))
        errors[reply.field or "_form"] = reply.error or "The change was refused"
    return _render(quiet_typed=typed, quiet_errors=errors, status=400)
