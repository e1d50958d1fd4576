"""One timeline: the hub's decisions, the original's event_log rows (migrated) and configuration changes.

Over ~400 lines as one cohesive thing: one keyset-paged query over three tables, whose filters, legs,
cursor and ordering only make sense together; the pages and the API only call window(), count(),
values() and recent_changes().
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    Select,
    false,
    func,
    literal,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.orm import QueryableAttribute, Session, selectinload
from sqlalchemy.sql.elements import SQLCoreOperations

from app.store.models import ConfigChange, Decision, DecisionOutput, DeviceRow, EventLog

# decision: the hub's own record of an input event; history: an event_log row written by the
# original (migrated with its database: no decision_id); change: a configuration change.
KINDS = ("decision", "history", "change")
KIND_NAMES = {"decision": "Decisions", "history": "Migrated history", "change": "Configuration changes"}
# Configuration changes that concern an input (target_id is the input's id) or an output.
INPUT_CHANGE_KINDS = ("input", "meter", "links")
OUTPUT_CHANGE_KINDS = ("output",)
MAX_SEARCH = 100
# A search text is matched inside text columns, which no index can find: a search reads every row
# (1.6 s over 1,000,000 decisions on a 2-core x86, several times that on a Pi). So without a device
# filter a page reads at most this many of the newest decisions, and of the original's event_log
# rows, before its place; where it stopped is the next page's place, so a search goes back further
# a page at a time, and a page may hold fewer entries and still have an older one.
SEARCH_ROWS = 20_000
# Entries with the same time and id (from different tables) go change, decision, history.
RANK = {"change": 2, "decision": 1, "history": 0}
COUNT_CAP = 1_000
OUTPUT_LOOKUP_MIN = 1_000  # an output's decisions up to this many are always found through its rows
CURSOR_TIME = "%Y%m%dT%H%M%S.%f"
CURSOR_RE = re.compile(r"(\d{8}T\d{6}\.\d{6}|none)-(\d{1,18})-(" + "|".join(KINDS) + r")")


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
    row: Any  # a Decision, EventLog or ConfigChange as `kind` says (Any: each reader takes its own kind)


def device(session: Session, model: type[DeviceRow], value: str) -> Device | None:
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


def _any_like(pattern: str, *columns: SQLCoreOperations[str | None]) -> ColumnElement[bool]:
    return or_(*(col.ilike(pattern, escape="\\") for col in columns))


@dataclass(frozen=True)
class Cursor:
    """A place in the timeline: an entry's time, id and kind (the timeline's order, newest first)."""

    ts: datetime | None  # None: a migrated row without a time (they come last)
    id: int
    kind: str

    def text(self) -> str:
        when = self.ts.strftime(CURSOR_TIME) if self.ts is not None else "none"
        return f"{when}-{self.id}-{self.kind}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """The cursor a text() made; ValueError for anything else."""
        match = CURSOR_RE.fullmatch(raw)
        if match is None:
            raise ValueError(raw)
        when, row_id, kind = match.groups()
        ts = None if when == "none" else datetime.strptime(when, CURSOR_TIME)
        return cls(ts, int(row_id), kind)


@dataclass
class Window:
    """One page of the timeline and where the pages beside it start (None: there are none)."""

    entries: list[Entry]
    older: Cursor | None  # the last entry: pass as `before` for the next page
    newer: Cursor | None  # the first entry: pass as `after` for the previous page
    # A bounded search (SEARCH_ROWS) reads no row older than this one
    searched_to: Cursor | None = None

    def read_back_to(self) -> datetime | None:
        """The time a bounded search read back to, when this page stopped there (None when it read
        everything, or filled before it reached the bound)."""
        if self.searched_to is None or self.older != self.searched_to:
            return None
        return self.searched_to.ts


@dataclass
class _Leg:
    """Rows of one table that one index reads in the timeline's order: a part of the union."""

    kind: str
    ts: QueryableAttribute[datetime | None]  # the table's timestamp column
    id: QueryableAttribute[int]
    where: list[ColumnElement[bool]]
    timed: bool = True  # False: only rows without a time (ordered by id alone)


def _product(
    legs: list[list[ColumnElement[bool]]], alternatives: list[ColumnElement[bool]]
) -> list[list[ColumnElement[bool]]]:
    return [[*leg, alt] for leg in legs for alt in alternatives]


def _output_match(dev: Device) -> ColumnElement[bool]:
    match = DecisionOutput.output_key == dev.key
    return or_(DecisionOutput.output_device_id == dev.row_id, match) if dev.row_id else match


