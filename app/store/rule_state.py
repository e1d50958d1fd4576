"""Rule state kept across restarts in the rule_state table: JSON values under string keys."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from app.store.models import RuleState

log = logging.getLogger(__name__)
# Any here: rule_state values are JSON documents of each owner's own shape (it checks them on load).

# A timed re-enable promised by Telegram (/inputoff garage 30m) lives under reenable:<kind>:<id>, so a
# restart keeps the promise; any other change of that device's switch drops the key, cancelling it.
REENABLE_PREFIX = "reenable:"
PROCESSOR_PREFIX = "processor:"  # the EventProcessor's rule state (ProcessorState)


def reenable_key(kind: str, row_id: int) -> str:
    return f"{REENABLE_PREFIX}{kind}:{row_id}"


def load(session: Session, prefix: str) -> dict[str, Any]:
    """Every stored value whose key starts with prefix; a value that is not valid JSON is skipped."""
    out: dict[str, Any] = {}
    rows = session.execute(
        select(RuleState.state_key, RuleState.state_value).where(RuleState.state_key.startswith(prefix))
    )
    for key, text in rows:
        try:
            out[key] = json.loads(text)
        except ValueError:
            # A hand-edited or truncated row must not stop the hub; the state starts empty instead.
            log.warning("rule_state %r is not valid JSON; ignoring it", key)
    return out


def save(session: Session, values: dict[str, Any], version: float | None = None) -> None:
    """Insert or replace each key's value (None deletes the key); the caller commits.

    version is when the values were taken (unix time). A row already holding a newer version is
    left alone: writes travel through a queue, so an older snapshot can arrive after a newer one.
    """
    if not values:
        return
    taken = datetime.fromtimestamp(version, UTC) if version is not None else datetime.now(UTC)
    now = taken.replace(tzinfo=None)
    existing = {
        row.state_key: row
        for row in session.scalars(select(RuleState).where(RuleState.state_key.in_(values)))
    }
    for key, value in values.items():
        row = existing.get(key)
        if row is not None and row.updated is not None and row.updated > now:
            continue  # a newer snapshot is already stored
        if value is None:
            if row is not None:
                session.delete(row)
            continue
        text = json.dumps(value, separators=(",", ":"))
        if row is None:
            session.add(RuleState(state_key=key, state_value=text, updated=now))
        else:
            row.state_value = text
            row.updated = now


def _table() -> Table:
    """RuleState's Core table (the ORM types __table__ as any FROM clause; this one is a table)."""
    table = RuleState.__table__
    if not isinstance(table, Table):
        raise TypeError("RuleState is not mapped to a table")
    return table


_TABLE = _table()
_UPDATE = (
    update(_TABLE)
    .where(_TABLE.c.state_key == bindparam("key"))
    .values(state_value=bindparam("text"), updated=bindparam("when"))
)
_INSERT = insert(_TABLE)
CHUNK = 500  # keys per IN (...) list: well inside every database's bound-parameter limit


def save_versions(session: Session, held: dict[str, tuple[Any, float]]) -> None:
    """save() for many keys at once, each with its own version: key -> (value, version).

    The AuditWriter's form: one SELECT of the stored versions per CHUNK keys, then one executemany
    each for the updates and the inserts and one DELETE, in Core (no ORM object per row). The same
    rules as save(): None deletes, a row already holding a newer version is left alone. The caller
    commits. It must not be used in a session that holds RuleState objects (Core skips the ORM).
    """
    keys = list(held)
    stored: dict[str, datetime | None] = {}
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        query = select(_TABLE.c.state_key, _TABLE.c.updated).where(_TABLE.c.state_key.in_(chunk))
        stored.update((key, when) for key, when in session.execute(query))
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    deletes: list[str] = []
    for key, (value, version) in held.items():
        when = datetime.fromtimestamp(version, UTC).replace(tzinfo=None)
        present = key in stored
        if present:
            kept = stored[key]
            if kept is not None and kept > when:
                continue  # a newer snapshot is already stored
        if value is None:
            if present:
                deletes.append(key)
            continue
        text = json.dumps(value, separators=(",", ":"))
        if present:
            updates.append({"key": key, "text": text, "when": when})
        else:
            inserts.append({"state_key": key, "state_value": text, "updated": when})
    if updates:
        session.execute(_UPDATE, updates)
    if inserts:
        session.execute(_INSERT, inserts)
    for i in range(0, len(deletes), CHUNK):
        session.execute(delete(_TABLE).where(_TABLE.c.state_key.in_(deletes[i : i + CHUNK])))
