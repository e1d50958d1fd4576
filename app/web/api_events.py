"""The API's event history: decisions, the original's event_log rows and configuration changes, paged."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from flask import request

from app.store import history
from app.store.models import ConfigChange, Decision, EventLog, InputConfig, OutputConfig
from app.web.api_common import (
    DEFAULT_EVENT_LIMIT,
    MAX_EVENT_LIMIT,
    MAX_EVENT_OFFSET,
    ApiError,
    bp,
    iso_dt,
    whole_param,
)
from app.web.context import ctx as web_ctx

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
        "timestamp": iso_dt(row.timestamp),
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
        "timestamp": iso_dt(row.timestamp) if row.timestamp else None,
        "input_device": row.input_device,
        "output_device": row.output_device,
    }


def _change_row(row: ConfigChange) -> dict[str, Any]:
    return {
        "kind": "change",
        "id": row.id,
        "timestamp": iso_dt(row.timestamp),
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
    offset = whole_param("offset", 0, MAX_EVENT_OFFSET)
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
            # a search read this far back and no further (history.SEARCH_ROWS); null when it read all
            # (or filled the page first)
            "searched_to": iso_dt(shown.read_back_to()),
        }
