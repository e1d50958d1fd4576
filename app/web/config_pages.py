"""Configuration pages (inputs, outputs, links): server-rendered forms; the EventProcessor saves."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from app import commands, config_changes, meters, protocols, registry, rules
from app.channels import Reply
from app.config_changes import ChangeError
from app.models import InputConfig, InputLink, OutputConfig, OutputLink
from app.processor import load_snapshot
from app.web import api, auth, paging
from app.web.context import ctx
from app.web.masking import mask_params, unmask_params  # noqa: F401  (mask_params: used by tests too)

bp = Blueprint("config_pages", __name__, url_prefix="/config")

# The hub's own buttons have nothing to configure on the inputs page; they still appear on the links page.
BUTTON_TYPES = frozenset({"panic button", "dash button"})

INPUT_TEXT = ("device_label", "group_name")
INPUT_NUMBERS = ("activation_interval", "multi_trigger_rate", "multi_trigger_interval")
INPUT_CHECKBOXES = ("multi_trigger", "info_notify", "alert_offline")
METER_TEXT = ("meter_iot_topic", "meter_reading_unit")
METER_NUMBERS = (
    "meter_reading_unit_factor",
    "meter_reading_unit_precision",
    "meter_reset_value",
    "meter_low_limit",
    "meter_high_limit",
)
METER_CHECKBOXES = ("meter_reset_additive",)
OUTPUT_TEXT = ("device_label", "device_params", "trigger_topic", "generation_override")
OUTPUT_NUMBERS = ("trigger_interval",)
OUTPUT_CHECKBOXES = ("device_enabled", "alert_offline")

_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,15}\.[0-9]{1,9}")
# The pulse select: where a switch's trigger takes its duration from (output_config.pulse_seconds).
PULSE_CHOICES = ("input", "device", "fixed")
# Checkboxes on one links page before the editors move into the open card only.
MAX_INLINE_CHOICES = 3000
# More digits than any field accepts: parsed as "too large" instead of feeding int() a megabyte of digits.
_MAX_DIGITS = 30

Errors = dict[str, str]
Values = dict[str, Any]


# ---- ids and form parsing -------------------------------------------------------------------


def _parse_id(raw: str | None) -> int | None:
    """A row id from a query or form value; None for anything that cannot name a row."""
    raw = (raw or "").strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 1 <= value <= config_changes.MAX_ID else None


def _posted_id() -> int:
    if "id" not in request.form:
        abort(400)
    device_id = _parse_id(request.form.get("id"))
    if device_id is None:
        abort(404)
    return device_id


def _open_id() -> int | None:
    """The card to show open (?id=); an id that cannot exist is a 404 like an unknown one."""
    if "id" not in request.args:
        return None
    device_id = _parse_id(request.args.get("id"))
    if device_id is None:
        abort(404)
    return device_id


def _number(raw: str) -> int | str | None:
    """Form text to a typed value: '' → None, '12' → 12; anything else is left for the validator to refuse."""
    raw = raw.strip()
    if not raw:
        return None
    if _WHOLE_NUMBER.fullmatch(raw):
        digits = raw.lstrip("+-")
        if len(digits) > _MAX_DIGITS:
            return -(10**_MAX_DIGITS) if raw.startswith("-") else 10**_MAX_DIGITS
        return int(raw)
    if _DECIMAL.fullmatch(raw):
        return float(raw)
    return raw


def _typed(
    form: MultiDict[str, str], text: tuple[str, ...], numbers: tuple[str, ...], boxes: tuple[str, ...]
) -> Values:
    fields: Values = {name: form.get(name, "") for name in text}
    fields.update({name: _number(form.get(name, "")) for name in numbers})
    # An unticked checkbox is simply absent from the form.
    fields.update({name: name in form for name in boxes})
    return fields


def _typed_back(form: MultiDict[str, str], text: tuple[str, ...], boxes: tuple[str, ...]) -> Values:
    """What was typed, for showing the form again after a refusal."""
    values: Values = {name: form.get(name, "") for name in text}
    values.update({name: name in form for name in boxes})
    return values


def _check_each(validate: Callable[[Any], dict[str, Any]], fields: Values) -> tuple[Values, Errors]:
    """Run the shared validator field by field, so each bad field gets its own message."""
    clean: Values = {}
    errors: Errors = {}
    for name, value in fields.items():
        try:
            clean.update(validate({name: value}))
        except ChangeError as exc:
            errors[name] = _message(name, str(exc))
    return clean, errors


def _message(field: str, text: str) -> str:
    # The validators name the field ("activation_interval must be ..."); beside the field that reads oddly.
    prefix = f"{field} "
    text = text[len(prefix) :] if text.startswith(prefix) else text
    return text[:1].upper() + text[1:]


def _send_all(steps: list[tuple[str, dict[str, Any]]], what: list[str]) -> tuple[Reply, str]:
    """Send the commands in order, stopping at the first refusal; returns it and a note of what was saved.

    Everything was validated first, so a refusal here is rare (a timeout, a row removed meanwhile).
    """
    saved: list[str] = []
    reply = Reply(ok=True)
    for (action, args), name in zip(steps, what, strict=True):
        reply = commands.request(action, args, actor=auth.actor())
        if not reply.ok:
            break
        saved.append(name)
    note = f" The {' and '.join(saved)} were saved; the rest was not." if saved and not reply.ok else ""
    return reply, note


def _display(value: Any) -> Any:
    """A stored value as a form shows it: numbers as text, NULL as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return meters.limit_text(value)
    return str(value)


