"""Rule state kept across restarts in the rule_state table: JSON values under string keys."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
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
