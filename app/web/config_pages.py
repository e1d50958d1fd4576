"""Configuration pages (inputs, outputs, links): server-rendered forms; the EventProcessor saves."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from werkzeug.wrappers import Response

from app.engine import config_changes, meters
from app.engine.config_changes import ChangeError
from app.store import registry
from app.store.models import InputConfig, InputLink, OutputConfig, OutputLink
from app.web import api, paging
from app.web.config_forms import (
    Errors,
    Values,
    check_each,
    display_value,
    error_status,
    field_message,
    is_button,
    load_page,
    paged_rows,
    parse_id,
    posted_id,
    refusal_errors,
    render_page,
    render_rows,
    requested_id,
    row_name,
    saved_redirect,
    send_all,
    typed_back,
    typed_fields,
)
from app.web.context import ctx
from app.web.masking import mask_params, unmask_params  # noqa: F401  (mask_params: used by tests too)
from app.web.output_view import (
    OUTPUT_CHECKBOXES,
    OUTPUT_NUMBERS,
    OUTPUT_TEXT,
    output_problems,
    output_summary,
    pulse_field,
    render_outputs,
)

bp = Blueprint("config_pages", __name__, url_prefix="/config")

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
# Checkboxes on one links page before the editors move into the open card only.
MAX_INLINE_CHOICES = 3000


def _input_rows(session: Session, open_id: int | None) -> tuple[list[InputConfig], paging.Page]:
    page = paged_rows(session, InputConfig, open_id, skip_buttons=True)
    return load_page(session, InputConfig, page, [selectinload(InputConfig.meter)]), page


def _input_values(row: InputConfig) -> Values:
    values = {name: display_value(getattr(row, name)) for name in INPUT_TEXT + INPUT_NUMBERS}
    values.update({name: bool(getattr(row, name)) for name in INPUT_CHECKBOXES})
    values["alert_offline"] = row.alert_offline is not False  # NULL: the default, on for inputs
    meter = row.meter
    for name in METER_TEXT + METER_NUMBERS:
        values[name] = display_value(getattr(meter, name)) if meter is not None else ""
    values["meter_reset_additive"] = bool(meter.meter_reset_additive) if meter is not None else False
    return values


def _render_inputs(
    session: Session,
    open_id: int | None,
    typed: Values | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> tuple[str, int]:
    rows, page = _input_rows(session, open_id)
    return render_rows(
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
    return f"Saved {row_name(row)}: {', '.join(parts)}."


@bp.get("/inputs")
def inputs() -> tuple[str, int]:
    with ctx().session_factory() as session:
        return _render_inputs(session, requested_id())


@bp.post("/inputs")
def save_input() -> Response | tuple[str, int]:
    device_id = posted_id()
    with ctx().session_factory() as session:
        row = session.get(InputConfig, device_id)
        if row is None or is_button(row):
            abort(404)
        meter = registry.is_meter(row.device_type)
    form = request.form
    input_fields, errors = check_each(
        config_changes.validate_input_fields, typed_fields(form, INPUT_TEXT, INPUT_NUMBERS, INPUT_CHECKBOXES)
    )
    meter_fields: Values = {}
    if meter:
        meter_fields, meter_errors = check_each(
            config_changes.validate_meter_fields,
            typed_fields(form, METER_TEXT, METER_NUMBERS, METER_CHECKBOXES),
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
        reply, note = send_all([("update_input", args)], ["settings"])
        if reply.ok:
            return saved_redirect(InputConfig, device_id, _input_summary, [selectinload(InputConfig.meter)])
        errors = refusal_errors(reply, note)
    typed = typed_back(
        form, INPUT_TEXT + INPUT_NUMBERS + METER_TEXT + METER_NUMBERS, INPUT_CHECKBOXES + METER_CHECKBOXES
    )
    with ctx().session_factory() as session:
        return _render_inputs(session, device_id, typed, errors, status=error_status(errors))


@bp.get("/outputs")
def outputs() -> tuple[str, int]:
    with ctx().session_factory() as session:
        return render_outputs(session, requested_id())


@bp.post("/outputs")
def save_output() -> Response | tuple[str, int]:
    device_id = posted_id()
    with ctx().session_factory() as session:
        row = session.get(OutputConfig, device_id)
        if row is None:
            abort(404)
        stored_params = row.device_params
    form = request.form
    typed = typed_fields(form, OUTPUT_TEXT, OUTPUT_NUMBERS, OUTPUT_CHECKBOXES)
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
    typed.update(pulse_field(form, errors))
    fields, field_errors = check_each(config_changes.validate_output_fields, typed)
    errors.update(field_errors)
    if not errors:
        reply, note = send_all([("update_output", {"id": device_id, "fields": fields})], ["settings"])
        if reply.ok:
            response = saved_redirect(OutputConfig, device_id, output_summary)
            with ctx().session_factory() as session:
                refusals, warnings = output_problems(session, device_id, ctx().settings)
            for text in refusals:
                flash(f"Its triggers will be refused, as the device would reject them: {text}.", "danger")
            for text in warnings:
                flash(text, "warning")
            return response
        errors = refusal_errors(reply, note)
    back = typed_back(form, OUTPUT_TEXT + OUTPUT_NUMBERS + ("pulse", "pulse_seconds"), OUTPUT_CHECKBOXES)
    with ctx().session_factory() as session:
        return render_outputs(session, device_id, back, errors, status=error_status(errors))


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
    page = paged_rows(session, InputConfig, open_id)
    cards = load_page(session, InputConfig, page)
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
    return render_page(
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
    ids = [parse_id(value) for value in raw]
    if any(i is None for i in ids):
        errors[field] = "Holds something that is not a device id"
        return []
    try:
        return config_changes.validate_id_list(ids, field)
    except ChangeError as exc:
        errors[field] = field_message(field, str(exc))
        return []


def _links_summary(session: Session, row: InputConfig) -> str:
    output_ids = api._output_ids(session, row.id)
    input_ids = api._input_ids(session, row.id)
    outs = [row_name(o) for o in session.scalars(select(OutputConfig).where(OutputConfig.id.in_(output_ids)))]
    ins = [row_name(i) for i in session.scalars(select(InputConfig).where(InputConfig.id.in_(input_ids)))]
    triggers = f"triggers {', '.join(sorted(outs))}" if outs else "triggers no outputs"
    needs = f"fires only with {', '.join(sorted(ins))}" if ins else "needs no other input"
    return f"Saved {row_name(row)}: {triggers}; {needs}."


@bp.get("/links")
def links() -> tuple[str, int]:
    with ctx().session_factory() as session:
        return _render_links(session, requested_id())


@bp.post("/links")
def save_links() -> Response | tuple[str, int]:
    device_id = posted_id()
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
        reply, note = send_all(
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
        errors = refusal_errors(reply, note)
    typed = {"output_ids": set(output_ids), "input_ids": set(input_ids)}
    with ctx().session_factory() as session:
        return _render_links(session, device_id, typed, errors, status=error_status(errors))
