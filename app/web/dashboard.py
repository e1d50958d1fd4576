"""The dashboard page: devices with their toggles, meters, the outputs switch, health and the panic button.

Over ~400 lines as one cohesive thing: one page, its view (device rows, meters, health badges) and
the form posts made from it (toggles, the outputs switch, meter reset, panic), which redirect back to
it and share its row and paging helpers; the JSON API and the configuration pages live elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import QueryableAttribute, Session, selectinload
from werkzeug.wrappers import Response

from app.core import health, limits
from app.core.channels import Reply
from app.engine import clocks, commands, config_changes
from app.engine.presence import seen_online
from app.ops import backup_status, badges
from app.store import db_writes, registry, roles
from app.store.models import DeviceRow, DeviceView, InputConfig, OutputConfig
from app.web import auth, paging
from app.web.context import ctx

bp = Blueprint("dashboard", __name__)

# The hub's own buttons: the panic button has its own big button, the dash button is for scripts.
BUILTIN_KEYS = frozenset({registry.PANIC_BUTTON, registry.DASH_BUTTON})
BUILTIN_TYPES = frozenset({"Panic Button", "Dash Button"})
MAX_METERS = 50  # meter cards shown; a house has a handful
MAX_METER_VALUE = 2**31 - 1  # the register is a signed 32-bit number on the meter device
ON_OFF = {"1": True, "0": False}


@dataclass
class Row:
    """One line of the inputs or outputs table: a device, or an input group collapsed to one line."""

    label: str
    device_type: str
    enabled: bool
    online: bool
    last_seen: float | None
    device_id: int | None = None
    group: str | None = None
    members: list[Row] = field(default_factory=list)
    # "10 min behind" when the device's clock is off by a second or more, and whether past the warning
    clock: str | None = None
    clock_warning: bool = False


@dataclass
class Meter:
    input_id: int
    label: str
    reading: str
    reset_value: int | None
    additive: bool


def label_of(row: DeviceView) -> str:
    return row.device_label or row.device_key


def _input_enabled(row: DeviceView) -> bool:
    return bool(row.device_enabled)  # the original treats a NULL input flag as off


def _output_enabled(row: DeviceView) -> bool:
    return row.device_enabled is not False  # outputs predate their flag, so NULL means on


def is_builtin(row: DeviceView) -> bool:
    return row.device_key in BUILTIN_KEYS or row.device_type in BUILTIN_TYPES


def _device_row(row: DeviceView, now: float, is_input: bool | None = None) -> Row:
    """A table row from a device row (a model instance, or the light columns _LIST_COLUMNS reads)."""
    last, online = seen_online(ctx().presence, ctx().settings, row, now)
    if is_input is None:
        is_input = isinstance(row, InputConfig)
    enabled = _input_enabled(row) if is_input else _output_enabled(row)
    out = Row(label_of(row), row.device_type, enabled, online, last, device_id=row.id)
    offset = clocks.offsets.offset(row.device_key)
    if offset is not None and abs(offset) >= clocks.SHOWN_SECONDS:
        out.clock = clocks.describe(offset)
        out.clock_warning = abs(offset) > ctx().settings.clock_offset_warning
    return out


class DeviceColumns(NamedTuple):
    """The columns the tables show of one device (group_name: inputs only)."""

    id: int
    device_key: str
    device_label: str | None
    device_type: str
    device_enabled: bool | None
    origin: str | None
    last_seen: datetime | None
    group_name: str | None = None


def _light(session: Session, model: type[DeviceRow]) -> list[DeviceColumns]:
    """Only the columns the tables show, for every device: no model objects for 2,000 rows."""
    columns: list[QueryableAttribute[object]] = [model.id, model.device_key, model.device_label]
    columns += [model.device_type, model.device_enabled, model.origin, model.last_seen]
    no_group: tuple[None, ...] = ()
    if model is InputConfig:
        columns.append(InputConfig.group_name)
    else:
        no_group = (None,)  # outputs have no group_name column
    result = session.execute(select(*columns))
    rows = [DeviceColumns._make(tuple(found) + no_group) for found in result]
    rows.sort(key=lambda r: (label_of(r).lower(), r.device_key))
    return rows


def _paged_rows(rows: list[Row], param: str) -> tuple[list[Row], paging.Page]:
    """One page of table rows (a group counts as one), filtered by ?q= on the label and members."""
    text = {i: " ".join([r.label, *(m.label for m in r.members)]) for i, r in enumerate(rows)}
    page = paging.paginate(
        [(i, r.label) for i, r in enumerate(rows)], lambda t: text[t[0]], keep_order=True, param=param
    )
    return [rows[i] for i in page.ids], page


def input_rows(inputs: list[DeviceColumns], now: float) -> list[Row]:
    """Inputs with each group collapsed to one row, in the order of the first member (sorted by label)."""
    rows: list[Row] = []
    groups: dict[str, Row] = {}
    for inp in inputs:
        if is_builtin(inp):
            continue
        device = _device_row(inp, now, is_input=True)
        name = (inp.group_name or "").strip()
        if not name:
            rows.append(device)
            continue
        group = groups.get(name)
        if group is None:
            group = groups[name] = Row(name, "Group", False, False, None, group=name)
            rows.append(group)
        group.members.append(device)
        # As in the original: a group is on when any member is on, online when any member is.
        group.enabled = group.enabled or device.enabled
        group.online = group.online or device.online
        if device.last_seen is not None:
            group.last_seen = max(group.last_seen or 0.0, device.last_seen)
    types = {r.group: {m.device_type for m in r.members} for r in rows if r.group}
    for r in rows:
        if r.group and len(types[r.group]) == 1:
            r.device_type = next(iter(types[r.group]))
    return rows


def _components() -> list[tuple[str, str, str]]:
    """(name, text, Bootstrap colour) for the health strip."""
    states = health.components()

    def badge(name: str, *components: str, absent: str = "off") -> tuple[str, str, str]:
        found = [states[c] for c in components if c in states]
        if not found:
            return name, absent, "secondary"
        bad = [s for s in found if s.get("state") not in ("connected", "ok", "running", "listening")]
        if bad:
            return name, str(bad[0].get("state") or "unknown"), "danger"
        return name, "ok", "success"

    strip = [
        _database_badge(states.get(db_writes.COMPONENT)),
        badge("RabbitMQ", "rabbitmq_source", "control_publisher", absent="unknown"),
        badge("MQTT", "mqtt", absent="unknown")
        if ctx().settings.mqtt_enabled
        else ("MQTT", "off", "secondary"),
        _telegram_badge(states.get("telegram")),
        badge("InfluxDB", "influxdb"),
        _backup_badge(),
    ]
    if ctx().settings.ha_enabled:  # a standby pair: this hub's role
        strip.append(_role_badge())
    if "sqs_control" in states:  # shown only where SQS control is switched on
        strip.append(badge("SQS control", "sqs_control"))
    # Healthchecks badges (HEALTHCHECKS_BADGE_CSV), as the original showed them under its dashboard
    colours = {"up": "success", "grace": "warning", "started": "info", "down": "danger"}
    for _, hc in badges.states(ctx().settings):
        strip.append((f"Healthchecks {hc.label}", hc.state, colours.get(hc.state, "secondary")))
    return strip


def _database_badge(state: health.Component | None) -> tuple[str, str, str]:
    """ok, or "degraded: database cannot write" while writes fail (decisions are held in memory)."""
    text = (state["state"] if state else "") or "unknown"
    if text == "ok":
        return "Database", "ok", "success"
    if text == db_writes.DEGRADED:
        detail = (state["detail"] if state else None) or db_writes.CANNOT_WRITE
        return "Database", f"{text}: {detail}", "danger"
    return "Database", text, "secondary"


def _role_badge() -> tuple[str, str, str]:
    info = roles.status(ctx().session_factory, ctx().settings)
    others = [f"{n['node']} {n['role']}" for n in info["nodes"] if n["node"] != info["node"]]
    text = f"{info['node']} {info['role']}" + (f"; {', '.join(others)}" if others else "")
    return "Hub", text, "success" if info["acting"] else "info"


def _telegram_badge(state: health.Component | None) -> tuple[str, str, str]:
    """The TelegramService's own state; absent when no bot token is set."""
    if state is None:
        return "Telegram", "off", "secondary"
    text = state["state"] or "unknown"
    if text == "ok":
        return "Telegram", "ok", "success"
    # starting and retrying recover by themselves; down and stopped do not
    return "Telegram", text, "warning" if text in ("starting", "retrying") else "danger"


