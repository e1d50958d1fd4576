"""The configuration the EventProcessor decides from, in memory: loaded in one go, refreshed per key.

A device the HeartbeatFilter registered a moment ago is known here at once, from the message,
under a provisional negative id; once the AuditWriter has stored its row (Registered) a refresh
reads it and the device takes its real id (`LiveConfig.adopt`, which says whose state moves).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.engine import config_changes, meters, rules
from app.store import registry
from app.store.models import InputConfig, InputLink, MeterConfig, OutputConfig, OutputLink

REFRESH_CHUNK = 500  # keys per query (SQLite allows 32766 parameters; PostgreSQL more)
# (kinds of rule state, provisional id, real id): a device whose row has been read back
Move = tuple[tuple[str, ...], int, int]


@dataclass
class Snapshot:
    """The configuration the rules read, loaded in one go so no event waits on the database."""

    inputs_by_key: dict[str, rules.InputRule] = field(default_factory=dict)
    inputs_by_id: dict[int, rules.InputRule] = field(default_factory=dict)
    outputs_by_id: dict[int, rules.OutputRule] = field(default_factory=dict)
    output_links: dict[int, list[int]] = field(default_factory=dict)
    meters: dict[int, meters.MeterRule] = field(default_factory=dict)
    outputs_enabled: bool = True
    quiet: rules.QuietHours = field(default_factory=rules.QuietHours)
    output_ids: dict[str, int] = field(default_factory=dict)  # output key -> id
    # (kind, key) of devices whose label a person set: a device's own advert no longer changes it
    custom_labels: set[tuple[str, str]] = field(default_factory=set)
    overridden: set[int] = field(default_factory=set)  # outputs whose generation a person chose


def load_snapshot(session: Session, quiet_default: rules.QuietHours | None = None) -> Snapshot:
    snap = Snapshot(
        outputs_enabled=config_changes.outputs_enabled(session),
        quiet=config_changes.quiet_hours(session, quiet_default or rules.QuietHours()),
    )
    input_links: dict[int, list[int]] = {}
    for input_id, linked_id in session.execute(select(InputLink.input_device_id, InputLink.linked_device_id)):
        if linked_id != input_id:
            input_links.setdefault(input_id, []).append(linked_id)
    for row in session.scalars(select(InputConfig)):
        add_input(snap, row, input_links.get(row.id, ()))
    for out_row in session.scalars(select(OutputConfig)):
        add_output(snap, out_row)
    for input_id, output_id in session.execute(
        select(OutputLink.input_device_id, OutputLink.output_device_id)
    ):
        if output_id in snap.outputs_by_id:
            snap.output_links.setdefault(input_id, []).append(output_id)
    for ids in snap.output_links.values():
        ids.sort(key=lambda i: snap.outputs_by_id[i].device_key)
    for m in session.scalars(select(MeterConfig)):
        snap.meters[m.input_device_id] = meters_rule(m)
    return snap


def add_input(snap: Snapshot, row: InputConfig, linked: Iterable[int]) -> rules.InputRule:
    rule = input_rule(row, linked)
    snap.inputs_by_key[rule.device_key] = rule
    snap.inputs_by_id[rule.id] = rule
    if row.label_customized:
        snap.custom_labels.add(("input", row.device_key))
    else:
        snap.custom_labels.discard(("input", row.device_key))
    return rule


def add_output(snap: Snapshot, row: OutputConfig) -> rules.OutputRule:
    rule = snap.outputs_by_id[row.id] = output_rule(row)
    snap.output_ids[row.device_key] = row.id
    if row.label_customized:
        snap.custom_labels.add(("output", row.device_key))
    else:
        snap.custom_labels.discard(("output", row.device_key))
    if row.generation_override:
        snap.overridden.add(row.id)
    else:
        snap.overridden.discard(row.id)
    return rule


def input_rule(row: InputConfig, linked: Iterable[int]) -> rules.InputRule:
    return rules.InputRule(
        id=row.id,
        device_key=row.device_key,
        label=row.device_label or row.device_key,
        enabled=bool(row.device_enabled),
        activation_interval=row.activation_interval,
        multi_trigger=bool(row.multi_trigger),
        multi_trigger_rate=row.multi_trigger_rate,
        multi_trigger_interval=row.multi_trigger_interval,
        linked_input_ids=tuple(sorted(linked)),
        info_notify=bool(row.info_notify),
        device_type=row.device_type,
    )


def output_rule(row: OutputConfig) -> rules.OutputRule:
    return rules.OutputRule(
        id=row.id,
        device_key=row.device_key,
        label=row.device_label or row.device_key,
        device_type=row.device_type,
        # NULL (a row from the original schema) means enabled: the original had no such switch.
        enabled=row.device_enabled is not False,
        device_params=row.device_params,
        trigger_topic=row.trigger_topic,
        trigger_interval=row.trigger_interval,
        generation=row.generation_override or row.generation,
        pulse_seconds=row.pulse_seconds,
    )


def refresh_keys(session: Session, snap: Snapshot, keys: Iterable[str]) -> None:
    """Bring the snapshot up to date for devices the HeartbeatFilter registered or re-described.

    Costs a query per REFRESH_CHUNK keys, however large the configuration: registration changes
    only a device's own row (a new device has no links yet; a described one keeps its links).
    """
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), REFRESH_CHUNK):
        chunk = wanted[start : start + REFRESH_CHUNK]
        for row in session.scalars(select(InputConfig).where(InputConfig.device_key.in_(chunk))):
            old = snap.inputs_by_id.get(row.id)
            add_input(snap, row, old.linked_input_ids if old else ())
            if row.id not in snap.meters and registry.is_meter(row.device_type) and row.meter is not None:
                snap.meters[row.id] = meters_rule(row.meter)
        for out_row in session.scalars(select(OutputConfig).where(OutputConfig.device_key.in_(chunk))):
            add_output(snap, out_row)


Rule = rules.InputRule | rules.OutputRule


def new_device(kind: str, key: str, label: str, device_type: str, ident: int) -> Rule:
    """The rule of a device registered a moment ago, as registry.insert writes its row."""
    if kind == "input":
        return input_rule(
            InputConfig(
                id=ident, device_key=key, device_label=label, device_type=device_type, device_enabled=False
            ),
            (),
        )
    return output_rule(
        OutputConfig(
            id=ident,
            device_key=key,
            device_label=label,
            device_type=device_type,
            device_enabled=True,
            pulse_seconds=rules.PULSE_INPUT_INTERVAL,
        )
    )


def meters_rule(m: MeterConfig) -> meters.MeterRule:
    return meters.MeterRule(
        input_id=m.input_device_id,
        unit=m.meter_reading_unit,
        factor=m.meter_reading_unit_factor,
        precision=m.meter_reading_unit_precision,
        low_limit=m.meter_low_limit,
        high_limit=m.meter_high_limit,
        iot_topic=m.meter_iot_topic or None,
        reset_value=m.meter_reset_value,
        reset_additive=bool(m.meter_reset_additive),
    )


class LiveConfig:
    """The snapshot, plus the devices registered but not yet read back from the database."""

    def __init__(self, quiet_default: rules.QuietHours) -> None:
        self.snap = Snapshot()
        self._quiet_default = quiet_default
        # (kind, key) -> rule of devices registered but not yet read back from the database, under a
        # provisional negative id (bounded by the registration caps)
        self._provisional: dict[tuple[str, str], Rule] = {}
        self._next_id = -1

    def reload(self, session: Session) -> list[Move]:
        self.snap = load_snapshot(session, self._quiet_default)
        return self.adopt()

    def refresh(self, session: Session, keys: Iterable[str]) -> list[Move]:
        refresh_keys(session, self.snap, keys)
        return self.adopt()

    def forget_provisional(self) -> None:
        self._provisional.clear()

    def learn(self, adverts: list[list[Any]], generations: list[list[Any]]) -> None:
        """Devices the HeartbeatFilter registered or re-described, and outputs' new generations:
        known here at once, while the AuditWriter stores them."""
        snap = self.snap
        for kind, key, label, device_type, _location in adverts:
            rule: Rule
            if kind == "input":
                old_in = snap.inputs_by_key.get(key)
                if old_in is None:
                    rule = new_device(kind, key, label, device_type, self._temp_id())
                else:
                    keep = ("input", key) in snap.custom_labels
                    rule = replace(old_in, device_type=device_type, label=old_in.label if keep else label)
                assert isinstance(rule, rules.InputRule)
                snap.inputs_by_key[key] = snap.inputs_by_id[rule.id] = rule
            else:
                ident = snap.output_ids.get(key)
                old_out = None if ident is None else snap.outputs_by_id.get(ident)
                if old_out is None:
                    rule = new_device(kind, key, label, device_type, self._temp_id())
                else:
                    keep = ("output", key) in snap.custom_labels
                    rule = replace(old_out, device_type=device_type, label=old_out.label if keep else label)
                assert isinstance(rule, rules.OutputRule)
                snap.outputs_by_id[rule.id] = rule
                snap.output_ids[key] = rule.id
            if rule.id < 0:
                self._provisional[(kind, key)] = rule
        for key, generation in generations:
            ident = snap.output_ids.get(key)
            out = None if ident is None else snap.outputs_by_id.get(ident)
            if out is not None and out.id not in snap.overridden:
                out = snap.outputs_by_id[out.id] = replace(out, generation=generation)
                if out.id < 0:
                    self._provisional[("output", key)] = out

    def _temp_id(self) -> int:
        ident, self._next_id = self._next_id, self._next_id - 1
        return ident

    def adopt(self) -> list[Move]:
        """After reading the database: provisional devices now stored take their real ids; those
        still on their way stay in the snapshot as they were. Returns whose rule state moves."""
        snap = self.snap
        moves: list[Move] = []
        for (kind, key), temp in list(self._provisional.items()):
            if isinstance(temp, rules.InputRule):
                real_in = snap.inputs_by_key.get(key)
                if real_in is None or real_in.id == temp.id:
                    snap.inputs_by_key[key] = snap.inputs_by_id[temp.id] = temp
                    continue
                snap.inputs_by_id.pop(temp.id, None)
                snap.meters.pop(temp.id, None)
                moves.append((("input", "meter_zone"), temp.id, real_in.id))
            else:
                real = snap.output_ids.get(key)
                if real is None or real == temp.id:
                    snap.outputs_by_id[temp.id] = temp
                    snap.output_ids[key] = temp.id
                    continue
                snap.outputs_by_id.pop(temp.id, None)
                moves.append((("output",), temp.id, real))
            del self._provisional[(kind, key)]
        return moves
