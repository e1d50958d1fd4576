"""Every inproc URL between the hub's threads, and the typed messages that travel on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from pylib.inproc import message

# Any in these messages: device payloads and command args as decoded from the wire (checked where
# they are used), JSON results and rule-state values, and field lists msgpack carries as lists.
# PULL side binds, PUSH side connects.
HEARTBEAT_FILTER = "inproc://heartbeat-filter"  # sources -> HeartbeatFilter
PROCESSOR = "inproc://event-processor"  # HeartbeatFilter, API -> EventProcessor
CONTROL_PUBLISHER = "inproc://control-publisher"  # EventProcessor -> ControlPublisher
AUDIT = "inproc://audit-writer"  # EventProcessor, HeartbeatFilter -> AuditWriter (every store write)
# Frames the AuditWriter's pipe queues per side. It stops reading while it writes a batch (tens of
# ms), and the processor's frames then are small (a few decisions each): at the 32 + 32 of the other
# batched pipes the processor waited on the writer in bursts (3,100-3,400 msg/s against 3,850-4,250
# with more room, bench.probe). 250 + 250 frames cover a write many times over; at most 16,000 records.
AUDIT_HWM = 250
CONFIG = "inproc://config-applier"  # EventProcessor -> ConfigApplier (configuration changes)
MQTT_PUBLISH = "inproc://mqtt-publish"  # EventProcessor -> MqttSource (meter resets)
METER_WRITER = "inproc://meter-writer"  # EventProcessor -> MeterWriter (InfluxDB)
NOTIFIER = "inproc://notifier"  # EventProcessor, OfflineMonitor -> Telegram notifier


@message
@dataclass
class Envelope:
    """One inbound device message: where it came from, when it arrived, and its normalised body.

    payload is {'timestamp': str | None, 'data': {...}} as returned by pylib.wire.decode_body.
    changed_keys lists device keys the HeartbeatFilter registered or re-described (or whose
    generation changed) in this message. device names the sending device for the
    per-device registration caps (origin plus device name, or the MQTT board's id); empty: origin.
    refused_keys lists the input keys a registration cap refused, so the processor skips them.
    adverts lists the devices registered or re-described by this message as [kind, key, label,
    type, location], and generations the outputs whose wire generation changed as [key,
    generation]: the processor learns both in memory at once, while the AuditWriter stores them.
    """

    origin: str
    received_at: float
    payload: dict[str, Any]
    source: str = "rabbitmq"
    routing_key: str = ""
    changed_keys: list[str] = field(default_factory=list)
    device: str = ""
    refused_keys: list[str] = field(default_factory=list)
    adverts: list[list[Any]] = field(default_factory=list)
    generations: list[list[Any]] = field(default_factory=list)


@message
@dataclass
class Command:
    """A request to change configuration or fire an input, sent to the EventProcessor (which hands
    changes to the ConfigApplier).

    reply_to, when set, is an inproc URL the caller has bound a PULL socket on for the Reply.
    """

    action: str
    args: dict[str, Any]
    actor: str = "api"
    reply_to: str | None = None


@message
@dataclass
class Reply:
    ok: bool
    result: Any = None
    error: str | None = None
    field: str | None = None
    status: int = 200


@message
@dataclass
class ControlMessage:
    """A trigger for a device: the exact AMQP body, where to send it, and when it goes stale."""

    routing_key: str
    body: bytes
    expires_at: float  # unix time after which the trigger must not fire
    output_key: str = ""


class OutputOutcome(TypedDict):
    """One linked output's part of a decision (models.DecisionOutput): fired, or why not."""

    output_device_id: int
    output_key: str
    output_label: str
    fired: NotRequired[bool]
    reason: NotRequired[str | None]
    detail: NotRequired[str | None]


class DecisionRecord(TypedDict):
    """One input event's decision as the processor made it (models.Decision, with its outputs)."""

    timestamp: float
    input_device_id: int  # negative for a device registered a moment ago, until the writer has its id
    input_key: str
    input_label: str
    origin: str
    event_detail: str | None
    fired: bool
    reason: str | None
    detail: str | None
    outputs: list[OutputOutcome]


class EventLogRow(TypedDict):
    """An event_log row, the original's record of an output that fired for an input."""

    input_device: str
    output_device: str
    timestamp: float


@message
@dataclass
class AuditRecord:
    """One decision and the event_log rows of what fired (TypedDicts: msgpack carries them as maps)."""

    decision: DecisionRecord
    event_log: list[EventLogRow] = field(default_factory=list)


@message
@dataclass
class MqttPublish:
    """A message for the MQTT broker, published by the MqttSource's client (queued while disconnected)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@message
@dataclass
class MeterPoint:
    """One meter reading for InfluxDB (measurement 'meter')."""

    device_key: str
    location: str | None
    metered: float | None
    register: float | None
    reading: float | None
    timestamp: float
    divisor: int = 1  # the meter's unit factor: the original's layout writes metered / factor


@message
@dataclass
class Notification:
    """Something to tell the owner in the Telegram chat room (the built-in SMS output, or a text).

    An event notification carries the input's label, detail and time, the recent triggers of other
    inputs as [label, seconds ago] pairs, the camera image when there is one, and the SMS output's
    device_params (a CSV of name;+phone) for the SNS fallback. A plain message carries only text.
    """

    timestamp: float
    input_key: str = ""
    input_label: str = ""
    input_type: str = ""
    event_detail: str | None = None
    storage_url: str | None = None
    history: list[list[Any]] = field(default_factory=list)
    image: bytes | None = None
    sms_recipients: str | None = None
    text: str | None = None


@message
@dataclass
class StateWrite:
    """Rule state to store (rule_state key -> JSON value, None deletes), taken at `version` (unix time).

    The processor hands these to the AuditWriter so its own thread never waits on the database.
    """

    values: dict[str, Any]
    version: float


@message
@dataclass
class Registration:
    """Devices the HeartbeatFilter registered or re-described, and outputs that changed generation.

    new and refreshed hold [kind, key, label, type, location]; generations [key, generation,
    device]. The AuditWriter stores them and answers the processor with Registered.
    """

    origin: str
    new: list[list[Any]] = field(default_factory=list)
    refreshed: list[list[Any]] = field(default_factory=list)
    generations: list[list[Any]] = field(default_factory=list)


@message
@dataclass
class Registered:
    """The AuditWriter stored these device keys: the processor reads their rows (and real ids) again."""

    keys: list[str]


@message
@dataclass
class LastSeen:
    """Last-seen times (device key -> unix time) for the AuditWriter to store."""

    seen: dict[str, float]


@message
@dataclass
class MeterReading:
    """One meter reading to store: meter_config's current values and a meter_history row.

    input_id is negative while the meter's registration is still on its way to the database; the
    AuditWriter then finds the row by input_key.
    """

    input_id: int
    input_key: str
    timestamp: float
    values: dict[str, Any]  # meter_reading, and register_value / meter_value when sent
    reading: float | None


@message
@dataclass
class Applied:
    """A configuration change the ConfigApplier stored: the processor reloads, then answers the caller."""

    reply_to: str | None
    reply: dict[str, Any]  # the Reply's fields
    reload: bool
