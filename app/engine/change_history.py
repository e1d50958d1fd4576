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
    _add(session, cmd.actor, cmd.action, done.kind, done.target_id, done.target_key, done.summary, done.diff)


# Changes to a person's account (API tokens, the password) are not configuration commands, but who
# made a token or changed the password matters as much in a security hub's history.
ACCOUNT_KIND = "account"


def record_account(session: Session, actor: str, action: str, name: str, summary: str, diff: Diff) -> None:
    """An account change's history entry, in the caller's transaction. `name` is what it concerns (a
    token's name, a user name); `diff` must hold no secret (a token or a password is never in it)."""
    _add(session, actor, action, ACCOUNT_KIND, None, name, summary, diff)


def _add(
    session: Session,
    actor: str | None,
    action: str,
    kind: str | None,
    target_id: int | None,
    target_key: str | None,
    summary: str,
    diff: Diff,
) -> None:
    session.add(
        ConfigChange(
            timestamp=datetime.now(UTC).replace(tzinfo=None),
            actor=(actor or "unknown")[:200],
            action=action[:50],
            target_kind=kind,
            target_id=target_id,
            target_key=(target_key or "")[:100] or None,
            summary=summary,
            before=_json(diff.before),
            after=_json(diff.after),
        )
    )
