"""The SQS control messages: their schema, decoding and validation, and the device a message names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import InputConfig, OutputConfig
from pylib import decoding

# Any here is the wire boundary: SQS message bodies as JSON, checked by validate().

# The schema below is also written down as docs/sqs-control.schema.json; the tests hold the two together.
SCHEMA_VERSION = 1
ACTIONS = ("enable", "disable", "panic", "outputs")
KINDS = ("input", "output")
DEVICE_MAX = 100  # input_config/output_config.device_key and device_label are VARCHAR(100)
REASON_MAX = 255  # the processor keeps at most this much of an event_detail
# A control message is a few dozen bytes; an SNS envelope adds about 1 KB. Anything far bigger is
# not meant for us, and parsing it would only cost memory on the Pi.
MAX_BODY_BYTES = 16 * 1024
EXCERPT_CHARS = 200
_FIELDS: dict[str, frozenset[str]] = {
    "enable": frozenset({"device", "kind"}),
    "disable": frozenset({"device", "kind"}),
    "panic": frozenset({"reason"}),
    "outputs": frozenset({"enabled"}),
}
_REQUIRED: dict[str, frozenset[str]] = {
    "enable": frozenset({"device"}),
    "disable": frozenset({"device"}),
    "panic": frozenset(),
    "outputs": frozenset({"enabled"}),
}
_MODELS: dict[str, type[InputConfig] | type[OutputConfig]] = {"input": InputConfig, "output": OutputConfig}
# The original's shape, {"data": {"active_devices": [...]}}: input events, as SNS/IFTTT sent them.
ACTIVATE = "activate"  # the request it becomes (not an "action" a message names)
ACTIVE_MAX = 20  # devices in one such message; the original put one or two there
# The wire format's timestamp (pylib make_payload: 2023-11-25T09:07:07.123456+0000); also in the schema.
TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([+-][0-9]{2}:?[0-9]{2}|Z)"
)


class InvalidMessage(ValueError):
    """A message that can never be acted on: it is logged, counted and deleted."""


@dataclass(frozen=True)
class ControlRequest:
    """One validated control message."""

    action: str
    device: str | None = None
    kind: str | None = None
    reason: str | None = None
    enabled: bool | None = None
    # ACTIVATE: (device_key, event_detail) per active device, and the sender's time (None: now)
    devices: tuple[tuple[str, str | None], ...] = ()
    timestamp: float | None = None


@dataclass(frozen=True)
class Target:
    kind: str
    id: int
    key: str


def _json(text: str, what: str) -> Any:
    try:
        return decoding.loads(text)
    except decoding.DecodeError as exc:
        # e.g. a few kilobytes of "[[[[" exhaust the parser's stack; the reason says which limit
        raise InvalidMessage(f"{what} is not JSON within the limits ({str(exc)[:120]})") from None


def decode(body: str) -> ControlRequest:
    """An SQS message body -> a ControlRequest; raises InvalidMessage saying why it is not one.

    The body is a control message itself (raw delivery) or an SNS notification envelope whose
    Message holds it (an SNS topic subscribed to the queue without raw delivery).
    """
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise InvalidMessage(f"the body of {size} bytes is over the {MAX_BODY_BYTES}-byte limit")
    doc = _json(body, "the body")
    if isinstance(doc, dict) and "Type" in doc and "action" not in doc:
        if doc.get("Type") != "Notification":
            raise InvalidMessage(f"an SNS {str(doc.get('Type'))[:40]!r} message, not a Notification")
        if not isinstance(doc.get("Message"), str):
            raise InvalidMessage("an SNS notification without a Message string")
        doc = _json(doc["Message"], "the SNS Message")
    return validate(doc)


def validate(doc: object) -> ControlRequest:
    """A parsed JSON value -> a ControlRequest, exactly as docs/sqs-control.schema.json allows."""
    if not isinstance(doc, dict):
        raise InvalidMessage(f"a JSON {_json_type(doc)}, not an object")
    action = doc.get("action")
    if "action" not in doc and "data" in doc:
        return _validate_original(doc)
    if not isinstance(action, str) or action not in ACTIONS:
        raise InvalidMessage(f"action must be one of {', '.join(ACTIONS)}")
    allowed = _FIELDS[action] | {"action", "version"}
    extra = sorted(str(name) for name in doc if name not in allowed)
    if extra:
        raise InvalidMessage(f"unknown field(s) for {action}: {', '.join(extra)[:100]}")
    missing = sorted(_REQUIRED[action] - set(doc))
    if missing:
        raise InvalidMessage(f"{action} needs {', '.join(missing)}")
    if "version" in doc:
        version = doc["version"]
        # JSON Schema's const compares numbers by value (1.0 is 1) but never a boolean with a number.
        if isinstance(version, bool) or not isinstance(version, int | float) or version != SCHEMA_VERSION:
            raise InvalidMessage(f"version must be {SCHEMA_VERSION}")
    if action in ("enable", "disable"):
        device = doc["device"]
        if not isinstance(device, str) or not device.strip() or len(device) > DEVICE_MAX:
            raise InvalidMessage(f"device must be a device key or label of 1 to {DEVICE_MAX} characters")
        kind = doc.get("kind")
        if "kind" in doc and kind not in KINDS:
            raise InvalidMessage("kind must be input or output")
        return ControlRequest(action, device=device.strip(), kind=kind)
    if action == "panic":
        reason = doc.get("reason")
        if "reason" in doc and (not isinstance(reason, str) or len(reason) > REASON_MAX):
            raise InvalidMessage(f"reason must be text of at most {REASON_MAX} characters")
        reason = reason.strip() if isinstance(reason, str) else None
        return ControlRequest(action, reason=reason or None)
    enabled = doc["enabled"]
    if not isinstance(enabled, bool):
        raise InvalidMessage("enabled must be true or false")
    return ControlRequest(action, enabled=enabled)


def _validate_original(doc: dict[str, Any]) -> ControlRequest:
    """The original's {"data": {"active_devices": [{"device_key": ...}]}} (original §12.6) as input events."""
    extra = sorted(str(name) for name in doc if name not in ("data", "timestamp"))
    if extra:
        raise InvalidMessage(f"unknown field(s) beside data: {', '.join(extra)[:100]}")
    data = doc["data"]
    if not isinstance(data, dict):
        raise InvalidMessage(f"data must be an object, not a JSON {_json_type(data)}")
    active = data.get("active_devices")
    if not isinstance(active, list) or not 1 <= len(active) <= ACTIVE_MAX:
        raise InvalidMessage(f"data.active_devices must be a list of 1 to {ACTIVE_MAX} devices")
    devices: list[tuple[str, str | None]] = []
    for device in active:
        if not isinstance(device, dict):
            raise InvalidMessage("each active device must be an object")
        key = device.get("device_key")
        if not isinstance(key, str) or not key.strip() or len(key) > DEVICE_MAX:
            raise InvalidMessage(f"each active device needs a device_key of 1 to {DEVICE_MAX} characters")
        detail = device.get("event_detail")
        if "event_detail" in device and (not isinstance(detail, str) or len(detail) > REASON_MAX):
            raise InvalidMessage(f"event_detail must be text of at most {REASON_MAX} characters")
        devices.append((key, detail or None))
    when: float | None = None
    if "timestamp" in doc:
        stamp = doc["timestamp"]
        if not isinstance(stamp, str) or not TIMESTAMP.fullmatch(stamp):
            raise InvalidMessage("timestamp must be a time such as 2023-11-25T09:07:07.123456+0000")
        try:
            when = datetime.fromisoformat(stamp).timestamp()
        except ValueError:
            raise InvalidMessage(f"timestamp {stamp!r} is not a real time") from None
    return ControlRequest(ACTIVATE, devices=tuple(devices), timestamp=when)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "boolean" if isinstance(value, bool) else "number"


