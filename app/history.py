"""One timeline: the hub's decisions, the original's event_log rows (migrated) and configuration changes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, false, func, literal, or_, select, union_all
from sqlalchemy.orm import Session, selectinload

from app.models import ConfigChange, Decision, DecisionOutput, EventLog, InputConfig, OutputConfig

# decision: the hub's own record of an input event; history: an event_log row written by the
# original (migrated with its database: no decision_id); change: a configuration change.
KINDS = ("decision", "history", "change")
KIND_NAMES = {"decision": "Decisions", "history": "Migrated history", "change": "Configuration changes"}
# Configuration changes that concern an input (target_id is the input's id) or an output.
INPUT_CHANGE_KINDS = ("input", "meter", "links")
OUTPUT_CHANGE_KINDS = ("output",)
MAX_SEARCH = 100


@dataclass
class Device:
    """A filter on one device: its row id when known, and the names the original's event_log used for it."""

    row_id: int | None
    key: str
    names: tuple[str, ...]


@dataclass
class Filters:
    input: Device | None = None
    output: Device | None = None
    since: datetime | None = None  # naive UTC, inclusive
    until: datetime | None = None
    search: str = ""
    kinds: tuple[str, ...] = KINDS


@dataclass
class Entry:
    kind: str
    row: Any  # Decision, EventLog or ConfigChange


def device(session: Session, model: type[InputConfig] | type[OutputConfig], value: str) -> Device | None:
    """A device named by row id or device key; a key that no row has still filters the migrated history."""
    row = None
    if value.isascii() and value.isdigit() and len(value) <= 18:
        row = session.get(model, int(value))
    if row is None:
        row = session.scalars(select(model).where(model.device_key == value)).first()
    if row is None:
        # A removed device's id still finds its decisions (they keep input_device_id); its key finds the rest.
        row_id = int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None
        return Device(row_id, value, (value,))
    names = tuple(dict.fromkeys(n for n in (row.device_label, row.device_key) if n))
    return Device(row.id, row.device_key, names)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _any_like(pattern: str, *columns: Any) -> ColumnElement[bool]:
    return or_(*(col.ilike(pattern, escape="\\") for col in columns))


def _decisions(f: Filters) -> Select[Any]:
    stmt = select(literal("decision").label("kind"), Decision.id.label("id"), Decision.timestamp.label("ts"))
    if f.input is not None:
        match = Decision.input_key == f.input.key
        stmt = stmt.where(or_(Decision.input_device_id == f.input.row_id, match) if f.input.row_id else match)
    if f.output is not None:
        match = DecisionOutput.output_key == f.output.key
        if f.output.row_id:
            match = or_(DecisionOutput.output_device_id == f.output.row_id, match)
        stmt = stmt.where(Decision.outputs.any(match))
    if f.since is not None:
        stmt = stmt.where(Decision.timestamp >= f.since)
    if f.until is not None:
        stmt = stmt.where(Decision.timestamp <= f.until)
    if f.search:
        pattern = _like(f.search)
        stmt = stmt.where(
            or_(
                _any_like(
                    pattern,
                    Decision.input_key,
                    Decision.input_label,
                    Decision.event_detail,
                    Decision.reason,
                    Decision.detail,
                ),
                Decision.outputs.any(
                    _any_like(pattern, DecisionOutput.output_key, DecisionOutput.output_label)
                ),
            )
        )
    return stmt


def _migrated(f: Filters) -> Select[Any]:
    # The hub links each event_log row it writes to its decision; the original's rows have none.
    stmt = select(literal("history").label("kind"), EventLog.id.label("id"), EventLog.timestamp.label("ts"))
    stmt = stmt.where(EventLog.decision_id.is_(None))
    if f.input is not None:
        stmt = stmt.where(EventLog.input_device.in_(f.input.names))
    if f.output is not None:
        stmt = stmt.where(EventLog.output_device.in_(f.output.names))
    if f.since is not None:
        stmt = stmt.where(EventLog.timestamp >= f.since)
    if f.until is not None:
        stmt = stmt.where(EventLog.timestamp <= f.until)
    if f.search:
        stmt = stmt.where(_any_like(_like(f.search), EventLog.input_device, EventLog.output_device))
    return stmt


