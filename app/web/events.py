"""The event log page: decision records newest first, filtered by input, output and time, 50 a page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytz
from flask import Blueprint, render_template, request
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from app import config_changes
from app.models import Decision, DecisionOutput, InputConfig, OutputConfig
from app.web.context import ctx

bp = Blueprint("events", __name__)

PAGE_SIZE = 50
MAX_PAGE = 1_000_000
# What <input type="datetime-local"> sends; seconds are optional.
TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S")


def _id(name: str, errors: dict[str, str]) -> int | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= config_changes.MAX_ID:
        errors[name] = f"There is no {name} {raw!r}."
        return None
    return int(raw)


def parse_local(raw: str, tz_name: str) -> datetime:
    """A datetime-local value in the user's time zone as the naive UTC the database stores."""
    for fmt in TIME_FORMATS:
        try:
            naive = datetime.strptime(raw, fmt)
        except ValueError:
            continue
        # is_dst=None would raise on the hour a clock change skips or repeats; either reading will do.
        local = pytz.timezone(tz_name).localize(naive, is_dst=False)
        return local.astimezone(UTC).replace(tzinfo=None)
    raise ValueError(raw)


def _time(name: str, errors: dict[str, str]) -> datetime | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse_local(raw, ctx().settings.user_tz)
    except (ValueError, OverflowError):
        errors[name] = f"{raw!r} is not a date and time (e.g. 2024-05-01T18:30)."
        return None


def _page_number(errors: dict[str, str]) -> int:
    raw = request.args.get("page", "").strip()
    if not raw:
        return 1
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        errors["page"] = f"Page {raw!r} does not exist; showing the first page."
        return 1
    return int(raw)


@bp.get("/events")
def index() -> Any:
    errors: dict[str, str] = {}
    input_id = _id("input", errors)
    output_id = _id("output", errors)
    since = _time("from", errors)
    until = _time("to", errors)
    page = _page_number(errors)
    if since is not None and until is not None and since > until:
        errors["to"] = "The end is before the start."
    stmt = select(Decision)
    if input_id is not None:
        stmt = stmt.where(Decision.input_device_id == input_id)
    if output_id is not None:
        stmt = stmt.where(Decision.outputs.any(DecisionOutput.output_device_id == output_id))
    if since is not None:
        stmt = stmt.where(Decision.timestamp >= since)
    if until is not None:
        stmt = stmt.where(Decision.timestamp <= until)
    with ctx().session_factory() as session:
        inputs = session.execute(
            select(InputConfig.id, InputConfig.device_label, InputConfig.device_key)
        ).all()
        outputs = session.execute(
            select(OutputConfig.id, OutputConfig.device_label, OutputConfig.device_key)
        ).all()
        total = (
            0 if "to" in errors else session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        )
        pages = max(1, -(-total // PAGE_SIZE))
        if page > pages:
            errors.setdefault("page", f"Page {page} does not exist; there are {pages}.")
            page = pages
        rows = (
            []
            if "to" in errors
            else list(
                session.scalars(
                    stmt.options(selectinload(Decision.outputs))
                    .order_by(Decision.timestamp.desc(), Decision.id.desc())
                    .offset((page - 1) * PAGE_SIZE)
                    .limit(PAGE_SIZE)
                )
            )
        )
        # Keep every valid filter in the page links; drop the bad ones so a link never repeats an error.
        kept = {k: request.args.get(k, "").strip() for k in ("input", "output", "from", "to")}
        filters = {k: v for k, v in kept.items() if v and k not in errors}
        return render_template(
            "events.html",
            events=rows,
            inputs=sorted(((i, lbl or key) for i, lbl, key in inputs), key=lambda t: t[1].lower()),
            outputs=sorted(((i, lbl or key) for i, lbl, key in outputs), key=lambda t: t[1].lower()),
            selected={"input": input_id, "output": output_id},
            typed=kept,
            filters=filters,
            errors=errors,
            page=page,
            pages=pages,
            total=total,
        ), (400 if set(errors) - {"page"} else 200)  # a page past the end is not bad input