def excerpt(body: str) -> str:
    """The start of a body for the log: enough to recognise it, never the whole of a huge one."""
    if len(body) <= EXCERPT_CHARS:
        return repr(body)
    return f"{body[:EXCERPT_CHARS]!r}… ({len(body)} characters)"


def find_device(session: Session, name: str, kind: str | None) -> Target:
    """The one input or output called `name`: its device_key exactly, else its key or label ignoring case.

    Raises InvalidMessage when nothing, or more than one device, answers to the name.
    """
    kinds = (kind,) if kind else KINDS
    rows = [
        (k, row_id, key, label)
        for k in kinds
        for row_id, key, label in session.execute(
            select(_MODELS[k].id, _MODELS[k].device_key, _MODELS[k].device_label)
        )
    ]
    found = [Target(k, i, key) for k, i, key, _ in rows if key == name]
    if not found:
        folded = name.casefold()
        found = [
            Target(k, i, key)
            for k, i, key, label in rows
            if folded in (key.casefold(), (label or "").casefold())
        ]
    what = kind or "input or output"
    if not found:
        raise InvalidMessage(f"no {what} is called {name!r}")
    if len(found) > 1:
        names = ", ".join(f"{t.kind} {t.key!r}" for t in found[:5])
        hint = "give kind" if kind is None and len({t.kind for t in found}) > 1 else "use the device_key"
        raise InvalidMessage(f"{name!r} names {len(found)} devices ({names}); {hint}")
    return found[0]
