"""MqttSource: ESP32 sensor and meter messages on MQTT in as Envelopes; the hub's MQTT messages out."""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from typing import Any, cast

import zmq

from app.core import channels, health
from app.core.settings import Settings
from pylib import decoding, inproc, mqtt, ratelog, threads, wire
from pylib.threads import AppThread

log = logging.getLogger(__name__)
# Any here is the wire boundary: JSON bodies from MQTT devices, checked field by field.

COMPONENT = "mqtt"
SOURCE = "mqtt"
# Counters (health.count): mqtt.received (readings forwarded), mqtt.heartbeats, mqtt.malformed
# (a bad message, or one bad input_N of an otherwise good one), mqtt.ignored (not a device
# reading), mqtt.errors (a bug here), mqtt.published, mqtt.outbox_dropped, mqtt.publish_errors.

# The real devices send well under 1 KiB. The broker reads any size into memory before we see it
# (MQTT 3.1.1 has no way to tell it our limit; mosquitto's message_size_limit does), but nothing
# bigger than this is parsed, logged or kept.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TEXT = 100  # device_id, input_location, input_label: the registry's device keys are <= 100
HEARTBEAT_PAYLOAD = b"OK"
# device_id -> descriptions (at most MAX_INPUTS_PER_DEVICE each), for heartbeats; a flood of ids
# cannot grow it past this. A house has tens of boards.
MAX_REMEMBERED_DEVICES = 256
# One thread owns the paho client and drives it with client.loop(timeout=LOOP_SECONDS), draining
# the inproc publish requests between calls. No loop_start(): its second thread would run our
# callbacks while this one publishes, so the outbox, the in-flight table and paho itself would need
# locks. No socket callbacks with a zmq.Poller either: they would save at most LOOP_SECONDS on a
# meter reset (nothing else is published) at the price of redoing what loop() gets right (TLS bytes
# already decrypted but not yet read, keepalive pings). LOOP_SECONDS also bounds how long shutdown
# waits; loop() returns as soon as the socket has data, so inbound messages are not delayed by it.
LOOP_SECONDS = 0.1
MAX_REQUESTS_PER_LOOP = 100  # publish requests taken per loop, so a flood cannot starve the network
_INPUT_KEY = re.compile(r"input_(\d{1,6})")
_INT_RANGE = (-(2**63), 2**64 - 1)  # what msgpack can carry


class Malformed(ValueError):
    """A message (or one input of it) that does not match the device wire format."""


def parse_json(payload: bytes) -> Any:
    """Decode a device's JSON text; NaN, Infinity and undecodable bytes are Malformed."""

    try:
        return decoding.loads(payload)
    except decoding.DecodeError as exc:
        raise Malformed(str(exc)) from None


