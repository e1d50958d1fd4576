"""Configuration changes a person asks for, validated and applied in the ConfigApplier thread."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from app import protocols
from app.core import settings, zones
from app.core.channels import Command, Reply
from app.engine import rules
from app.store import registry, rule_state
from app.store.models import ConfigChange, GeneralConfig, InputConfig, InputLink, OutputConfig, OutputLink

log = logging.getLogger(__name__)
# Any here is the wire boundary: a Command's args come from JSON bodies, the bot and SQS, and each
# validator below checks its value before it reaches a row.

OUTPUTS_ENABLED_KEY = "outputs-enabled"
SCHEDULER_ENABLED_KEY = "auto-scheduler"
MAX_LINKS = 1000
MAX_ID = 2**63 - 1  # SQLite INTEGER; a larger Python int cannot even be bound as a parameter
# Publishing with AMQP wildcards or spaces in a routing key is legal but never what a person meant.
_ROUTING_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_FALSE_WORDS = frozenset({"0", "false", "off", "no"})
# A daily schedule time: HH:MM, 00:00 to 23:59 (H:MM is accepted on entry and stored as HH:MM).
HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_H_MM = re.compile(r"\d:[0-5]\d")


class ChangeError(ValueError):
    """A change that cannot be applied; field names the offending argument, status the HTTP status."""

    def __init__(self, field: str | None, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class _Invalid(ValueError):
    """Raised by a field validator; the caller adds the field name."""


Validator = Callable[[object], object]
_Row = TypeVar("_Row", InputConfig, OutputConfig)


def _boolean(value: Any) -> bool:
    # 1, "yes" and "true" are refused so a client bug cannot silently flip a switch.
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _integer(low: int, high: int) -> Validator:
    def check(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be a whole number from {low} to {high}, or null")
        if not low <= value <= high:
            raise _Invalid(f"must be from {low} to {high}, not {value}")
        return value

    return check


def _number(low: int, high: int) -> Validator:
    """A whole or decimal number (a meter limit in the unit shown, e.g. 4.5 kWh)."""

    def check(value: Any) -> float | int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Invalid(f"must be a number from {low} to {high}, or null")
        if not low <= value <= high:
            raise _Invalid(f"must be from {low} to {high}, not {value}")
        return value

    return check


def _text(
    max_len: int | None = None, pattern: re.Pattern[str] | None = None, what: str = "text"
) -> Validator:
    def check(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _Invalid(f"must be {what} or null")
        value = value.strip()
        if not value:
            return None
        if max_len is not None and len(value) > max_len:
            raise _Invalid(f"must be at most {max_len} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise _Invalid(f"must be {what}")
        return value

    return check


INPUT_FIELDS: dict[str, Validator] = {
    "device_label": _text(100),
    "device_enabled": _boolean,
    "activation_interval": _integer(0, 86400),
    "multi_trigger": _boolean,
    "multi_trigger_rate": _integer(1, 120),
    "multi_trigger_interval": _integer(1, 86400),
    "group_name": _text(100),
    "info_notify": _boolean,
    "alert_offline": _boolean,
}


def _generation(value: Any) -> str | None:
    """A wire generation a person chose for an output's device (g1, g2, g3); null or '': as detected."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.strip().lower() not in protocols.GENERATIONS:
        raise _Invalid(f"must be one of {', '.join(protocols.GENERATIONS)}, or null to follow the device")
    return value.strip().lower()


OUTPUT_FIELDS: dict[str, Validator] = {
    "device_label": _text(100),
    "device_params": _text(),
    "device_enabled": _boolean,
    "trigger_topic": _text(
        255, _ROUTING_KEY, "a routing key of letters, digits, '.', '_' and '-' (at most 255)"
    ),
    "trigger_interval": _integer(0, 86400),
    "alert_offline": _boolean,
    "generation_override": _generation,
    # -1: the input's activation_interval; null: the device's default pulse; else seconds
    "pulse_seconds": _integer(-1, 86400),
}