def _backup_badge() -> tuple[str, str, str]:
    status = backup_status.read_status(ctx().settings)
    colour = {"ok": "success", "stale": "warning", "never": "warning", "failed": "danger"}
    return "Last backup", backup_status.summary_text(status), colour.get(status.state, "secondary")


def _page(
    status: int = 200, errors: dict[str, str] | None = None, form: dict[int, tuple[str, str]] | None = None
) -> ResponseReturnValue:
    """Render the dashboard; errors and form (keyed by meter id) put messages and typed values back."""
    now = time.time()
    with ctx().session_factory() as session:
        inputs = _light(session, InputConfig)
        outputs = _light(session, OutputConfig)
        meter_rows = session.scalars(
            select(InputConfig).join(InputConfig.meter).options(selectinload(InputConfig.meter))
        )
        meters = sorted(
            (
                Meter(
                    inp.id,
                    label_of(inp),
                    inp.meter.meter_reading if inp.meter else "",
                    inp.meter.meter_reset_value if inp.meter else None,
                    bool(inp.meter and inp.meter.meter_reset_additive),
                )
                for inp in meter_rows
                if registry.is_meter(inp.device_type)
            ),
            key=lambda m: m.label.lower(),
        )[:MAX_METERS]
        input_page_rows, input_page = _paged_rows(input_rows(inputs, now), "page")
        output_page_rows, output_page = _paged_rows(
            [_device_row(out, now, is_input=False) for out in outputs], "opage"
        )
        # each list's page links keep the other list's page
        input_page = replace(input_page, others=(("opage", output_page.number),))
        output_page = replace(output_page, others=(("page", input_page.number),))
        panic = _panic(session)
        html = render_template(
            "dashboard.html",
            panic=panic,
            inputs=input_page_rows,
            outputs=output_page_rows,
            input_page=input_page,
            output_page=output_page,
            meters=meters,
            outputs_enabled=config_changes.outputs_enabled(session),
            health=_components(),
            refusals=limits.refusals.recent(now),
            errors=errors or {},
            form=form or {},
        )
    return html, status


