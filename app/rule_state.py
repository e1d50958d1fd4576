"""Rule state kept across restarts in the rule_state table: JSON values under string keys."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import rules
from app.models import RuleState
from app.quiet_digest import QuietDigest

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


class ProcessorState:
    """The EventProcessor's rule state under PROCESSOR_PREFIX, and which parts changed since the last flush.

    Latches and trigger histories per input, last trigger per output, each meter's zone, the recent
    triggers an alert lists, and the pending quiet-hours digest. Changes only mark a part dirty;
    take_changes() hands over the changed values (the processor sends them to the AuditWriter).
    A device under a provisional (negative) id is left out until it has its real id (move()).
    """

    def __init__(self, digest: QuietDigest) -> None:
        self.inputs: dict[int, rules.InputState] = {}
        self.outputs: dict[int, rules.OutputState] = {}
        self.meter_zones: dict[int, str] = {}
        # input key -> (label, when it last fired), oldest first: the "recent triggers" of an alert
        self.recent: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.digest = digest
        # ("input" | "output" | "meter_zone", id) or ("recent" | "digest", 0): state not yet handed over
        self.dirty: set[tuple[str, int]] = set()

    def mark(self, kind: str, ident: int = 0) -> None:
        self.dirty.add((kind, ident))

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()
        self.meter_zones.clear()
        self.recent.clear()
        self.digest.clear()
        self.dirty.clear()

    def move(self, kinds: tuple[str, ...], old: int, new: int) -> None:
        """A device's provisional id became its real one: its state follows."""
        tables: dict[str, dict[int, Any]] = {
            "input": self.inputs,
            "meter_zone": self.meter_zones,
            "output": self.outputs,
        }
        for kind in kinds:
            if old in tables[kind]:
                tables[kind][new] = tables[kind].pop(old)
                self.mark(kind, new)

    def mark_all(self) -> None:
        self.dirty |= {("input", i) for i in self.inputs} | {("output", i) for i in self.outputs}
        self.dirty |= {("meter_zone", i) for i in self.meter_zones} | {("recent", 0), ("digest", 0)}

    def take_changes(self) -> dict[str, Any]:
        """rule_state key -> JSON value (None deletes) of every part changed since the last call."""
        dirty = {(kind, ident) for kind, ident in self.dirty if ident >= 0}
        self.dirty = set()
        return {self._key(kind, ident): self._value(kind, ident) for kind, ident in dirty}

    @staticmethod
    def _key(kind: str, ident: int) -> str:
        if kind in ("recent", "digest"):
            return f"{PROCESSOR_PREFIX}{kind}"
        return f"{PROCESSOR_PREFIX}{kind}:{ident}"

    def _value(self, kind: str, ident: int) -> Any:
        """The JSON value of one piece of state, or None when there is nothing to keep."""
        if kind == "input":
            st = self.inputs.get(ident)
            if st is None:
                return None
            detail = st.last_fired_detail
            return {"triggers": list(st.triggers), "last_fired": st.last_fired, "detail": detail}
        if kind == "output":
            out = self.outputs.get(ident)
            return None if out is None or out.last_fired is None else out.last_fired
        if kind == "meter_zone":
            return self.meter_zones.get(ident)
        if kind == "recent":
            return [[key, label, when] for key, (label, when) in self.recent.items()]
        return self.digest.value()

    def restore(self, stored: dict[str, Any]) -> None:
        """Resume what load() read (a bad entry is skipped, never fatal)."""
        for key, value in stored.items():
            kind, _, ident = key.removeprefix(PROCESSOR_PREFIX).partition(":")
            try:
                self._restore(kind, int(ident) if ident else 0, value)
            except (TypeError, ValueError, KeyError, AttributeError):
                log.warning("rule_state %r is not in the expected shape; ignoring it", key)
        log.info(
            "rule state resumed: %d inputs, %d outputs, %d pending digest entries",
            len(self.inputs),
            len(self.outputs),
            len(self.digest.items),
        )

    def _restore(self, kind: str, ident: int, value: Any) -> None:
        if kind == "input":
            st = rules.InputState(last_fired=value["last_fired"], last_fired_detail=value["detail"])
            st.triggers.extend(float(t) for t in value["triggers"])
            self.inputs[ident] = st
        elif kind == "output":
            self.outputs[ident] = rules.OutputState(last_fired=float(value))
        elif kind == "meter_zone":
            self.meter_zones[ident] = str(value)
        elif kind == "recent":
            for key, label, when in value:
                self.recent[str(key)] = (str(label), float(when))
        elif kind == "digest":
            self.digest.restore(value)
