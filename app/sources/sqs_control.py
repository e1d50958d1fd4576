"""SqsControl: control messages (enable or disable a device, panic, the outputs switch) from an SQS queue."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.core import aws, health
from app.core.channels import Reply
from app.core.settings import Settings
from app.engine import commands
from app.store import registry
from app.store.models import InputConfig, OutputConfig
from pylib import decoding, threads

log = logging.getLogger(__name__)
# Any here is the wire boundary: SQS messages and their JSON bodies, checked by validate().

COMPONENT = "sqs_control"
ACTOR = "sqs"
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
MAX_MESSAGES = 10  # SQS's own limit per receive
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
_QUEUE_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
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

Outcome = Literal["done", "invalid", "failed", "retry"]


class InvalidMessage(ValueError):
    """A message that can never be acted on: it is logged, counted and deleted."""


class _QueueMissing(Exception):
    """SQS_QUEUE names no queue (yet)."""


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


# ---- parsing and validation (pure) ----------------------------------------------------------------


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


# ---- the thread -----------------------------------------------------------------------------------


class SqsControl(threads.AppThread):
    """Long-polls SQS_QUEUE and asks the EventProcessor to act on each valid control message."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        super().__init__("SqsControl")
        self._settings = settings
        self._sessions = session_factory
        self._client: aws.Client = None  # made by work(), before any use
        self._queue_url: str | None = None
        self._quiet = threads.QuietRepeats()
        self._up = False
        # A long poll in flight cannot be interrupted; let it end so the stop is clean, not reported stuck.
        self.stop_grace = settings.sqs_wait_seconds + 2.0

    def work(self) -> None:
        queue = self._settings.sqs_queue
        log.info(
            "SQS control on: queue %r (SQS_QUEUE), long-poll %d s", queue, self._settings.sqs_wait_seconds
        )
        health.set_state(COMPONENT, "starting", queue)
        # Our own backoff does the retrying; botocore's would only hide the outage for longer.
        self._client = aws.client(self._settings, "sqs", retries={"max_attempts": 1, "mode": "standard"})
        backoff = threads.Backoff(RETRY_INITIAL, RETRY_MAX)
        try:
            while not threads.shutting_down.is_set():
                try:
                    messages = self._receive()
                except _QueueMissing:
                    self._down(f"queue {queue!r} does not exist (SQS_QUEUE)", backoff)
                except (BotoCoreError, ClientError) as exc:
                    self._down(f"SQS unreachable or refusing: {_describe(exc)}", backoff)
                else:
                    backoff.reset()
                    self._reachable()
                    self._handle_all(messages)
        finally:
            health.set_state(COMPONENT, "down", "stopped")

    def _reachable(self) -> None:
        if not self._up:
            self._up = True
            self._quiet.reset()
            log.info("SQS control: listening on %s", self._queue_url)
            health.set_state(COMPONENT, "connected", self._settings.sqs_queue)

    def _down(self, problem: str, backoff: threads.Backoff) -> None:
        self._up = False
        health.set_state(COMPONENT, "down", problem)
        if self._quiet.should_log(problem):
            log.warning("SQS control: %s; retrying (every %.0f s at most)", problem, RETRY_MAX)
        backoff.pause()

    def _receive(self) -> list[dict[str, Any]]:
        if self._queue_url is None:
            try:
                self._queue_url = self._client.get_queue_url(QueueName=self._settings.sqs_queue)["QueueUrl"]
            except ClientError as exc:
                if _code(exc) in _QUEUE_MISSING:
                    raise _QueueMissing from None
                raise
            self._reachable()  # at once, not after the first long poll
        try:
            response = self._client.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=MAX_MESSAGES,
                WaitTimeSeconds=self._settings.sqs_wait_seconds,
            )
        except ClientError as exc:
            if _code(exc) in _QUEUE_MISSING:
                self._queue_url = None  # deleted under us: look it up again until it is back
                raise _QueueMissing from None
            raise
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def _handle_all(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if threads.shutting_down.is_set():
                # Not deleted, so SQS hands it out again after the visibility timeout: nothing is lost.
                return
            health.count("sqs_control.received")
            if self._handle(message) == "retry":
                continue
            try:
                self._client.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])
            except (BotoCoreError, ClientError) as exc:
                # It comes back after the visibility timeout and is applied again; every action is
                # idempotent except panic, and the panic button's latch absorbs a repeat.
                health.count("sqs_control.delete_errors")
                log.warning("SQS control: could not delete message %s: %s", _id(message), _describe(exc))

    def _handle(self, message: dict[str, Any]) -> Outcome:
        body = message.get("Body")
        body = body if isinstance(body, str) else ""
        try:
            request = decode(body)
            reply = self._apply(request)
        except InvalidMessage as exc:
            return self._invalid(message, str(exc), body)
        except SQLAlchemyError:
            health.count("sqs_control.unanswered")
            log.warning("SQS control: database unavailable for message %s; left for redelivery", _id(message))
            return "retry"
        except Exception:
            if threads.shutting_down.is_set():
                return "retry"
            # A bug must not stop the listener; the message comes back (or goes to the queue's DLQ).
            health.count("sqs_control.errors")
            log.exception("SQS control: message %s failed; left for redelivery", _id(message))
            return "retry"
        if reply.ok:
            health.count("sqs_control.handled")
            log.info("SQS control: %s", _done_text(request, reply))
            return "done"
        if reply.status == 503:
            health.count("sqs_control.unanswered")
            log.warning("SQS control: %s not applied (%s); left for redelivery", request.action, reply.error)
            return "retry"
        if 400 <= reply.status < 500:
            return self._invalid(message, reply.error or "refused", body)
        health.count("sqs_control.failed")
        log.error("SQS control: %s failed: %s; message %s deleted", request.action, reply.error, _id(message))
        return "failed"

    def _invalid(self, message: dict[str, Any], why: str, body: str) -> Outcome:
        health.count("sqs_control.invalid")
        log.warning("SQS control: invalid message %s deleted: %s; body %s", _id(message), why, excerpt(body))
        return "invalid"

    def _apply(self, request: ControlRequest) -> Reply:
        """Hand the request to the EventProcessor, as the dashboard and the bot do."""
        if request.action == ACTIVATE:
            return self._activate(request)
        if request.action == "panic":
            args: dict[str, Any] = {"device_key": registry.PANIC_BUTTON}
            if request.reason:
                args["event_detail"] = request.reason
            return commands.request("fire_input", args, actor=ACTOR)
        if request.action == "outputs":
            return commands.request("set_outputs_enabled", {"enabled": request.enabled}, actor=ACTOR)
        assert request.device is not None
        with self._sessions() as session:
            target = find_device(session, request.device, request.kind)
        action = "update_input" if target.kind == "input" else "update_output"
        fields = {"device_enabled": request.action == "enable"}
        return commands.request(action, {"id": target.id, "fields": fields}, actor=ACTOR)

    def _activate(self, request: ControlRequest) -> Reply:
        """Each active device fires its input through the rules, as a device's own event would.

        An unknown device_key is skipped with a warning, as the original did; a message naming only
        unknown inputs is invalid. The first other failure is the answer (left for redelivery).
        """
        results: list[dict[str, Any]] = []
        unknown: list[str] = []
        for key, detail in request.devices:
            args: dict[str, Any] = {"device_key": key}
            if detail:
                args["event_detail"] = detail
            if request.timestamp is not None:
                args["event_ts"] = request.timestamp
            reply = commands.request("fire_input", args, actor=ACTOR)
            if reply.status == 404:
                unknown.append(key)
                continue
            if not reply.ok:
                return reply
            result = reply.result if isinstance(reply.result, dict) else {}
            results.append({"device_key": key, **result})
        names = ", ".join(repr(k) for k in unknown)[:200]
        if unknown:
            log.warning("SQS control: no input is called %s; skipped", names)
        if not results:
            return Reply(ok=False, error=f"no input is called {names}", status=404)
        return Reply(ok=True, result={"activated": results})


def _done_text(request: ControlRequest, reply: Reply) -> str:
    if request.action == ACTIVATE:
        result = reply.result if isinstance(reply.result, dict) else {}
        parts = [
            f"{r['device_key']!r} {'fired' if r.get('fired') else 'not fired (' + str(r.get('reason')) + ')'}"
            for r in result.get("activated") or []
        ]
        return "input event " + "; ".join(parts)
    if request.action == "outputs":
        return f"outputs {'enabled' if request.enabled else 'disabled'}"
    if request.action in ("enable", "disable"):
        return f"{request.action}d {request.device!r}"
    result = reply.result if isinstance(reply.result, dict) else {}
    if not result.get("fired"):
        return f"panic did not fire: {result.get('detail') or result.get('reason') or 'blocked'}"
    fired = [str(o.get("output_key")) for o in result.get("outputs") or [] if o.get("fired")]
    return f"panic fired: {', '.join(fired) or 'no linked output triggered'}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return f"{_code(exc) or type(exc).__name__}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _id(message: dict[str, Any]) -> str:
    return str(message.get("MessageId", "?"))[:64]
