"""What a configuration change touched (before/after, secrets hidden) and its entry in the history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app.core.channels import Command
from app.store.models import ConfigChange

# Values never written to the log or the history: camera credentials and phone numbers live here.
SECRET_FIELDS = frozenset({"device_params"})
# What the history stores for a secret field's value (None stays None: "not set").
HIDDEN = "(hidden)"


# Any here: the before/after values of a change, of whatever type each column has (shown as JSON).


def shown_value(value: Any) -> str:
    """A before/after value of a configuration change as a person reads it (pages and Telegram)."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


@dataclass
class Diff:
    """The fields a change touched, with their values before and after (secret values hidden)."""

    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)

    def note(self, name: str, old: Any, new: Any) -> None:
        if name in SECRET_FIELDS:
            old, new = (HIDDEN if old else None), (HIDDEN if new else None)
            if old == new == HIDDEN:
                new = HIDDEN + " changed"
        self.before.setdefault(name, old)
        self.after[name] = new


@dataclass
class Done:
    result: dict[str, Any]
    summary: str
    # For the history: what was changed (input, output, meter, links, group, general) and which one.
    kind: str | None = None
    target_id: int | None = None
    target_key: str | None = None
    diff: Diff = field(default_factory=Diff)


def _json(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def record(session: Session, cmd: Command, done: Done) -> None:
    """Add a change's history entry to its transaction: the change and its record stand or fall together.

    A request that changed nothing leaves no entry.
    """
    if not done.diff.after:
        return
    session.add(
        ConfigChange(
            timestamp=datetime.now(UTC).replace(tzinfo=None),
            actor=(cmd.actor or "unknown")[:200],
            action=cmd.action[:50],
            target_kind=done.kind,
            target_id=done.target_id,
            target_key=(done.target_key or "")[:100] or None,
            summary=done.summary,
            before=_json(done.diff.before),
            after=_json(done.diff.after),
        )
    )