METER_FIELDS: dict[str, Validator] = {
    # in the unit shown (register / factor): 4.5 kWh is a limit a person may want
    "meter_low_limit": _number(-(2**31), 2**31 - 1),
    "meter_high_limit": _number(-(2**31), 2**31 - 1),
    "meter_reset_value": _integer(-(2**31), 2**31 - 1),
    "meter_reset_additive": _boolean,
    "meter_reading_unit": _text(10),
    "meter_reading_unit_factor": _integer(1, 10**9),  # any positive whole number, 1 included
    "meter_reading_unit_precision": _integer(0, 9),
    "meter_iot_topic": _text(100, re.compile(r"[^#+\s]+"), "an MQTT topic without wildcards (at most 100)"),
}

# Values never written to the log or the history: camera credentials and phone numbers live here.
_SECRET_FIELDS = frozenset({"device_params"})
# What the history stores for a secret field's value (None stays None: "not set").
HIDDEN = "(hidden)"


def shown_value(value: Any) -> str:
    """A before/after value of a configuration change as a person reads it (pages and Telegram)."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def _validate(spec: dict[str, Validator], fields: Any) -> dict[str, Any]:
    if not isinstance(fields, dict):
        raise ChangeError("fields", "fields must be an object of field names and values")
    if not fields:
        raise ChangeError("fields", "no fields to change")
    clean: dict[str, Any] = {}
    for name, value in fields.items():
        check = spec.get(name)
        if check is None:
            raise ChangeError(str(name), f"{name} is not a field that can be changed")
        try:
            clean[name] = check(value)
        except _Invalid as exc:
            raise ChangeError(name, f"{name} {exc}") from None
    return clean


def validate_input_fields(fields: Any) -> dict[str, Any]:
    """Check and normalise an update_input field map; raises ChangeError naming the first bad field."""
    return _validate(INPUT_FIELDS, fields)


def validate_output_fields(fields: Any) -> dict[str, Any]:
    """Check and normalise an update_output field map; raises ChangeError naming the first bad field."""
    return _validate(OUTPUT_FIELDS, fields)


def validate_meter_fields(fields: Any) -> dict[str, Any]:
    """Check and normalise an update_meter field map; raises ChangeError naming the first bad field."""
    return _validate(METER_FIELDS, fields)


def validate_id_list(value: Any, field: str) -> list[int]:
    """A list of row ids, duplicates collapsed, in first-seen order; raises ChangeError naming field."""
    if not isinstance(value, list):
        raise ChangeError(field, f"{field} must be a list of ids")
    if len(value) > MAX_LINKS:
        raise ChangeError(field, f"{field} may hold at most {MAX_LINKS} ids")
    ids: dict[int, None] = {}
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_ID:
            raise ChangeError(field, f"{field} must hold whole-number ids, not {item!r}")
        ids[item] = None
    return list(ids)


def outputs_enabled(session: Session) -> bool:
    """The global outputs switch; on when never set, so a fresh install triggers its outputs."""
    row = _outputs_enabled_row(session)
    return row is None or row.config_value.strip().lower() not in _FALSE_WORDS


def _outputs_enabled_row(session: Session) -> GeneralConfig | None:
    stmt = (
        select(GeneralConfig)
        .where(GeneralConfig.config_key == OUTPUTS_ENABLED_KEY)
        .order_by(GeneralConfig.id)
    )
    return session.scalars(stmt).first()


def parse_hhmm(value: Any) -> str | None:
    """A schedule time normalised to HH:MM, or None when it is not a valid time of day."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if _H_MM.fullmatch(value):
        value = "0" + value
    return value if HHMM.fullmatch(value) else None


