"""SqsControl: control messages (enable or disable a device, panic, the outputs switch) from an SQS queue.

What a message may say, and how it is decoded and checked, is in sqs_messages; this is the thread.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.core import aws, health
from app.core.channels import Reply
from app.core.settings import Settings
from app.engine import commands
from app.sources.sqs_messages import ACTIONS as ACTIONS
from app.sources.sqs_messages import ACTIVATE as ACTIVATE
from app.sources.sqs_messages import DEVICE_MAX as DEVICE_MAX
from app.sources.sqs_messages import REASON_MAX as REASON_MAX
from app.sources.sqs_messages import SCHEMA_VERSION as SCHEMA_VERSION
from app.sources.sqs_messages import ControlRequest as ControlRequest
from app.sources.sqs_messages import InvalidMessage as InvalidMessage
from app.sources.sqs_messages import decode as decode
from app.sources.sqs_messages import excerpt as excerpt
from app.sources.sqs_messages import find_device
from app.sources.sqs_messages import validate as validate
from app.store import registry
from pylib import threads

log = logging.getLogger(__name__)
# Any here is the wire boundary: SQS messages and their JSON bodies, checked by validate().

COMPONENT = "sqs_control"
ACTOR = "sqs"
MAX_MESSAGES = 10  # SQS's own limit per receive
RETRY_INITIAL = 1.0
RETRY_MAX = 60.0
_QUEUE_MISSING = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
Outcome = Literal["done", "invalid", "failed", "retry"]


class _QueueMissing(Exception):
    """SQS_QUEUE names no queue (yet)."""


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
