"""Checks of the values a configuration change asks for: field maps, id lists, schedule times and zones."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from app import protocols
from app.core import zones

# Any here is the wire boundary: a Command's args come from JSON bodies, the bot and SQS, and each
# validator below checks its value before it reaches a row.

MAX_LINKS = 1000
MAX_ID = 2**63 - 1  # SQLite INTEGER; a larger Python int cannot even be bound as a parameter
# Publishing with AMQP wildcards or spaces in a routing key is legal but never what a person meant.
_ROUTING_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
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