def _name(row: InputConfig | OutputConfig) -> str:
    return row.device_label or row.device_key


def _is_button(row: InputConfig) -> bool:
    return (row.device_type or "").strip().lower() in BUTTON_TYPES


def _render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


# ---- inputs ---------------------------------------------------------------------------------


def _paged(
    session: Session,
    model: type[InputConfig] | type[OutputConfig],
    open_id: int | None,
    skip_buttons: bool = False,
) -> paging.Page:
    """The page of rows to show: only ids, labels, keys and types are read for every row."""
    group = InputConfig.group_name if model is InputConfig else sa.literal(None)
    light = session.execute(
        select(model.id, model.device_label, model.device_key, model.device_type, group)
    ).all()
    names: dict[int, str] = {}
    search: dict[int, str] = {}
    for row_id, label, key, dtype, group_name in light:
        if skip_buttons and (dtype or "").strip().lower() in BUTTON_TYPES:
            continue
        names[row_id] = label or key
        search[row_id] = " ".join(t for t in (label, key, dtype, group_name) if t)
    if open_id is not None and open_id not in names:
        abort(404)
    return paging.paginate(list(names.items()), lambda r: search[r[0]], open_id)


def _load_page(
    session: Session, model: type[Any], page: paging.Page, options: Sequence[Any] = ()
) -> list[Any]:
    """The full rows of one page, in the page's order (a query of at most PAGE_SIZE rows)."""
    if not page.ids:
        return []
    rows = {r.id: r for r in session.scalars(select(model).where(model.id.in_(page.ids)).options(*options))}
    return [rows[i] for i in page.ids if i in rows]


def _input_rows(session: Session, open_id: int | None) -> tuple[list[InputConfig], paging.Page]:
    page = _paged(session, InputConfig, open_id, skip_buttons=True)
    return _load_page(session, InputConfig, page, [selectinload(InputConfig.meter)]), page


def _input_values(row: InputConfig) -> Values:
    values = {name: _display(getattr(row, name)) for name in INPUT_TEXT + INPUT_NUMBERS}
    values.update({name: bool(getattr(row, name)) for name in INPUT_CHECKBOXES})
    values["alert_offline"] = row.alert_offline is not False  # NULL: the default, on for inputs
    meter = row.meter
    for name in METER_TEXT + METER_NUMBERS:
        values[name] = _display(getattr(meter, name)) if meter is not None else ""
    values["meter_reset_additive"] = bool(meter.meter_reset_additive) if meter is not None else False
    return values