def validate_time(value: Any, field: str) -> str | None:
    """A schedule time as entered: null or '' clears it, H:MM or HH:MM is normalised; else ChangeError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    clean = parse_hhmm(value)
    if clean is None:
        raise ChangeError(field, f"{field} must be a time of day as HH:MM (00:00 to 23:59), not {value!r}")
    return clean


def validate_schedule(
    auto_schedule: Any, enable: str | None, disable: str | None
) -> tuple[bool, str | None, str | None]:
    """Check a whole schedule (times already through validate_time); raises ChangeError naming a field."""
    if not isinstance(auto_schedule, bool):
        raise ChangeError("auto_schedule", "auto_schedule must be true or false")
    if auto_schedule:
        # Both times are needed: a device switched only one way would stay that way for good.
        if enable is None:
            raise ChangeError("enable", "enable is needed when the schedule is on")
        if disable is None:
            raise ChangeError("disable", "disable is needed when the schedule is on")
    if enable is not None and enable == disable:
        # Both jobs would fire at the same moment in no defined order.
        raise ChangeError("disable", "disable must differ from enable")
    return auto_schedule, enable, disable


def validate_zone(value: Any, field: str) -> str | None:
    """A schedule's time zone: null (USER_TZ) or a tz database name such as "UTC"; else ChangeError."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64 or not zones.is_name(value):
        raise ChangeError(field, f"{field} must be null or a time zone name such as UTC or Europe/London")
    return value


def scheduler_enabled(session: Session) -> bool:
    """The global auto-scheduler switch; on when never set."""
    stmt = (
        select(GeneralConfig)
        .where(GeneralConfig.config_key == SCHEDULER_ENABLED_KEY)
        .order_by(GeneralConfig.id)
    )
    row = session.scalars(stmt).first()
    return row is None or row.config_value.strip().lower() not in _FALSE_WORDS


@dataclass
class Diff:
    """The fields a change touched, with their values before and after (secret values hidden)."""

    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)

    def note(self, name: str, old: Any, new: Any) -> None:
        if name in _SECRET_FIELDS:
            old, new = (HIDDEN if old else None), (HIDDEN if new else None)
            if old == new == HIDDEN:
                new = HIDDEN + " changed"
        self.before.setdefault(name, old)
        self.after[name] = new


@dataclass
class _Done:
    result: dict[str, Any]
    summary: str
    # For the history: what was changed (input, output, meter, links, group, general) and which one.
    kind: str | None = None
    target_id: int | None = None
    target_key: str | None = None
    diff: Diff = field(default_factory=Diff)


def _row_id(args: dict[str, Any], field: str) -> int:
    value = args.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChangeError(field, f"{field} must be a whole-number id")
    return value


def _load(session: Session, model: type[_Row], args: dict[str, Any], field: str, what: str) -> _Row:
    row_id = _row_id(args, field)
    if not 1 <= row_id <= MAX_ID:
        raise ChangeError(field, f"there is no {what} with id {row_id}", status=404)
    # Refresh from the database: the processor's long-lived session may hold a copy older than
    # what the HeartbeatFilter has committed since.
    row = session.get(model, row_id, populate_existing=True)
    if row is None:
        raise ChangeError(field, f"there is no {what} with id {row_id}", status=404)
    return row


def _assign(row: Any, fields: dict[str, Any], diff: Diff | None = None) -> list[str]:
    """Set the fields on the row; describe each real change for the log (secrets masked) and the diff."""
    changes = []
    for name, value in fields.items():
        old = getattr(row, name)
        if old == value:
            continue
        setattr(row, name, value)
        if diff is not None:
            diff.note(name, old, value)
        if name in _SECRET_FIELDS:
            changes.append(f"{name} {'cleared' if value is None else 'changed'}")
        else:
            changes.append(f"{name} {old!r} -> {value!r}")
    return changes


def _drop_timed_reenable(session: Session, kind: str, row_id: int) -> None:
    """A later switch of the device, from anywhere, overrides a pending Telegram timed re-enable.

    Telegram stores its promise only after its own disable went through, so this never drops a new one.
    """
    rule_state.save(session, {rule_state.reenable_key(kind, row_id): None})


def _update_input(session: Session, args: dict[str, Any]) -> _Done:
    row = _load(session, InputConfig, args, "id", "input")
    fields = validate_input_fields(args.get("fields"))
    diff = Diff()
    changes = _assign(row, fields, diff)
    if "device_label" in fields:
        # A cleared label hands the label back to the device's own heartbeats.
        row.label_customized = fields["device_label"] is not None
    if any(name != "device_enabled" for name in fields):
        row.customized = True
    if "device_enabled" in fields:
        _drop_timed_reenable(session, "input", row.id)
    if "meter_fields" in args:
        # The inputs page saves a meter's input and meter settings together: one transaction, one entry.
        changes += _meter_change(session, row, args["meter_fields"], diff, "id")
    summary = f"input {row.device_key!r}: {', '.join(changes) or 'no change'}"
    return _Done({"id": row.id}, summary, "input", row.id, row.device_key, diff)


