"""What the configuration pages share: ids and form fields parsed, checked field by field, saved, paged."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from app.core.channels import Reply
from app.engine import commands, config_changes, meters
from app.engine.config_changes import ChangeError
from app.store.models import InputConfig, OutputConfig
from app.web import auth, paging
from app.web.context import ctx

# The hub's own buttons have nothing to configure on the inputs page; they still appear on the links page.
BUTTON_TYPES = frozenset({"panic button", "dash button"})
# Any here: posted form values on their way to the processor's validators, and template context.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,15}\.[0-9]{1,9}")
# More digits than any field accepts: parsed as "too large" instead of feeding int() a megabyte of digits.
_MAX_DIGITS = 30
_HUGE: int = 10**_MAX_DIGITS  # a whole number too long to be meant: the validator refuses it by range
Errors = dict[str, str]
Values = dict[str, Any]


def parse_id(raw: str | None) -> int | None:
    """A row id from a query or form value; None for anything that cannot name a row."""
    raw = (raw or "").strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 1 <= value <= config_changes.MAX_ID else None


def posted_id() -> int:
    if "id" not in request.form:
        abort(400)
    device_id = parse_id(request.form.get("id"))
    if device_id is None:
        abort(404)
    return device_id


def requested_id() -> int | None:
    """The card to show open (?id=); an id that cannot exist is a 404 like an unknown one."""
    if "id" not in request.args:
        return None
    device_id = parse_id(request.args.get("id"))
    if device_id is None:
        abort(404)
    return device_id


def form_number(raw: str) -> int | float | str | None:
    """Form text to a typed value: '' → None, '12' → 12; anything else is left for the validator to refuse."""
    raw = raw.strip()
    if not raw:
        return None
    if _WHOLE_NUMBER.fullmatch(raw):
        digits = raw.lstrip("+-")
        if len(digits) > _MAX_DIGITS:
            return -_HUGE if raw.startswith("-") else _HUGE
        return int(raw)
    if _DECIMAL.fullmatch(raw):
        return float(raw)
    return raw


def typed_fields(
    form: MultiDict[str, str], text: tuple[str, ...], numbers: tuple[str, ...], boxes: tuple[str, ...]
) -> Values:
    fields: Values = {name: form.get(name, "") for name in text}
    fields.update({name: form_number(form.get(name, "")) for name in numbers})
    # An unticked checkbox is simply absent from the form.
    fields.update({name: name in form for name in boxes})
    return fields


def typed_back(form: MultiDict[str, str], text: tuple[str, ...], boxes: tuple[str, ...]) -> Values:
    """What was typed, for showing the form again after a refusal."""
    values: Values = {name: form.get(name, "") for name in text}
    values.update({name: name in form for name in boxes})
    return values


def check_each(validate: Callable[[Any], dict[str, Any]], fields: Values) -> tuple[Values, Errors]:
    """Run the shared validator field by field, so each bad field gets its own message."""
    clean: Values = {}
    errors: Errors = {}
    for name, value in fields.items():
        try:
            clean.update(validate({name: value}))
        except ChangeError as exc:
            errors[name] = field_message(name, str(exc))
    return clean, errors


def field_message(field: str, text: str) -> str:
    # The validators name the field ("activation_interval must be ..."); beside the field that reads oddly.
    prefix = f"{field} "
    text = text[len(prefix) :] if text.startswith(prefix) else text
    return text[:1].upper() + text[1:]


def send_all(steps: list[tuple[str, dict[str, Any]]], what: list[str]) -> tuple[Reply, str]:
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


def display_value(value: Any) -> Any:
    """A stored value as a form shows it: numbers as text, NULL as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return meters.limit_text(value)
    return str(value)


def row_name(row: InputConfig | OutputConfig) -> str:
    return row.device_label or row.device_key


def is_button(row: InputConfig) -> bool:
    return (row.device_type or "").strip().lower() in BUTTON_TYPES


def render_page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


def paged_rows(
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


def load_page(
    session: Session, model: type[Any], page: paging.Page, options: Sequence[Any] = ()
) -> list[Any]:
    """The full rows of one page, in the page's order (a query of at most PAGE_SIZE rows)."""
    if not page.ids:
        return []
    rows = {r.id: r for r in session.scalars(select(model).where(model.id.in_(page.ids)).options(*options))}
    return [rows[i] for i in page.ids if i in rows]


def render_rows(
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
    return render_page(
        template, status, rows=rows, values=values, errors=errors or {}, open_id=open_id, **extra
    )


def saved_redirect(
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


def refusal_errors(reply: Reply, note: str) -> Errors:
    """The errors for a refused save; a device that vanished meanwhile is a 404."""
    if reply.status == 404:
        abort(404)
    return reply_errors(reply, note)


def reply_errors(reply: Reply, note: str) -> Errors:
    """A processor refusal, shown beside its field when it names one, else at the top of the card."""
    message = field_message(reply.field or "", reply.error or "The change was refused")
    errors = {reply.field or "_form": message, "_status": str(reply.status)}
    if note or reply.field:
        errors["_form"] = (message if not reply.field else "The change was refused.") + note
    return errors


def error_status(errors: Errors) -> int:
    status = errors.pop("_status", "400")
    return int(status) if status.isdigit() and 400 <= int(status) < 600 else 400