def is_number(value: object) -> bool:
    """A finite JSON number (not a bool) that msgpack can carry."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return _INT_RANGE[0] <= value <= _INT_RANGE[1]
    return isinstance(value, float) and math.isfinite(value)


def _kind(value: object) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def text(body: dict[str, Any], name: str) -> str:
    """A required, non-blank string field of at most MAX_TEXT characters."""
    value = body.get(name)
    if not isinstance(value, str):
        raise Malformed(f"{name} is {_kind(value)}, not a string")
    if not value.strip():
        raise Malformed(f"{name} is blank")
    if len(value) > MAX_TEXT:
        raise Malformed(f"{name} is longer than {MAX_TEXT} characters")
    try:
        value.encode("utf-8")  # JSON escapes can make lone surrogates, which msgpack cannot carry
    except UnicodeEncodeError:
        raise Malformed(f"{name} is not valid Unicode") from None
    return value


def description(device_key: str, device_type: str, location: str, device_id: str) -> dict[str, Any]:
    return {
        "device_key": device_key,
        "device_label": device_key,
        "type": device_type,
        "location": location,
        "device_id": device_id,
    }


def sensor_devices(
    device_id: str, location: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """adc-app: (every input described, the active ones with sample_value, problems with skipped inputs)."""
    inputs: list[dict[str, Any]] = []
    active: list[dict[str, Any]] = []
    problems: list[str] = []
    numbered = sorted((int(m.group(1)), key) for key in body if (m := _INPUT_KEY.fullmatch(key)))
    for _, key in numbered:
        item = body[key]
        try:
            if not isinstance(item, dict):
                raise Malformed(f"is {_kind(item)}, not an object")
            label = text(item, "input_label")
            is_active = item.get("active")
            if not isinstance(is_active, bool):
                raise Malformed(f"active is {_kind(is_active)}, not true or false")
            value = item.get("sample_value")
            if is_active and not is_number(value):
                raise Malformed(f"sample_value is {_kind(value)}, not a number")
        except Malformed as exc:
            problems.append(f"{key} {exc}")
            continue
        device_key = f"{location} {label}"
        desc = description(device_key, label, location, device_id)
        inputs.append(desc)
        if is_active:
            active.append({**desc, "sample_value": value})
    if not numbered:
        problems.append("no input_N objects")
    return inputs, active, problems


def meter_devices(
    topic_levels: list[str], device_id: str, location: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """meter-app: the meter described, and as an active device with its two readings."""
    values = {}
    for name in ("last_minute_metered", "register_reading"):
        value = body.get(name)
        if not is_number(value):
            raise Malformed(f"{name} is {_kind(value)}, not a number")
        values[name] = value
    # As the original: 'meter/electricity' -> 'electricity meter'.title() -> 'Electricity Meter'.
    device_key = f"{topic_levels[1]} {topic_levels[0]}".title()
    desc = description(device_key, "meter", location, device_id)
    sample_values = {"meter": values["last_minute_metered"], "register": values["register_reading"]}
    return [desc], [{**desc, "sample_values": sample_values}]


def outgoing(request: object) -> mqtt.Outgoing:
    """Check a publish request from another thread; ValueError names what is wrong with it."""
    if not isinstance(request, channels.MqttPublish):
        raise ValueError(f"a {type(request).__name__} is not an MqttPublish")
    payload = request.payload
    if isinstance(payload, str):  # a sender that passed text: send its UTF-8 bytes
        payload = payload.encode("utf-8")
    if not isinstance(request.topic, str) or not request.topic:
        raise ValueError(f"the topic is {_kind(request.topic)}, not a topic name")
    if not isinstance(payload, bytes):
        raise ValueError(f"the payload for {request.topic!r} is {_kind(payload)}, not bytes")
    if request.qos not in (0, 1, 2) or not isinstance(request.retain, bool):
        raise ValueError(f"qos {request.qos!r} / retain {request.retain!r} for {request.topic!r}")
    return mqtt.Outgoing(request.topic, payload, request.qos, request.retain)


class MqttSource(AppThread):
    """Thread owning the MQTT client: device readings and heartbeats in, the hub's publishes out."""

    def __init__(
        self,
        settings: Settings,
        backoff: threads.Backoff | None = None,
        connect_timeout: float = mqtt.CONNECT_TIMEOUT,
        keepalive: int = mqtt.KEEPALIVE,
    ) -> None:
        super().__init__("MqttSource")
        self.settings = settings
        spec = mqtt.BrokerSpec(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            username=settings.mqtt_username,
            password=settings.mqtt_password,
            tls=settings.mqtt_tls,
            ca_certs=settings.mqtt_ca_certs,
            keepalive=keepalive,
        )
        # Unique per start: two hubs (or a hub restarting before the broker noticed the old
        # connection died) must not kick each other off. <= 23 characters, which every broker takes.
        self.client_id = f"{re.sub(r'[^A-Za-z0-9_-]', '', settings.app_name)[:14]}-{uuid.uuid4().hex[:8]}"
        self._connection = mqtt.Connection(
            spec,
            "MqttSource",
            settings.mqtt_subscriptions,
            self._on_message,
            client_id=self.client_id,
            qos=1,
            on_state=lambda state, detail: health.set_state(COMPONENT, state, detail),
            on_count=lambda name: health.count(f"{COMPONENT}.{name}"),
            backoff=backoff,
            outbox_size=settings.mqtt_outbox_size,
            connect_timeout=connect_timeout,
        )
        self.connected = self._connection.connected
        # device_id -> (origin, descriptions) from its last reading, so a heartbeat refreshes them
        self._devices: OrderedDict[str, tuple[str, list[dict[str, Any]]]] = OrderedDict()
        # Envelopes of one wake-up's messages, handed to the HeartbeatFilter in one frame
        self._push: inproc.Outbox | None = None
        self._bad_log = ratelog.RateLimitedLog(log)
        self._pull = inproc.bind_pull(channels.MQTT_PUBLISH)

    @property
    def connect_count(self) -> int:
        return self._connection.connect_count

    @property
    def connect_attempts(self) -> int:
        return self._connection.attempts

    @property
    def outbox_pending(self) -> int:
        return self._connection.pending

    @property
    def unacknowledged(self) -> int:
        return self._connection.unacknowledged

    def work(self) -> None:
        self._push = inproc.connect_outbox(channels.HEARTBEAT_FILTER)
        log.info(
            "MqttSource: broker %s, client id %s, subscriptions %s",
            self._connection.spec.describe(),
            self.client_id,
            ", ".join(self.settings.mqtt_subscriptions),
        )
        try:
            while not threads.shutting_down.is_set():
                self._connection.step(LOOP_SECONDS)
                self._hand_on()
                self._take_publish_requests()
        finally:
            self._connection.close()
            self._push.close(linger=0)
            self._pull.close(linger=0)

    # --- outbound ------------------------------------------------------------------------------

    def _take_publish_requests(self) -> None:
        for _ in range(MAX_REQUESTS_PER_LOOP):
            # EVENTS is a cheap flag read; recv(NOBLOCK) on an empty socket raises, every loop
            # (EVENTS is an int option; pyzmq types every option int | bytes)
            if not cast(int, self._pull.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            try:
                frame = self._pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                request = inproc.decode(frame)
            except inproc.MessageError as exc:
                log.warning("dropping an undecodable publish request: %s", exc)
                continue
            try:
                self._connection.publish(outgoing(request))
            except ValueError as exc:
                log.warning("dropping a publish request: %s", exc)

    # --- inbound -------------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Every message goes through here; nothing in one message may stop the client."""
        try:
            self._handle(topic, payload)
        except Malformed as exc:
            self._bad_log.warning(
                "malformed MQTT message on %r: %s; payload %s", topic[:200], exc, wire.preview(payload)
            )
            health.count(f"{COMPONENT}.malformed")
        except Exception:
            log.exception(
                "MqttSource failed to handle a message on %r: payload %s", topic[:200], wire.preview(payload)
            )
            health.count(f"{COMPONENT}.errors")

    def _handle(self, topic: str, payload: bytes) -> None:
        levels = topic.split("/")
        if len(levels) == 3 and levels[1] == "heartbeat":
            self._heartbeat(topic, levels[2], payload)
            return
        kind = levels[0]
        if kind not in ("sensor", "meter"):
            log.debug("ignoring MQTT message on %r: not a sensor or meter topic", topic[:200])
            health.count(f"{COMPONENT}.ignored")
            return
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise Malformed(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES} byte limit")
        if len(levels) < 2 or not levels[1]:
            raise Malformed("the topic has no second level to name the origin")
        body = parse_json(payload)
        if not isinstance(body, dict):
            raise Malformed(f"the payload is a JSON {type(body).__name__}, not an object")
        if "device_id" not in body:
            # e.g. the hub's own meter reset {"set_register": N} on meter/electricity/control
            log.debug("ignoring MQTT message on %r: no device_id, not a device reading", topic[:200])
            health.count(f"{COMPONENT}.ignored")
            return
        device_id = text(body, "device_id")
        location = text(body, "input_location")
        origin = "/".join(levels[:2])
        if kind == "sensor":
            inputs, active, problems = sensor_devices(device_id, location, body)
        else:
            inputs, active = meter_devices(levels, device_id, location, body)
            problems = []
        if problems:
            # The rest of the message is still used: one broken input must not hide the others.
            # One line for the message, however many bad inputs it holds.
            self._bad_log.warning(
                "malformed MQTT message on %r: %d problem(s): %s; payload %s",
                topic[:200],
                len(problems),
                "; ".join(problems[:3]),
                wire.preview(payload),
            )
            health.count(f"{COMPONENT}.malformed", len(problems))
        if not inputs:
            return
        # Heartbeats refresh at most as many inputs as a device may ever register.
        self._remember(device_id, origin, inputs[: self.settings.max_inputs_per_device])
        # The device's own 'timestamp' is its uptime, not a time: None makes the processor treat
        # the reading as fresh, as the original did by stamping it on arrival.
        data = {"device_info": {"inputs": inputs}, "active_devices": active}
        health.count(f"{COMPONENT}.received")  # first, so the count is in place when the Envelope is
        self._forward(origin, topic, data, device_id)
        if active:
            log.debug("%s: %s active", origin, ", ".join(d["device_key"] for d in active))

    def _heartbeat(self, topic: str, device_id: str, payload: bytes) -> None:
        if payload.strip() != HEARTBEAT_PAYLOAD:
            raise Malformed("a heartbeat payload must be OK")
        health.count(f"{COMPONENT}.heartbeats")
        known = self._devices.get(device_id)
        if known is None:
            log.debug("heartbeat from %r, which has sent no reading yet", device_id)
            return
        origin, inputs = known
        self._forward(origin, topic, {"device_info": {"inputs": inputs}}, device_id)

    def _remember(self, device_id: str, origin: str, inputs: list[dict[str, Any]]) -> None:
        self._devices[device_id] = (origin, inputs)
        self._devices.move_to_end(device_id)
        while len(self._devices) > MAX_REMEMBERED_DEVICES:
            self._devices.popitem(last=False)

    def _forward(self, origin: str, topic: str, data: dict[str, Any], device_id: str) -> None:
        envelope = channels.Envelope(
            origin=origin,
            received_at=time.time(),
            payload={"timestamp": None, "data": data},
            source=SOURCE,
            routing_key=topic,
            device=f"{origin}/{device_id}",  # the board, for the per-device registration caps
        )
        self._send(inproc.encode(envelope))

    def _send(self, frame: bytes) -> None:
        assert self._push is not None
        self._push.add(frame, threads.shutting_down)

    def _hand_on(self) -> None:
        """Send what the messages just read produced, as one frame (waiting while the filter is full)."""
        if self._push is not None:
            self._push.flush(threads.shutting_down)