def _update_output(session: Session, args: dict[str, Any]) -> _Done:
    row = _load(session, OutputConfig, args, "id", "output")
    fields = validate_output_fields(args.get("fields"))
    diff = Diff()
    changes = _assign(row, fields, diff)
    if "device_label" in fields:
        row.label_customized = fields["device_label"] is not None
    if "device_enabled" in fields:
        _drop_timed_reenable(session, "output", row.id)
    summary = f"output {row.device_key!r}: {', '.join(changes) or 'no change'}"
    return _Done({"id": row.id}, summary, "output", row.id, row.device_key, diff)


def _meter_change(session: Session, row: InputConfig, raw: Any, diff: Diff, field: str) -> list[str]:
    """Apply a meter field map to the input's meter_config (made when missing); returns the changes."""
    if row.meter is None:
        if "meter" not in row.device_type.lower():
            raise ChangeError(field, f"input {row.device_key!r} is not a meter", status=404)
        row.meter = registry.new_meter_config()
    fields = validate_meter_fields(raw)
    if "meter_iot_topic" in fields and fields["meter_iot_topic"] is None:
        fields["meter_iot_topic"] = ""  # NOT NULL in the original schema; empty means the default topic
    low = fields.get("meter_low_limit", row.meter.meter_low_limit)
    high = fields.get("meter_high_limit", row.meter.meter_high_limit)
    if low is not None and high is not None and low > high:
        bad = "meter_low_limit" if "meter_low_limit" in fields else "meter_high_limit"
        raise ChangeError(bad, f"the low limit {low} is above the high limit {high}")
    changes = _assign(row.meter, fields, diff)
    row.customized = True
    return changes


def _update_meter(session: Session, args: dict[str, Any]) -> _Done:
    row = _load(session, InputConfig, args, "input_id", "input")
    diff = Diff()
    changes = _meter_change(session, row, args.get("fields"), diff, "input_id")
    summary = f"meter {row.device_key!r}: {', '.join(changes) or 'no change'}"
    return _Done({"id": row.id}, summary, "meter", row.id, row.device_key, diff)


def _keys(session: Session, model: type[InputConfig] | type[OutputConfig], ids: set[int]) -> list[str]:
    if not ids:
        return []
    return sorted(session.scalars(select(model.device_key).where(model.id.in_(ids))))


def _check_exist(
    session: Session, model: type[InputConfig] | type[OutputConfig], ids: list[int], field: str, what: str
) -> None:
    found = set(session.scalars(select(model.id).where(model.id.in_(ids)))) if ids else set()
    missing = sorted(set(ids) - found)
    if missing:
        raise ChangeError(field, f"there is no {what} with id {', '.join(map(str, missing))}")


def _replace_links(
    links: list[Any], id_of: Callable[[Any], int], make: Callable[[int], Any], wanted: list[int]
) -> tuple[set[int], set[int]]:
    """Make the relationship list hold exactly one link per wanted id; returns (added, removed) ids.

    A diff rather than delete-all-then-insert: the unit of work flushes inserts before deletes,
    so re-inserting a kept link would trip the unique constraint.
    """
    wanted_set = set(wanted)
    kept: set[int] = set()
    removed: set[int] = set()
    for link in list(links):
        linked = id_of(link)
        if linked in wanted_set and linked not in kept:
            kept.add(linked)
        else:
            links.remove(link)  # delete-orphan turns this into a DELETE
            if linked not in wanted_set:
                removed.add(linked)
    added = [i for i in wanted if i not in kept]
    links.extend(make(i) for i in added)
    return set(added), removed


def _linked_output_keys(session: Session, row: InputConfig) -> list[str]:
    return _keys(session, OutputConfig, {link.output_device_id for link in row.output_links})


