"""The event log page: decisions, migrated history and config changes newest first, filtered, 50 a page.

Pages are keyset pages: "Older" and "Newer" carry the place (a history.Cursor) where the next page
starts, so every page costs the same however deep it is. Old ?page=N links still work (read by
offset, which costs a read of the skipped rows).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from app.core import zones
from app.engine import config_changes
from app.store import history
from app.store.models import InputConfig, OutputConfig
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
        local = zones.localize(naive, zones.zone(tz_name))
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


def _cursor(name: str, errors: dict[str, str]) -> history.Cursor | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return history.Cursor.parse(raw)
    except ValueError:
        errors["cursor"] = f"{raw[:60]!r} is not a place in the event log; showing the newest events."
        return None


def _kind(errors: dict[str, str]) -> tuple[str, ...]:
    raw = request.args.get("kind", "").strip()
    if not raw:
        return history.KINDS
    if raw not in history.KINDS:
        errors["kind"] = f"{raw!r} is not a kind of entry."
        return history.KINDS
    return (raw,)


def _search(errors: dict[str, str]) -> str:
    raw = request.args.get("q", "").strip()
    if len(raw) > history.MAX_SEARCH:
        errors["q"] = f"Search for at most {history.MAX_SEARCH} characters."
        return ""
    return raw


@bp.get("/events")
def index() -> ResponseReturnValue:
    errors: dict[str, str] = {}
    input_id = _id("input", errors)
    output_id = _id("output", errors)
    since = _time("from", errors)
    until = _time("to", errors)
    kinds = _kind(errors)
    search = _search(errors)
    before = _cursor("before", errors)
    after = _cursor("after", errors) if before is None else None
    page = _page_number(errors) if before is None and after is None and "cursor" not in errors else 1
    if since is not None and until is not None and since > until:
        errors["to"] = "The end is before the start."
    with ctx().session_factory() as session:
        inputs = session.execute(
            select(InputConfig.id, InputConfig.device_label, InputConfig.device_key)
        ).all()
        outputs = session.execute(
            select(OutputConfig.id, OutputConfig.device_label, OutputConfig.device_key)
        ).all()
        filters_ = history.Filters(
            input=history.device(session, InputConfig, str(input_id)) if input_id is not None else None,
            output=history.device(session, OutputConfig, str(output_id)) if output_id is not None else None,
            since=since,
            until=until,
            search=search,
            kinds=kinds,
        )
        if "to" in errors:
            total, shown = 0, history.Window([], None, None)
        else:
            total = history.count(session, filters_, before=before)
            offset = (page - 1) * PAGE_SIZE
            shown = history.window(session, filters_, PAGE_SIZE, before, after, offset)
            if offset and not shown.entries:
                errors.setdefault("page", f"Page {page} does not exist; showing the newest events.")
                shown = history.window(session, filters_, PAGE_SIZE)
        # Keep every valid filter in the page links; drop the bad ones so a link never repeats an error.
        kept = {k: request.args.get(k, "").strip() for k in ("input", "output", "from", "to", "kind", "q")}
        filters = {k: v for k, v in kept.items() if v and k not in errors}
        return render_template(
            "events.html",
            entries=shown.entries,
            older=shown.older.text() if shown.older else None,
            newer=shown.newer.text() if shown.newer else None,
            bounded=shown.searched_to is not None,
            searched_to=shown.read_back_to(),
            search_rows=history.SEARCH_ROWS,
            inputs=sorted(((i, lbl or key) for i, lbl, key in inputs), key=lambda t: t[1].lower()),
            outputs=sorted(((i, lbl or key) for i, lbl, key in outputs), key=lambda t: t[1].lower()),
            kinds=history.KIND_NAMES,
            values=history.values,
            selected={"input": input_id, "output": output_id, "kind": kinds[0] if len(kinds) == 1 else ""},
            typed=kept,
            filters=filters,
            errors=errors,
            total=total,
            total_cap=history.COUNT_CAP,
        ), (400 if set(errors) - {"page"} else 200)  # a page past the end is not bad input
