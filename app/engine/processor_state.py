"""The EventProcessor's rule state in memory, and what changed of it since the AuditWriter last stored it.

Kept across restarts in the rule_state table under PROCESSOR_PREFIX (app/store/rule_state.py reads and
writes the table; this module knows what the values mean).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from app.engine import rules
from app.engine.quiet_digest import QuietDigest
from app.store.rule_state import PROCESSOR_PREFIX

log = logging.getLogger(__name__)


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