def _linked_input_keys(session: Session, row: InputConfig) -> list[str]:
    return _keys(session, InputConfig, {link.linked_device_id for link in row.input_links})


def _replace_output_links(session: Session, row: InputConfig, wanted: list[int], diff: Diff) -> str:
    _check_exist(session, OutputConfig, wanted, "output_ids", "output")
    before = _linked_output_keys(session, row)
    added, removed = _replace_links(
        row.output_links, lambda link: link.output_device_id, lambda i: OutputLink(output_device_id=i), wanted
    )
    if added or removed:
        diff.note("outputs", before, sorted(_keys(session, OutputConfig, set(wanted))))
    return (
        f"output links: added {_keys(session, OutputConfig, added)}, "
        f"removed {_keys(session, OutputConfig, removed)}"
    )


def _replace_input_links(session: Session, row: InputConfig, wanted: list[int], diff: Diff) -> str:
    if row.id in wanted:
        raise ChangeError("input_ids", "an input cannot link to itself")
    _check_exist(session, InputConfig, wanted, "input_ids", "input")
    before = _linked_input_keys(session, row)
    added, removed = _replace_links(
        row.input_links, lambda link: link.linked_device_id, lambda i: InputLink(linked_device_id=i), wanted
    )
    if added or removed:
        diff.note("inputs", before, sorted(_keys(session, InputConfig, set(wanted))))
    added_keys, removed_keys = _keys(session, InputConfig, added), _keys(session, InputConfig, removed)
    return f"input links: added {added_keys}, removed {removed_keys}"


def _set_output_links(session: Session, args: dict[str, Any]) -> _Done:
    row = _load(session, InputConfig, args, "input_id", "input")
    wanted = validate_id_list(args.get("output_ids"), "output_ids")
    diff = Diff()
    summary = f"input {row.device_key!r} " + _replace_output_links(session, row, wanted, diff)
    return _Done({"id": row.id}, summary, "links", row.id, row.device_key, diff)


def _set_input_links(session: Session, args: dict[str, Any]) -> _Done:
    row = _load(session, InputConfig, args, "input_id", "input")
    wanted = validate_id_list(args.get("input_ids"), "input_ids")
    diff = Diff()
    summary = f"input {row.device_key!r} " + _replace_input_links(session, row, wanted, diff)
    return _Done({"id": row.id}, summary, "links", row.id, row.device_key, diff)


def _set_links(session: Session, args: dict[str, Any]) -> _Done:
    """An input's output links and input links together: one transaction, one history entry."""
    row = _load(session, InputConfig, args, "input_id", "input")
    output_ids = validate_id_list(args.get("output_ids"), "output_ids")
    input_ids = validate_id_list(args.get("input_ids"), "input_ids")
    diff = Diff()
    outs = _replace_output_links(session, row, output_ids, diff)
    ins = _replace_input_links(session, row, input_ids, diff)
    return _Done(
        {"id": row.id}, f"input {row.device_key!r} {outs}; {ins}", "links", row.id, row.device_key, diff
    )


def _set_group_enabled(session: Session, args: dict[str, Any]) -> _Done:
    """Every input of a group on or off together: all or nothing, one history entry."""
    name = args.get("group")
    if not isinstance(name, str) or not name.strip():
        raise ChangeError("group", "group must be a group name")
    enabled = args.get("enabled")
    if not isinstance(enabled, bool):
        raise ChangeError("enabled", "enabled must be true or false")
    stmt = select(InputConfig).where(InputConfig.group_name == name.strip()).order_by(InputConfig.id)
    members = list(session.scalars(stmt.execution_options(populate_existing=True)))
    if not members:
        raise ChangeError("group", f"there is no group {name.strip()!r}", status=404)
    diff = Diff()
    for row in members:
        if bool(row.device_enabled) != enabled or row.device_enabled is None:
            diff.note(row.device_key, row.device_enabled, enabled)
            row.device_enabled = enabled
        _drop_timed_reenable(session, "input", row.id)
    state = "enabled" if enabled else "disabled"
    summary = f"group {name.strip()!r} ({len(members)} inputs) {state}: {len(diff.after)} changed"
    return _Done(
        {
            "group": name.strip(),
            "enabled": enabled,
            "members": [m.id for m in members],
            "changed": len(diff.after),
        },
        summary,
        "group",
        None,
        name.strip(),
        diff,
    )