@dataclass
class Panic:
    """The built-in panic button as the dashboard shows it: armed or not, and what it triggers."""

    input_id: int
    armed: bool
    outputs: list[str]


def _panic(session: Session) -> Panic | None:
    row = session.scalar(
        select(InputConfig)
        .options(selectinload(InputConfig.output_links))
        .where(InputConfig.device_key == registry.PANIC_BUTTON)
    )
    if row is None:
        return None
    ids = [link.output_device_id for link in row.output_links]
    outputs = session.scalars(select(OutputConfig).where(OutputConfig.id.in_(ids))).all() if ids else []
    return Panic(row.id, _input_enabled(row), sorted((label_of(o) for o in outputs), key=str.lower))


@bp.get("/")
def index() -> ResponseReturnValue:
    return _page()


def _back() -> Response:
    return redirect(url_for("dashboard.index"))


def _send(action: str, args: dict[str, Any]) -> Reply:
    return commands.request(action, args, actor=auth.actor())


def _on_off() -> bool | None:
    """The submitted enabled value; a bad one is flashed (the toggle buttons have no field to show it)."""
    value = ON_OFF.get(request.form.get("enabled", ""))
    if value is None:
        flash("Nothing changed: enabled must be 1 or 0.", "danger")
    return value


def _failed(reply: Reply, what: str) -> bool:
    if reply.ok:
        return False
    if reply.status == 404:
        abort(404)
    flash(f"{what} was not changed: {reply.error}", "danger")
    return True


def _saved_input(session: Session, input_id: int) -> str:
    row = session.get(InputConfig, input_id)
    return "gone" if row is None else ("enabled" if _input_enabled(row) else "disabled")


def _toggle(model: type[DeviceRow], action: str, row_id: int) -> Response:
    """Switch one input or output on or off through the processor, then report the saved state."""
    with ctx().session_factory() as session:
        row = session.get(model, row_id) if row_id <= config_changes.MAX_ID else None
        if row is None:
            abort(404)
        label = label_of(row)
    enabled = _on_off()
    if enabled is None:
        return _back()
    reply = _send(action, {"id": row_id, "fields": {"device_enabled": enabled}})
    if not _failed(reply, label):
        # Report what the database now holds, not what the button asked for.
        with ctx().session_factory() as session:
            saved = session.get(model, row_id)
            if saved is None:
                state = "gone"
            elif isinstance(saved, InputConfig):
                state = "enabled" if _input_enabled(saved) else "disabled"
            else:
                state = "enabled" if _output_enabled(saved) else "disabled"
        flash(f"{label} is now {state}.", "success")
    return _back()


@bp.post("/inputs/<int:input_id>/enabled")
def toggle_input(input_id: int) -> Response:
    return _toggle(InputConfig, "update_input", input_id)