def _render_rows(
    template: str,
    rows: Sequence[Any],
    values_of: Callable[[Any], Values],
    open_id: int | None,
    typed: Values | None,
    errors: Errors | None,
    status: int,
    **extra: Any,
) -> tuple[str, int]:
    """A configuration list page; the open row shows what was typed, so a rejected form keeps it."""
    if open_id is not None and open_id not in {r.id for r in rows}:
        abort(404)
    values = {row.id: values_of(row) for row in rows}
    if typed is not None and open_id is not None:
        values[open_id].update(typed)
    return _render(template, status, rows=rows, values=values, errors=errors or {}, open_id=open_id, **extra)


def _render_inputs(
    session: Session,
    open_id: int | None,
    typed: Values | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> tuple[str, int]:
    rows, page = _input_rows(session, open_id)
    return _render_rows(
        "config_inputs.html",
        rows,
        _input_values,
        open_id,
        typed,
        errors,
        status,
        is_meter=lambda row: registry.is_meter(row.device_type),
        settings=ctx().settings,
        page=page,
    )


def _input_summary(row: InputConfig) -> str:
    settings = ctx().settings
    latch = (
        row.activation_interval
        if row.activation_interval is not None
        else settings.default_activation_interval
    )
    parts = [f"latch {latch} s"]
    if row.multi_trigger:
        rate = row.multi_trigger_rate or settings.default_multi_trigger_rate
        window = row.multi_trigger_interval or settings.default_trigger_window
        parts.append(f"multi-trigger {rate} within {window} s")
    else:
        parts.append("multi-trigger off")
    parts.append(f"info-notify {'on' if row.info_notify else 'off'}")
    if row.group_name:
        parts.append(f"group {row.group_name}")
    if row.meter is not None:
        low, high = row.meter.meter_low_limit, row.meter.meter_high_limit
        parts.append(f"meter limits {meters.limit_text(low)} to {meters.limit_text(high)}")
    return f"Saved {_name(row)}: {', '.join(parts)}."


@bp.get("/inputs")
def inputs() -> tuple[str, int]:
    with ctx().session_factory() as session:
        return _render_inputs(session, _open_id())


@bp.post("/inputs")
def save_input() -> Response | tuple[str, int]:
    device_id = _posted_id()
    with ctx().session_factory() as session:
        row = session.get(InputConfig, device_id)
        if row is None or _is_button(row):
            abort(404)
        meter = registry.is_meter(row.device_type)
    form = request.form
    input_fields, errors = _check_each(
        config_changes.validate_input_fields, _typed(form, INPUT_TEXT, INPUT_NUMBERS, INPUT_CHECKBOXES)
    )
    meter_fields: Values = {}
    if meter:
        meter_fields, meter_errors = _check_each(
            config_changes.validate_meter_fields, _typed(form, METER_TEXT, METER_NUMBERS, METER_CHECKBOXES)
        )
        errors.update(meter_errors)
        low, high = meter_fields.get("meter_low_limit"), meter_fields.get("meter_high_limit")
        # The processor checks this too, but only after the input half would already be saved.
        if low is not None and high is not None and low > high:
            errors["meter_low_limit"] = f"Must not be above the high limit ({meters.limit_text(high)})"
    if not errors:
        args: dict[str, Any] = {"id": device_id, "fields": input_fields}
        if meter:
            args["meter_fields"] = meter_fields  # one command: both halves are saved or neither
        reply, note = _send_all([("update_input", args)], ["settings"])
        if reply.ok:
            return _saved(InputConfig, device_id, _input_summary, [selectinload(InputConfig.meter)])
        errors = _refusal(reply, note)
    typed = _typed_back(
        form, INPUT_TEXT + INPUT_NUMBERS + METER_TEXT + METER_NUMBERS, INPUT_CHECKBOXES + METER_CHECKBOXES
    )
    with ctx().session_factory() as session:
        return _render_inputs(session, device_id, typed, errors, status=_error_status(errors))


def _saved(
    model: type[InputConfig] | type[OutputConfig],
    device_id: int,
    summary: Callable[[Any], str],
    options: Sequence[Any] = (),
) -> Response:
    """After a save: flash what was saved (read back, as stored) and go back to the row."""
    with ctx().session_factory() as session:
        saved = session.get(model, device_id, options=list(options))
        if saved is None:  # removed between the save and this read
            abort(404)
        flash(summary(saved), "success")
    kind = "input" if model is InputConfig else "output"
    return redirect(url_for(f".{kind}s", id=device_id, _anchor=f"{kind}-{device_id}"))


def _refusal(reply: Reply, note: str) -> Errors:
    """The errors for a refused save; a device that vanished meanwhile is a 404."""
    if reply.status == 404:
        abort(404)
    return _reply_errors(reply, note)


def _reply_errors(reply: Reply, note: str) -> Errors:
    """A processor refusal, shown beside its field when it names one, else at the top of the card."""
    message = _message(reply.field or "", reply.error or "The change was refused")
    errors = {reply.field or "_form": message, "_status": str(reply.status)}
    if note or reply.field:
        errors["_form"] = (message if not reply.field else "The change was refused.") + note
    return errors


def _error_status(errors: Errors) -> int:
    status = errors.pop("_status", "400")
    return int(status) if status.isdigit() and 400 <= int(status) < 600 else 400


# ---- outputs --------------------------------------------------------------------------------


def _output_rows(session: Session, open_id: int | None) -> tuple[list[OutputConfig], paging.Page]:
    page = _paged(session, OutputConfig, open_id)
    return _load_page(session, OutputConfig, page), page


def _output_values(row: OutputConfig) -> Values:
    values = {name: _display(getattr(row, name)) for name in OUTPUT_TEXT + OUTPUT_NUMBERS}
    values["device_params"] = mask_params(row.device_params)
    values["device_enabled"] = row.device_enabled is not False  # outputs predate the flag: NULL means on
    values["alert_offline"] = row.alert_offline is True  # NULL: the default, off for outputs
    values["pulse"], values["pulse_seconds"] = _pulse_view(row.pulse_seconds)
    return values


def _pulse_view(stored: int | None) -> tuple[str, Any]:
    if stored is None:
        return "device", ""
    if stored == rules.PULSE_INPUT_INTERVAL:
        return "input", ""
    return "fixed", stored


def _pulse_field(form: MultiDict[str, str], errors: Errors) -> Values:
    """The pulse select and seconds as the pulse_seconds field; a bad choice is an error beside it."""
    if "pulse" not in form:
        return {}  # a form without the field (a script, an old page) leaves the stored pulse alone
    choice = form.get("pulse", "")
    if choice == "input":
        return {"pulse_seconds": rules.PULSE_INPUT_INTERVAL}
    if choice == "device":
        return {"pulse_seconds": None}
    if choice != "fixed":
        errors["pulse"] = "Choose where the pulse length comes from."
        return {}
    seconds = _number(form.get("pulse_seconds", ""))
    if not isinstance(seconds, int) or not 0 <= seconds <= 86400:
        errors["pulse_seconds"] = "A fixed pulse needs whole seconds from 0 to 86400."
        return {}
    return {"pulse_seconds": seconds}


def _pulse_text(stored: int | None) -> str:
    if stored is None:
        return "pulse: device default"
    if stored == rules.PULSE_INPUT_INTERVAL:
        return "pulse: latch interval of the input"
    return f"pulse: {stored} s"


def _render_outputs(
    session: Session,
    open_id: int | None,
    typed: Values | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> tuple[str, int]:
    rows, page = _output_rows(session, open_id)
    return _render_rows(
        "config_outputs.html",
        rows,
        _output_values,
        open_id,
        typed,
        errors,
        status,
        page=page,
        generations=[("", "As detected")] + [(g, protocols.LABELS[g]) for g in protocols.GENERATIONS],
        speaks=_speaks,
    )


def _speaks(row: OutputConfig) -> str:
    """What the page says about the wire generation the output's device speaks, and why."""
    if row.generation_override:
        heard = f"; heard speaking {row.generation.upper()}" if row.generation else ""
        chosen = protocols.LABELS.get(row.generation_override, row.generation_override)
        return f"{chosen}, set by hand{heard}."
    if row.generation:
        device = f" from device {row.generation_device}" if row.generation_device else ""
        return f"{protocols.LABELS.get(row.generation, row.generation)}, detected{device}."
    return "Not heard yet: sent the G1/G2 control message until its device speaks, unless set here."


def output_problems(session: Session, output_id: int, settings: Any) -> tuple[list[str], list[str]]:
    """(refusals, warnings) for an output as saved: what its device would reject, what holds its relays."""
    snap = load_snapshot(session)
    output = snap.outputs_by_id.get(output_id)
    if output is None:
        return [], []
    durations = [
        rules.pulse_duration(output, snap.inputs_by_id[input_id])
        for input_id, output_ids in snap.output_links.items()
        if output_id in output_ids and input_id in snap.inputs_by_id
    ]
    return protocols.setup_problems(
        output.generation,
        settings.handler_for(output.device_type),
        output.device_params,
        output.trigger_topic,
        durations,
    )


def _output_summary(row: OutputConfig) -> str:
    parts = ["enabled" if row.device_enabled is not False else "disabled"]
    parts.append(
        f"minimum interval {row.trigger_interval} s" if row.trigger_interval else "no minimum interval"
    )
    parts.append(f"topic {row.trigger_topic}" if row.trigger_topic else "default topic")
    parts.append("parameters set" if row.device_params else "no parameters")
    parts.append(_pulse_text(row.pulse_seconds))
    return f"Saved {_name(row)}: {', '.join(parts)}."


@bp.get("/outputs")
def outputs() -> tuple[str, int]:
    with ctx().session_factory() as session:
        return _render_outputs(session, _open_id())


@bp.post("/outputs")
def save_output() -> Response | tuple[str, int]:
    device_id = _posted_id()
    with ctx().session_factory() as session:
        row = session.get(OutputConfig, device_id)
        if row is None:
            abort(404)
        stored_params = row.device_params
    form = request.form
    typed = _typed(form, OUTPUT_TEXT, OUTPUT_NUMBERS, OUTPUT_CHECKBOXES)
    errors: Errors = {}
    submitted = form.get("device_params", "")
    params: str | None = None
    if form.get("clear_device_params"):
        params = ""  # the only way to empty write-only parameters from the page
    elif submitted.strip():  # blank keeps the stored secret: the page never holds it to send back
        try:
            params = unmask_params(submitted, stored_params)
        except ChangeError as exc:
            errors["device_params"] = str(exc)
    if params is None:
        typed.pop("device_params")  # unchanged (or refused): leave the stored value alone
    else:
        typed["device_params"] = params
    typed.update(_pulse_field(form, errors))
    fields, field_errors = _check_each(config_changes.validate_output_fields, typed)
    errors.update(field_errors)
    if not errors:
        reply, note = _send_all([("update_output", {"id": device_id, "fields": fields})], ["settings"])
        if reply.ok:
            response = _saved(OutputConfig, device_id, _output_summary)
            with ctx().session_factory() as session:
                refusals, warnings = output_problems(session, device_id, ctx().settings)
            for text in refusals:
                flash(f"Its triggers will be refused, as the device would reject them: {text}.", "danger")
            for text in warnings:
                flash(text, "warning")
            return response
        errors = _refusal(reply, note)
    back = _typed_back(form, OUTPUT_TEXT + OUTPUT_NUMBERS + ("pulse", "pulse_seconds"), OUTPUT_CHECKBOXES)
    with ctx().session_factory() as session:
        return _render_outputs(session, device_id, back, errors, status=_error_status(errors))


# ---- links ----------------------------------------------------------------------------------


def _choices(session: Session, model: type[InputConfig] | type[OutputConfig]) -> list[tuple[int, str, str]]:
    rows = session.execute(select(model.id, model.device_label, model.device_key, model.device_type))
    return sorted(((i, lbl or key, t) for i, lbl, key, t in rows), key=lambda r: (r[1].lower(), r[0]))


def _render_links(
    session: Session,
    open_id: int | None,
    typed: dict[str, set[int]] | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> tuple[str, int]:
    page = _paged(session, InputConfig, open_id)
    cards = _load_page(session, InputConfig, page)
    # Every input and output once, as (id, name, type): the choices of the open card's editor.
    all_inputs, outputs_ = _choices(session, InputConfig), _choices(session, OutputConfig)
    checked: dict[int, dict[str, set[int]]] = {
        row.id: {"output_ids": set(), "input_ids": set()} for row in cards
    }
    if page.ids:
        for input_id, output_id in session.execute(
            select(OutputLink.input_device_id, OutputLink.output_device_id).where(
                OutputLink.input_device_id.in_(page.ids)
            )
        ):
            checked[input_id]["output_ids"].add(output_id)
        for input_id, linked_id in session.execute(
            select(InputLink.input_device_id, InputLink.linked_device_id).where(
                InputLink.input_device_id.in_(page.ids)
            )
        ):
            checked[input_id]["input_ids"].add(linked_id)
    if typed is not None and open_id is not None:
        checked[open_id] = typed
    # Each editor lists every output and input: shown in every card of a small house, and only in
    # the open card of a large one, so the page never grows as inputs x (inputs + outputs).
    inline = len(cards) * (len(all_inputs) + len(outputs_)) <= MAX_INLINE_CHOICES
    return _render(
        "config_links.html",
        status,
        cards=cards,
        all_inputs=all_inputs,
        outputs=outputs_,
        checked=checked,
        errors=errors or {},
        open_id=open_id,
        inline=inline,
        page=page,
        names={i: name for i, name, _ in all_inputs},
        output_names={i: name for i, name, _ in outputs_},
    )


def _posted_ids(field: str, errors: Errors) -> list[int]:
    raw = request.form.getlist(field)
    ids = [_parse_id(value) for value in raw]
    if any(i is None for i in ids):
        errors[field] = "Holds something that is not a device id"
        return []
    try:
        return config_changes.validate_id_list(ids, field)
    except ChangeError as exc:
        errors[field] = _message(field, str(exc))
        return []


def _links_summary(session: Session, row: InputConfig) -> str:
    output_ids = api._output_ids(session, row.id)
    input_ids = api._input_ids(session, row.id)
    outs = [_name(o) for o in session.scalars(select(OutputConfig).where(OutputConfig.id.in_(output_ids)))]
    ins = [_name(i) for i in session.scalars(select(InputConfig).where(InputConfig.id.in_(input_ids)))]
    triggers = f"triggers {', '.join(sorted(outs))}" if outs else "triggers no outputs"
    needs = f"fires only with {', '.join(sorted(ins))}" if ins else "needs no other input"
    return f"Saved {_name(row)}: {triggers}; {needs}."


@bp.get("/links")
def links() -> tuple[str, int]:
    with ctx().session_factory() as session:
        return _render_links(session, _open_id())


@bp.post("/links")
def save_links() -> Response | tuple[str, int]:
    device_id = _posted_id()
    errors: Errors = {}
    output_ids = _posted_ids("output_ids", errors)
    input_ids = _posted_ids("input_ids", errors)
    with ctx().session_factory() as session:
        if session.get(InputConfig, device_id) is None:
            abort(404)
        # Checked here as well as by the processor so a bad input link cannot fail after the outputs saved.
        if device_id in input_ids:
            errors["input_ids"] = "An input cannot be linked to itself"
        known_outputs = set(session.scalars(select(OutputConfig.id).where(OutputConfig.id.in_(output_ids))))
        known_inputs = set(session.scalars(select(InputConfig.id).where(InputConfig.id.in_(input_ids))))
    if set(output_ids) - known_outputs:
        errors["output_ids"] = "One of the chosen outputs no longer exists; reload the page"
    if set(input_ids) - known_inputs:
        errors["input_ids"] = "One of the chosen inputs no longer exists; reload the page"
    if not errors:
        # One command: the output links and input links are saved together or not at all.
        reply, note = _send_all(
            [("set_links", {"input_id": device_id, "output_ids": output_ids, "input_ids": input_ids})],
            ["links"],
        )
        if reply.ok:
            with ctx().session_factory() as session:
                saved = session.get(InputConfig, device_id)
                if saved is None:
                    abort(404)
                flash(_links_summary(session, saved), "success")
            return redirect(url_for(".links", id=device_id, _anchor=f"links-{device_id}"))
        errors = _refusal(reply, note)
    typed = {"output_ids": set(output_ids), "input_ids": set(input_ids)}
    with ctx().session_factory() as session:
        return _render_links(session, device_id, typed, errors, status=_error_status(errors))