def _set_general_value(session: Session, key: str, value: str, diff: Diff) -> None:
    row = _general_row(session, key)
    old = row.config_value if row is not None else None
    if old != value:
        diff.note(key, old, value)
    if row is None:
        session.add(GeneralConfig(config_key=key, config_value=value))
    else:
        row.config_value = value


def _set_outputs_enabled(session: Session, args: dict[str, Any]) -> _Done:
    enabled = args.get("enabled")
    if not isinstance(enabled, bool):
        raise ChangeError("enabled", "enabled must be true or false")
    diff = Diff()
    _set_general_value(session, OUTPUTS_ENABLED_KEY, "1" if enabled else "0", diff)
    summary = f"outputs {'enabled' if enabled else 'disabled'}"
    return _Done({"enabled": enabled}, summary, "general", None, OUTPUTS_ENABLED_KEY, diff)


def _set_schedule(session: Session, args: dict[str, Any]) -> _Done:
    kind = args.get("kind")
    if kind == "input":
        row: InputConfig | OutputConfig = _load(session, InputConfig, args, "id", kind)
    elif kind == "output":
        row = _load(session, OutputConfig, args, "id", kind)
    else:
        raise ChangeError("kind", "kind must be 'input' or 'output'")
    # An absent time keeps the stored one; null clears it.
    enable = validate_time(args["enable"], "enable") if "enable" in args else row.auto_schedule_enable
    disable = validate_time(args["disable"], "disable") if "disable" in args else row.auto_schedule_disable
    # A stored time that was never valid (an original database's "7:00" or "") is normalised or dropped.
    enable = parse_hhmm(enable) if enable is not None else None
    disable = parse_hhmm(disable) if disable is not None else None
    auto, enable, disable = validate_schedule(args.get("auto_schedule"), enable, disable)
    values: dict[str, Any] = {
        "auto_schedule": auto,
        "auto_schedule_enable": enable,
        "auto_schedule_disable": disable,
    }
    # The zone the times are in: absent keeps the row's, null is USER_TZ (a row from the original keeps UTC).
    if "schedule_tz" in args:
        values["auto_schedule_tz"] = validate_zone(args["schedule_tz"], "timezone")
    diff = Diff()
    changes = _assign(row, values, diff)
    if isinstance(row, InputConfig) and changes:
        row.customized = True
    return _Done(
        {"kind": kind, "id": row.id},
        f"{kind} {row.device_key!r} schedule: {', '.join(changes) or 'no change'}",
        kind,
        row.id,
        row.device_key,
        diff,
    )


def _set_scheduler_enabled(session: Session, args: dict[str, Any]) -> _Done:
    enabled = args.get("enabled")
    if not isinstance(enabled, bool):
        raise ChangeError("enabled", "enabled must be true or false")
    diff = Diff()
    _set_general_value(session, SCHEDULER_ENABLED_KEY, "1" if enabled else "0", diff)
    summary = f"auto-scheduler {'on' if enabled else 'off'}"
    return _Done({"enabled": enabled}, summary, "general", None, SCHEDULER_ENABLED_KEY, diff)


# ---- quiet hours (informational inputs) ---------------------------------------------------------

QUIET_NOT_BEFORE_KEY = "quiet-hours-not-before"
QUIET_NOT_AFTER_KEY = "quiet-hours-not-after"
QUIET_ALL_OUTPUTS_KEY = "quiet-hours-all-outputs"


def _general_row(session: Session, key: str) -> GeneralConfig | None:
    stmt = select(GeneralConfig).where(GeneralConfig.config_key == key).order_by(GeneralConfig.id)
    return session.scalars(stmt).first()