def _target(kinds: tuple[str, ...], dev: Device) -> ColumnElement[bool]:
    match = ConfigChange.target_key == dev.key
    if dev.row_id:
        match = or_(ConfigChange.target_id == dev.row_id, match)
    return ConfigChange.target_kind.in_(kinds) & match


def _changes(f: Filters) -> Select[Any]:
    stmt = select(
        literal("change").label("kind"), ConfigChange.id.label("id"), ConfigChange.timestamp.label("ts")
    )
    if f.input is not None:
        stmt = stmt.where(_target(INPUT_CHANGE_KINDS, f.input))
    if f.output is not None:
        stmt = stmt.where(_target(OUTPUT_CHANGE_KINDS, f.output))
    if f.since is not None:
        stmt = stmt.where(ConfigChange.timestamp >= f.since)
    if f.until is not None:
        stmt = stmt.where(ConfigChange.timestamp <= f.until)
    if f.search:
        pattern = _like(f.search)
        stmt = stmt.where(
            _any_like(pattern, ConfigChange.summary, ConfigChange.actor, ConfigChange.target_key)
        )
    return stmt


def _parts(f: Filters) -> list[Select[Any]]:
    builders = {"decision": _decisions, "history": _migrated, "change": _changes}
    parts = [builders[kind](f) for kind in KINDS if kind in f.kinds]
    return parts or [_decisions(f).where(false())]


def count(session: Session, f: Filters) -> int:
    union = union_all(*_parts(f)).subquery()
    return session.scalar(select(func.count()).select_from(union)) or 0


def _newest(part: Select[Any], n: int) -> Select[Any]:
    """A part's own newest n rows: each table's timestamp index answers this, so the union sorts few rows."""
    sub = part.order_by(part.selected_columns.ts.desc().nulls_last(), part.selected_columns.id.desc())
    inner = sub.limit(n).subquery()
    return select(inner.c.kind, inner.c.id, inner.c.ts)


def page(session: Session, f: Filters, offset: int, limit: int) -> list[Entry]:
    """The entries newest first (rows without a time, possible in the original's event_log, last)."""
    union = union_all(*(_newest(part, offset + limit) for part in _parts(f))).subquery()
    keys = session.execute(
        select(union.c.kind, union.c.id)
        .order_by(union.c.ts.desc().nulls_last(), union.c.id.desc(), union.c.kind)
        .offset(offset)
        .limit(limit)
    ).all()
    wanted: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for kind, row_id in keys:
        wanted[kind].append(row_id)
    loaded: dict[tuple[str, int], Any] = {}
    if wanted["decision"]:
        stmt = (
            select(Decision)
            .options(selectinload(Decision.outputs))
            .where(Decision.id.in_(wanted["decision"]))
        )
        loaded.update((("decision", r.id), r) for r in session.scalars(stmt))
    if wanted["history"]:
        loaded.update(
            (("history", r.id), r)
            for r in session.scalars(select(EventLog).where(EventLog.id.in_(wanted["history"])))
        )
    if wanted["change"]:
        stmt = select(ConfigChange).where(ConfigChange.id.in_(wanted["change"]))
        loaded.update((("change", r.id), r) for r in session.scalars(stmt))
    return [Entry(kind, loaded[(kind, row_id)]) for kind, row_id in keys if (kind, row_id) in loaded]


def values(text: str | None) -> dict[str, Any]:
    """A stored before/after JSON object; anything unreadable shows as empty rather than failing a page."""
    if not text:
        return {}
    try:
        loaded = json.loads(text)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def recent_changes(
    session: Session, kinds: tuple[str, ...], row_id: int, limit: int = 5
) -> list[ConfigChange]:
    """The newest configuration changes of one device (for Telegram's /why)."""
    stmt = (
        select(ConfigChange)
        .where(ConfigChange.target_kind.in_(kinds), ConfigChange.target_id == row_id)
        .order_by(ConfigChange.timestamp.desc(), ConfigChange.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))
