"""Configuration changes a person asks for, applied in the ConfigApplier thread: one handler per action.

The checks of the values live in change_validation, the history entry in change_history, the
general_config switches in general_config and the link replacement in link_changes; their public
names are re-exported here, where the rest of the hub has always found them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.core import settings
from app.core.channels import Command, Reply
from app.engine import general_config
from app.engine.change_history import HIDDEN as HIDDEN
from app.engine.change_history import SECRET_FIELDS
from app.engine.change_history import Diff as Diff
from app.engine.change_history import Done as _Done
from app.engine.change_history import record as record
from app.engine.change_history import shown_value as shown_value
from app.engine.change_validation import HHMM as HHMM
from app.engine.change_validation import INPUT_FIELDS as INPUT_FIELDS
from app.engine.change_validation import MAX_ID as MAX_ID
from app.engine.change_validation import MAX_LINKS as MAX_LINKS
from app.engine.change_validation import METER_FIELDS as METER_FIELDS
from app.engine.change_validation import OUTPUT_FIELDS as OUTPUT_FIELDS
from app.engine.change_validation import ChangeError as ChangeError
from app.engine.change_validation import parse_hhmm as parse_hhmm
from app.engine.change_validation import validate_id_list as validate_id_list
from app.engine.change_validation import validate_input_fields as validate_input_fields
from app.engine.change_validation import validate_meter_fields as validate_meter_fields
from app.engine.change_validation import validate_output_fields as validate_output_fields
from app.engine.change_validation import validate_schedule as validate_schedule
from app.engine.change_validation import validate_time as validate_time
from app.engine.change_validation import validate_zone as validate_zone
from app.engine.general_config import OUTPUTS_ENABLED_KEY as OUTPUTS_ENABLED_KEY
from app.engine.general_config import QUIET_ALL_OUTPUTS_KEY as QUIET_ALL_OUTPUTS_KEY
from app.engine.general_config import QUIET_NOT_AFTER_KEY as QUIET_NOT_AFTER_KEY
from app.engine.general_config import QUIET_NOT_BEFORE_KEY as QUIET_NOT_BEFORE_KEY
from app.engine.general_config import SCHEDULER_ENABLED_KEY as SCHEDULER_ENABLED_KEY
from app.engine.general_config import outputs_enabled as outputs_enabled
from app.engine.general_config import quiet_hours as quiet_hours
from app.engine.general_config import scheduler_enabled as scheduler_enabled
from app.engine.link_changes import replace_input_links as _replace_input_links
from app.engine.link_changes import replace_output_links as _replace_output_links
from app.store import registry, rule_state
from app.store.models import InputConfig, OutputConfig

log = logging.getLogger(__name__)

_Row = TypeVar("_Row", InputConfig, OutputConfig)


# Any here is the wire boundary: a Command's args come from JSON bodies, the bot and SQS, and each
# validator checks its value before it reaches a row.


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
        if name in SECRET_FIELDS:
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


def _set_one_links(
    session: Session,
    args: dict[str, Any],
    field: str,
    replace: Callable[[Session, InputConfig, list[int], Diff], str],
) -> _Done:
    """An input's output links or its input links alone: the ids under field replace the current ones."""
    row = _load(session, InputConfig, args, "input_id", "input")
    wanted = validate_id_list(args.get(field), field)
    diff = Diff()
    summary = f"input {row.device_key!r} " + replace(session, row, wanted, diff)
    return _Done({"id": row.id}, summary, "links", row.id, row.device_key, diff)


def _set_output_links(session: Session, args: dict[str, Any]) -> _Done:
    return _set_one_links(session, args, "output_ids", _replace_output_links)


def _set_input_links(session: Session, args: dict[str, Any]) -> _Done:
    return _set_one_links(session, args, "input_ids", _replace_input_links)


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


def _set_general_switch(session: Session, args: dict[str, Any], key: str, on: str, off: str) -> _Done:
    """A general_config on/off switch stored as "1"/"0"; `on`/`off` are its change summaries."""
    enabled = args.get("enabled")
    if not isinstance(enabled, bool):
        raise ChangeError("enabled", "enabled must be true or false")
    diff = Diff()
    general_config.set_value(session, key, "1" if enabled else "0", diff)
    return _Done({"enabled": enabled}, on if enabled else off, "general", None, key, diff)


def _set_outputs_enabled(session: Session, args: dict[str, Any]) -> _Done:
    return _set_general_switch(session, args, OUTPUTS_ENABLED_KEY, "outputs enabled", "outputs disabled")


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
    return _set_general_switch(
        session, args, SCHEDULER_ENABLED_KEY, "auto-scheduler on", "auto-scheduler off"
    )


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
        general_config.set_value(session, key, value, diff)
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