def quiet_hours(session: Session, default: rules.QuietHours) -> rules.QuietHours:
    """The quiet-hours window: general_config rows override the settings' default, field by field."""
    window = default
    for key, name in ((QUIET_NOT_BEFORE_KEY, "not_before"), (QUIET_NOT_AFTER_KEY, "not_after")):
        row = _general_row(session, key)
        if row is not None:
            try:
                at = settings.parse_hhmm(row.config_value)
                window = (
                    replace(window, not_before=at) if name == "not_before" else replace(window, not_after=at)
                )
            except ValueError:
                # A bad stored time must not stop the processor; the setting's value holds instead.
                log.warning("general_config %s=%r is not HH:MM; using the default", key, row.config_value)
    row = _general_row(session, QUIET_ALL_OUTPUTS_KEY)
    if row is not None:
        window = replace(window, all_outputs=row.config_value.strip().lower() not in _FALSE_WORDS)
    return window


def _set_quiet_hours(session: Session, args: dict[str, Any]) -> _Done:
    changes: dict[str, str] = {}
    for field_name, key in (("not_before", QUIET_NOT_BEFORE_KEY), ("not_after", QUIET_NOT_AFTER_KEY)):
        if field_name in args:
            try:
                changes[key] = settings.parse_hhmm(args[field_name]).strftime("%H:%M")
            except ValueError as exc:
                raise ChangeError(field_name, f"{field_name} {exc}") from None
    if "all_outputs" in args:
        if not isinstance(args["all_outputs"], bool):
            raise ChangeError("all_outputs", "all_outputs must be true or false")
        changes[QUIET_ALL_OUTPUTS_KEY] = "1" if args["all_outputs"] else "0"
    if not changes:
        raise ChangeError(None, "give not_before, not_after and/or all_outputs")
    diff = Diff()
    for key, value in changes.items():
        _set_general_value(session, key, value, diff)
    summary = "quiet hours " + ", ".join(f"{k}={v}" for k, v in changes.items())
    result = {k.removeprefix("quiet-hours-").replace("-", "_"): v for k, v in changes.items()}
    return _Done(result, summary, "general", None, "quiet-hours", diff)


_ACTIONS: dict[str, Callable[[Session, dict[str, Any]], _Done]] = {
    "update_input": _update_input,
    "update_output": _update_output,
    "set_output_links": _set_output_links,
    "set_input_links": _set_input_links,
    "set_links": _set_links,
    "set_group_enabled": _set_group_enabled,
    "set_outputs_enabled": _set_outputs_enabled,
    "set_quiet_hours": _set_quiet_hours,
    "update_meter": _update_meter,
    "set_schedule": _set_schedule,
    "set_scheduler_enabled": _set_scheduler_enabled,
}
ACTIONS = frozenset(_ACTIONS)


def _json(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def record(session: Session, cmd: Command, done: _Done) -> None:
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


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    except SQLAlchemyError:
        log.warning("rollback after a failed configuration change also failed", exc_info=True)


def apply(session: Session, cmd: Command) -> Reply:
    """Apply one configuration Command in one transaction; bad input becomes a 4xx Reply, never an exception.

    Commits the session's transaction on success and rolls it back on any failure.
    """
    handler = _ACTIONS.get(cmd.action)
    if handler is None:
        return Reply(ok=False, error=f"unknown action {cmd.action!r}", field="action", status=400)
    if not isinstance(cmd.args, dict):
        return Reply(ok=False, error="args must be an object", field="args", status=400)
    try:
        done = handler(session, cmd.args)
        record(session, cmd, done)
        session.commit()
    except ChangeError as exc:
        _rollback(session)
        return Reply(ok=False, error=str(exc), field=exc.field, status=exc.status)
    except OperationalError:
        _rollback(session)
        log.warning("configuration change %s by %s failed: database unavailable", cmd.action, cmd.actor)
        return Reply(ok=False, error="the database is busy or unavailable; try again", status=503)
    except Exception:
        # The processor thread must survive a bug in one change; the caller gets no details.
        _rollback(session)
        log.exception("configuration change %s by %s failed", cmd.action, cmd.actor)
        return Reply(ok=False, error="internal error", status=500)
    log.info("configuration change by %s: %s", cmd.actor, done.summary)
    return Reply(ok=True, result=done.result)