def _output_rows(session: Session, dev: Device, bound: int) -> int:
    """The output's decision_output rows, counted no further than bound + 1 (from its indexes)."""
    rows = select(DecisionOutput.id).where(_output_match(dev)).limit(bound + 1)
    return session.scalar(select(func.count()).select_from(rows.subquery())) or 0


def _few_outputs(session: Session, f: Filters, wanted: int) -> bool:
    """Whether the output filter's decisions are better found through the output's own rows.

    Through its rows (then sorted by time) costs its M decisions; reading decisions newest first
    and keeping its own costs wanted x N / M of the N decisions. The first is cheaper while M is
    under sqrt(wanted x N), so a page costs at most about that either way (7,000 rows at N = 1M).
    """
    if f.output is None:
        return False
    # Two subqueries: SQLite reads a lone max() or min() from the end of the key, both at once by a scan.
    newest, oldest = session.execute(
        select(
            select(func.max(Decision.id)).scalar_subquery(), select(func.min(Decision.id)).scalar_subquery()
        )
    ).one()
    stored = (newest - oldest + 1) if newest is not None and oldest is not None else 0
    bound = max(OUTPUT_LOOKUP_MIN, math.isqrt(wanted * stored))
    return _output_rows(session, f.output, bound) <= bound


def _decisions(f: Filters, few_outputs: bool) -> list[_Leg]:
    where: list[ColumnElement[bool]] = []
    if f.output is not None:
        match = _output_match(f.output)
        if few_outputs:
            where.append(Decision.id.in_(select(DecisionOutput.decision_id).where(match)))
        else:
            where.append(Decision.outputs.any(match))
    if f.since is not None:
        where.append(Decision.timestamp >= f.since)
    if f.until is not None:
        where.append(Decision.timestamp <= f.until)
    if f.search:
        pattern = _like(f.search)
        where.append(
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
    legs = [where]
    if f.input is not None:
        # "row id or key" as two disjoint legs, each read in order from its own index (an OR reads neither).
        by_key = Decision.input_key == f.input.key
        if f.input.row_id:
            other = or_(Decision.input_device_id.is_(None), Decision.input_device_id != f.input.row_id)
            legs = _product(legs, [Decision.input_device_id == f.input.row_id, by_key & other])
        else:
            legs = _product(legs, [by_key])
    return [_Leg("decision", Decision.timestamp, Decision.id, leg) for leg in legs]


def _migrated(f: Filters) -> list[_Leg]:
    # The hub links each event_log row it writes to its decision; the original's rows have none.
    where: list[ColumnElement[bool]] = [EventLog.decision_id.is_(None)]
    if f.since is not None:
        where.append(EventLog.timestamp >= f.since)
    if f.until is not None:
        where.append(EventLog.timestamp <= f.until)
    if f.search:
        where.append(_any_like(_like(f.search), EventLog.input_device, EventLog.output_device))
    legs = [where]
    # One leg per name: each reads its own range of the index on the original's rows, in order.
    if f.input is not None:
        legs = _product(legs, [EventLog.input_device == name for name in f.input.names])
    if f.output is not None:
        legs = _product(legs, [EventLog.output_device == name for name in f.output.names])
    timed = [
        _Leg("history", EventLog.timestamp, EventLog.id, [*leg, EventLog.timestamp.is_not(None)])
        for leg in legs
    ]
    if f.since is not None or f.until is not None:
        return timed  # a row without a time is in no time range
    untimed = [
        _Leg("history", EventLog.timestamp, EventLog.id, [*leg, EventLog.timestamp.is_(None)], timed=False)
        for leg in legs
    ]
    return timed + untimed


def _targets(kinds: tuple[str, ...], dev: Device) -> list[ColumnElement[bool]]:
    """A device's changes as disjoint conditions, each one an index reads in order."""
    by_key = (ConfigChange.target_key == dev.key) & ConfigChange.target_kind.in_(kinds)
    if not dev.row_id:
        return [by_key]
    other = or_(ConfigChange.target_id.is_(None), ConfigChange.target_id != dev.row_id)
    by_id = [(ConfigChange.target_kind == kind) & (ConfigChange.target_id == dev.row_id) for kind in kinds]
    return [*by_id, by_key & other]


def _changes(f: Filters) -> list[_Leg]:
    where: list[ColumnElement[bool]] = []
    if f.since is not None:
        where.append(ConfigChange.timestamp >= f.since)
    if f.until is not None:
        where.append(ConfigChange.timestamp <= f.until)
    if f.search:
        pattern = _like(f.search)
        where.append(_any_like(pattern, ConfigChange.summary, ConfigChange.actor, ConfigChange.target_key))
    legs = [where]
    if f.input is not None:
        legs = _product(legs, _targets(INPUT_CHANGE_KINDS, f.input))
    if f.output is not None:
        legs = _product(legs, _targets(OUTPUT_CHANGE_KINDS, f.output))
    return [_Leg("change", ConfigChange.timestamp, ConfigChange.id, leg) for leg in legs]


def _legs(session: Session, f: Filters, wanted: int) -> list[_Leg]:
    legs = []
    if "decision" in f.kinds:
        legs += _decisions(f, _few_outputs(session, f, wanted))
    if "history" in f.kinds:
        legs += _migrated(f)
    if "change" in f.kinds:
        legs += _changes(f)
    return legs or [_Leg("decision", Decision.timestamp, Decision.id, [false()])]


_Time = QueryableAttribute[datetime | None]


def _search_floor(session: Session, f: Filters, at: Cursor | None) -> Cursor | None:
    """Where a page of a search stops reading: the SEARCH_ROWS-th decision or migrated event_log row
    before `at` (the newer of the two, so neither table is read further); None when the search reads
    everything (no search text, a device filter whose index bounds it, or fewer rows than that)."""
    if not f.search or f.input is not None or f.output is not None:
        return None
    tables: tuple[tuple[str, _Time, QueryableAttribute[int], list[ColumnElement[bool]]], ...] = (
        ("decision", Decision.timestamp, Decision.id, []),
        ("history", EventLog.timestamp, EventLog.id, [EventLog.decision_id.is_(None)]),
    )
    floors = []
    for kind, ts, row_id, where in tables:
        if kind not in f.kinds:
            continue
        leg = _Leg(kind, ts, row_id, [*where, ts.is_not(None)])
        if f.until is not None:
            leg.where.append(ts <= f.until)
        if at is not None and (place := _after_place(leg, at, True)) is not None:
            leg.where.append(place)
        stmt = select(ts, row_id).where(*leg.where).order_by(ts.desc(), row_id.desc())
        row = session.execute(stmt.offset(SEARCH_ROWS - 1).limit(1)).first()
        if row is not None and row[0] is not None:
            floors.append(Cursor(row[0], row[1], kind))
    return max(floors, key=lambda c: (c.ts, c.id, RANK[c.kind])) if floors else None


def _from_floor(leg: _Leg, floor: Cursor) -> ColumnElement[bool]:
    """A timed leg's rows at the floor or newer: exactly those _after_place(leg, floor, older) leaves
    out, so a page read down to its floor and the next page, read from it, share no row and miss none."""
    here = tuple_(leg.ts, leg.id)
    there = tuple_(literal(floor.ts, DateTime()), literal(floor.id, Integer()))
    return here > there if RANK[leg.kind] < RANK[floor.kind] else here >= there


def _bounded(legs: list[_Leg], floor: Cursor | None) -> list[_Leg]:
    """The legs down to the floor; rows without a time come after every timed one, so their legs go."""
    if floor is None:
        return legs
    return [
        _Leg(leg.kind, leg.ts, leg.id, [*leg.where, _from_floor(leg, floor)]) for leg in legs if leg.timed
    ]


def _after_place(leg: _Leg, at: Cursor, older: bool) -> ColumnElement[bool] | None:
    """The leg's rows on the far side of `at` (older or newer): None for all of them, false() for none.

    Ties in time and id go by kind (RANK), so a row of a lower-ranked kind with the same time and id
    as the cursor is still older. A row value compares (timestamp, id) in one index range.
    """
    rank = RANK[leg.kind]
    inclusive = rank < RANK[at.kind] if older else rank > RANK[at.kind]
    if not leg.timed:
        if at.ts is not None:
            return None if older else false()  # every row without a time is older than any with one
        if older:
            return leg.id <= at.id if inclusive else leg.id < at.id
        return leg.id >= at.id if inclusive else leg.id > at.id
    if at.ts is None:
        return false() if older else None
    here = tuple_(leg.ts, leg.id)
    there = tuple_(literal(at.ts, DateTime()), literal(at.id, Integer()))
    if older:
        return here <= there if inclusive else here < there
    return here >= there if inclusive else here > there


def _leg_select(leg: _Leg, at: Cursor | None, older: bool, n: int) -> Select[str, int, int, datetime | None]:
    """The leg's first n rows in the timeline's order (newest first when older), past `at`."""
    where = list(leg.where)
    if at is not None:
        place = _after_place(leg, at, older)
        if place is not None:
            where.append(place)
    order = [leg.ts, leg.id] if leg.timed else [leg.id]
    stmt = (
        select(
            literal(leg.kind).label("kind"),
            literal(RANK[leg.kind]).label("rank"),
            leg.id.label("id"),
            leg.ts.label("ts"),
        )
        .where(*where)
        .order_by(*(c.desc() if older else c.asc() for c in order))
        .limit(n)
        .subquery()
    )
    return select(stmt.c.kind, stmt.c.rank, stmt.c.id, stmt.c.ts)


def _keys(
    session: Session,
    f: Filters,
    at: Cursor | None,
    older: bool,
    offset: int,
    n: int,
    floor: Cursor | None = None,
) -> list[Cursor]:
    """The timeline's next n entries from `at` (from the newest without it), in reading order; with a
    floor, none older than it.

    Each leg takes its own first offset + n rows straight from an index, so the union sorts few rows.
    """
    legs = _bounded(_legs(session, f, offset + n), floor)
    union = union_all(*(_leg_select(leg, at, older, offset + n) for leg in legs)).subquery()
    if older:
        order = [union.c.ts.desc().nulls_last(), union.c.id.desc(), union.c.rank.desc()]
    else:
        order = [union.c.ts.asc().nulls_first(), union.c.id.asc(), union.c.rank.asc()]
    rows = session.execute(
        select(union.c.kind, union.c.id, union.c.ts).order_by(*order).offset(offset).limit(n)
    ).all()
    return [Cursor(ts, row_id, kind) for kind, row_id, ts in rows]


def count(session: Session, f: Filters, cap: int = COUNT_CAP, before: Cursor | None = None) -> int:
    """How many entries match, counting no further than cap + 1 (more than cap: a number would cost
    a scan of every row, and nobody pages through a thousand events).

    A search without a device filter counts what the page at `before` reads (see SEARCH_ROWS); every
    other count is of the whole timeline.
    """
    floor = _search_floor(session, f, before)
    quick = f.input is None and f.since is None and f.until is None and not f.search
    # More than 2 x cap of the output's rows (at most two a decision): more than cap decisions,
    # known from its index where counting its decisions may read most of the table.
    if (
        quick
        and f.output is not None
        and "decision" in f.kinds
        and _output_rows(session, f.output, 2 * cap) > 2 * cap
    ):
        return cap + 1
    legs = _bounded(_legs(session, f, cap + 1), floor)
    at = before if floor is not None else None
    union = union_all(*(_leg_select(leg, at, True, cap + 1) for leg in legs)).subquery()
    found = session.scalar(select(func.count()).select_from(union)) or 0
    return min(found, cap + 1)


def _load(session: Session, keys: list[Cursor]) -> list[Entry]:
    wanted: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for key in keys:
        wanted[key.kind].append(key.id)
    loaded: dict[tuple[str, int], Decision | EventLog | ConfigChange] = {}
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
        changes = select(ConfigChange).where(ConfigChange.id.in_(wanted["change"]))
        loaded.update((("change", r.id), r) for r in session.scalars(changes))
    return [Entry(k.kind, loaded[(k.kind, k.id)]) for k in keys if (k.kind, k.id) in loaded]


def window(
    session: Session,
    f: Filters,
    limit: int,
    before: Cursor | None = None,
    after: Cursor | None = None,
    offset: int = 0,
) -> Window:
    """A page of entries newest first: the newest, those older than `before`, or those newer than
    `after` (rows without a time, possible in the original's event_log, last). offset skips entries
    (the old page numbers); it costs a read of every skipped row, a cursor does not. A search reads
    SEARCH_ROWS rows at most (searched_to says where it stopped; older starts there)."""
    if after is not None:
        keys = _keys(session, f, after, False, 0, limit + 1)
        if len(keys) <= limit:  # the newest page is reached: show it whole
            return window(session, f, limit)
        keys = keys[:limit][::-1]
        return Window(_load(session, keys), keys[-1], keys[0])
    floor = _search_floor(session, f, before)
    keys = _keys(session, f, before, True, offset, limit + 1, floor)
    more = len(keys) > limit
    keys = keys[:limit]
    newer = keys[0] if keys and (before is not None or offset) else None
    if newer is None and before is not None and floor is not None:
        newer = before  # nothing matched down to the floor: the way back is to what was before it
    # Not all read: the next page starts at the floor when this one did not fill before it.
    older = keys[-1] if more else floor
    return Window(_load(session, keys), older, newer, floor)


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