@bp.post("/groups/enabled")
def toggle_group() -> Response:
    name = request.form.get("group", "").strip()
    with ctx().session_factory() as session:
        ids = list(
            session.scalars(
                select(InputConfig.id).where(InputConfig.group_name == name).order_by(InputConfig.id)
            )
        )
    if not name or not ids:
        abort(404)
    enabled = _on_off()
    if enabled is None:
        return _back()
    # One command for the whole group: every member changes or none does, with one history entry.
    reply = _send("set_group_enabled", {"group": name, "enabled": enabled})
    if not _failed(reply, f"Group {name}"):
        with ctx().session_factory() as session:
            states = {_saved_input(session, i) for i in ids}
        state = states.pop() if len(states) == 1 else "partly enabled"
        flash(f"Group {name} ({len(ids)} inputs) is now {state}.", "success")
    return _back()


@bp.post("/outputs/<int:output_id>/enabled")
def toggle_output(output_id: int) -> Response:
    return _toggle(OutputConfig, "update_output", output_id)


@bp.post("/outputs-enabled")
def outputs_switch() -> Response:
    enabled = _on_off()
    if enabled is None:
        return _back()
    reply = _send("set_outputs_enabled", {"enabled": enabled})
    if not _failed(reply, "The outputs switch"):
        with ctx().session_factory() as session:
            on = config_changes.outputs_enabled(session)
        flash(f"All outputs are now {'on' if on else 'off'}.", "success")
    return _back()


def _parse_reset(raw_value: str, raw_mode: str) -> tuple[int | None, str | None, dict[str, str]]:
    errors: dict[str, str] = {}
    value: int | None = None
    raw_value = raw_value.strip()
    if raw_value:
        try:
            value = int(raw_value)
        except ValueError:
            errors["value"] = f"{raw_value!r} is not a whole number."
        else:
            if not -MAX_METER_VALUE - 1 <= value <= MAX_METER_VALUE:
                errors["value"] = f"The value must be from {-MAX_METER_VALUE - 1} to {MAX_METER_VALUE}."
    mode = raw_mode if raw_mode in ("set", "adjust") else None
    if mode is None:
        errors["mode"] = "Choose set or adjust."
    return value, mode, errors


@bp.post("/meters/<int:input_id>/reset")
def meter_reset(input_id: int) -> ResponseReturnValue:
    with ctx().session_factory() as session:
        row = session.get(InputConfig, input_id) if input_id <= config_changes.MAX_ID else None
        if row is None or not registry.is_meter(row.device_type):
            abort(404)
        label = label_of(row)
    raw_value, raw_mode = request.form.get("value", ""), request.form.get("mode", "")
    value, mode, errors = _parse_reset(raw_value, raw_mode)
    if errors:
        # Shown beside the fields of this meter's form; nothing is sent.
        return _page(
            400, {f"{input_id}.{k}": v for k, v in errors.items()}, {input_id: (raw_value, raw_mode)}
        )
    reply = _send("meter_reset", {"input_id": input_id, "value": value, "mode": mode})
    if reply.ok:
        result = reply.result or {}
        verb = "adjusted by" if result.get("mode") == "adjust" else "set to"
        reading = result.get("meter_reading") or ""
        flash(f"{label} {verb} {result.get('value')}; the reading is now {reading}.", "success")
    elif reply.status == 404:
        abort(404)
    elif reply.field in ("value", "mode"):
        return _page(400, {f"{input_id}.{reply.field}": reply.error or ""}, {input_id: (raw_value, raw_mode)})
    else:
        flash(f"{label} was not reset: {reply.error}", "danger")
    return _back()


@bp.post("/panic")
def panic() -> ResponseReturnValue:
    # Without JavaScript the first press lands here without confirm=yes: ask on a page of its own.
    if request.form.get("confirm") != "yes":
        return render_template("panic_confirm.html")
    reply = _send("fire_input", {"device_key": registry.PANIC_BUTTON})
    result = reply.result if reply.ok and isinstance(reply.result, dict) else None
    if result is None:
        flash(f"The panic button did not fire: {reply.error or 'no answer'}.", "danger")
    elif result.get("fired"):
        outputs = result.get("outputs") or []
        fired = [o.get("output_label") or o.get("output_key") for o in outputs if o.get("fired")]
        if fired:
            flash(f"Panic button fired: triggered {', '.join(map(str, fired))}.", "success")
        else:
            flash("Panic button fired, but no linked output was triggered.", "warning")
    else:
        reason = result.get("reason") or "unknown"
        detail = result.get("detail")
        flash(f"The panic button did not fire: {reason}{f' ({detail})' if detail else ''}.", "warning")
    return _back()
