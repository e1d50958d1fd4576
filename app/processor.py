"""EventProcessor: applies the rules to each input event, triggers outputs, and records every decision.

What happens when a motion sensor fires, top to bottom: the HeartbeatFilter forwards the message
(`_on_envelope`); each active device is checked for staleness, counted, and run through the input
rules (`_on_activation`); if it fires, each linked output goes through the output rules and, when
it fires, a ControlMessage goes to the ControlPublisher. Every outcome becomes an AuditRecord for
the AuditWriter. This thread is also the only one that changes configuration (`_on_command`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import commands, config_changes, health, registry, rules
from app.channels import (
    AUDIT,
    CONTROL_PUBLISHER,
    PROCESSOR,
    AuditRecord,
    Command,
    ControlMessage,
    Envelope,
    Reply,
)
from app.models import InputConfig, InputLink, OutputConfig, OutputLink
from app.settings import Settings
from pylib import inproc, threads, wire

log = logging.getLogger(__name__)

RELOAD_SECONDS = 30.0
MAX_DETAIL = 255


@dataclass
class Snapshot:
    """The configuration the rules read, loaded in one go so no event waits on the database."""

    inputs_by_key: dict[str, rules.InputRule] = field(default_factory=dict)
    inputs_by_id: dict[int, rules.InputRule] = field(default_factory=dict)
    outputs_by_id: dict[int, rules.OutputRule] = field(default_factory=dict)
    output_links: dict[int, list[int]] = field(default_factory=dict)
    outputs_enabled: bool = True


def load_snapshot(session: Session) -> Snapshot:
    snap = Snapshot(outputs_enabled=config_changes.outputs_enabled(session))
    input_links: dict[int, list[int]] = {}
    for input_id, linked_id in session.execute(select(InputLink.input_device_id, InputLink.linked_device_id)):
        if linked_id != input_id:
            input_links.setdefault(input_id, []).append(linked_id)
    for row in session.scalars(select(InputConfig)):
        rule = rules.InputRule(
            id=row.id,
            device_key=row.device_key,
            label=row.device_label or row.device_key,
            enabled=bool(row.device_enabled),
            activation_interval=row.activation_interval,
            multi_trigger=bool(row.multi_trigger),
            multi_trigger_rate=row.multi_trigger_rate,
            multi_trigger_interval=row.multi_trigger_interval,
            linked_input_ids=tuple(sorted(input_links.get(row.id, ()))),
            info_notify=bool(row.info_notify),
        )
        snap.inputs_by_key[rule.device_key] = rule
        snap.inputs_by_id[rule.id] = rule
    for row in session.scalars(select(OutputConfig)):
        snap.outputs_by_id[row.id] = rules.OutputRule(
            id=row.id,
            device_key=row.device_key,
            label=row.device_label or row.device_key,
            device_type=row.device_type,
            # NULL (a row from the original schema) means enabled: the original had no such switch.
            enabled=row.device_enabled is not False,
            device_params=row.device_params,
            trigger_topic=row.trigger_topic,
            trigger_interval=row.trigger_interval,
        )
    for input_id, output_id in session.execute(
        select(OutputLink.input_device_id, OutputLink.output_device_id)
    ):
        if output_id in snap.outputs_by_id:
            snap.output_links.setdefault(input_id, []).append(output_id)
    for ids in snap.output_links.values():
        ids.sort(key=lambda i: snap.outputs_by_id[i].device_key)
    return snap


class EventProcessor(threads.AppThread):
    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("EventProcessor")
        self._settings = settings
        self._sessions = session_factory
        self._clock = clock
        self._defaults = rules.Defaults(
            activation_interval=settings.default_activation_interval,
            multi_trigger_rate=settings.default_multi_trigger_rate,
            trigger_window=settings.default_trigger_window,
            message_validity=settings.max_message_validity,
        )
        self._snap = Snapshot()
        self._input_state: dict[int, rules.InputState] = {}
        self._output_state: dict[int, rules.OutputState] = {}
        # Bound here, before any thread starts, so nothing sent early is lost.
        self._pull = inproc.bind_pull(PROCESSOR)
        self._control: Any = None
        self._audit: Any = None

    # ---- loop -------------------------------------------------------------------------------

    def work(self) -> None:
        self._control = inproc.connect_push(CONTROL_PUBLISHER)
        self._audit = inproc.connect_push(AUDIT)
        self._reload()
        health.set_state("event_processor", "running")
        next_reload = time.monotonic() + RELOAD_SECONDS
        try:
            while not threads.shutting_down.is_set():
                try:
                    msg = inproc.recv(self._pull, timeout_ms=200)
                except inproc.MessageError as exc:
                    log.warning("dropping undecodable frame: %s", exc)
                    continue
                try:
                    if isinstance(msg, Envelope):
                        self._on_envelope(msg)
                    elif isinstance(msg, Command):
                        self._on_command(msg)
                except Exception:
                    # One bad message must never stop the hub; it is logged, counted and skipped.
                    health.count("processor.errors")
                    log.exception("failed to process %s", type(msg).__name__)
                if time.monotonic() >= next_reload:
                    self._reload()
                    next_reload = time.monotonic() + RELOAD_SECONDS
        finally:
            for sock in (self._pull, self._control, self._audit):
                sock.close()

    def _reload(self) -> None:
        try:
            with self._sessions() as session:
                self._snap = load_snapshot(session)
        except SQLAlchemyError:
            health.count("processor.db_errors")
            log.exception("could not load the configuration; keeping the previous one")

    # ---- configuration changes --------------------------------------------------------------

    def _on_command(self, cmd: Command) -> None:
        if cmd.action == "fire_input":
            reply = self._fire_input(cmd)
        else:
            with self._sessions() as session:
                reply = config_changes.apply(session, cmd)
            if reply.ok:
                self._reload()
        commands.answer(cmd, reply)

    def _fire_input(self, cmd: Command) -> Reply:
        """Fire an input from the hub itself (panic button, /report): no heartbeat filter, no timestamp."""
        key = cmd.args.get("device_key")
        if not isinstance(key, str) or key not in self._snap.inputs_by_key:
            return Reply(ok=False, error=f"no input {key!r}", field="device_key", status=404)
        device = {"device_key": key, "device_label": self._snap.inputs_by_key[key].label}
        detail = cmd.args.get("event_detail")
        if isinstance(detail, str) and detail:
            device["event_detail"] = detail
        result = self._on_activation(self._settings.device_name, device, None, actor=cmd.actor)
        return Reply(ok=True, result=result)

    # ---- events -----------------------------------------------------------------------------

    def _on_envelope(self, env: Envelope) -> None:
        if env.changed_keys:
            self._reload()
        data = env.payload.get("data") or {}
        active = data.get("active_devices")
        if active is None:
            return
        if not isinstance(active, list):
            health.count("processor.malformed")
            log.warning("active_devices from %s is a %s, not a list", env.origin, type(active).__name__)
            return
        event_time = wire.parse_timestamp(env.payload.get("timestamp"))
        event_ts = event_time.timestamp() if event_time else None
        for device in active:
            if not isinstance(device, dict):
                health.count("processor.malformed")
                log.warning("active device from %s is a %s, not a map", env.origin, type(device).__name__)
                continue
            self._on_activation(env.origin, device, event_ts)

    def _on_activation(
        self, origin: str, device: dict[str, Any], event_ts: float | None, actor: str | None = None
    ) -> dict[str, Any]:
        now = self._clock()
        health.count("processor.activations")
        try:
            key = registry.advert("input", device).device_key
        except registry.BadDevice as exc:
            health.count("processor.malformed")
            log.warning("bad active device from %s: %s", origin, exc)
            return {"fired": False, "reason": "malformed"}
        raw_detail = device.get("event_detail")
        detail = None if raw_detail is None else str(raw_detail)[:MAX_DETAIL]
        rule = self._snap.inputs_by_key.get(key)
        if rule is None:
            self._reload()
            rule = self._snap.inputs_by_key.get(key)
        if rule is None:
            # The HeartbeatFilter registers every device before forwarding; this is a database fault.
            health.count("processor.unregistered")
            log.warning("input %r from %s is not registered; ignoring", key, origin)
            return {"fired": False, "reason": "unregistered"}
        decision = self._record(now, rule, origin, detail, actor)

        verdict = rules.check_stale(event_ts, now, self._defaults)
        if verdict.fire:
            state = self._input_state.setdefault(rule.id, rules.InputState())
            rules.record_trigger(state, now)
            linked = {
                i: (self._snap.inputs_by_id[i].label, self._input_state.get(i))
                for i in rule.linked_input_ids
                if i in self._snap.inputs_by_id
            }
            verdict = rules.evaluate_input(rule, state, detail, now, self._defaults, linked)
        if not verdict.fire:
            health.count(f"processor.blocked.{verdict.reason}")
            decision.update(fired=False, reason=verdict.reason, detail=verdict.detail)
            self._send_audit(decision, [])
            return {"fired": False, "reason": verdict.reason, "detail": verdict.detail}

        rules.record_fired(state, detail, now)
        log.info("input %r fired (%s)", rule.device_key, detail or "no detail")
        decision["fired"] = True
        event_log = []
        message = f"{rule.label} {detail}" if detail else rule.label
        for output_id in self._snap.output_links.get(rule.id, ()):
            output = self._snap.outputs_by_id[output_id]
            result = self._trigger(rule, output, now, message)
            decision["outputs"].append(result)
            if result["fired"]:
                event_log.append(
                    {
                        "input_device": rule.label,
                        "output_device": output.label,
                        "timestamp": event_ts if event_ts is not None else now,
                    }
                )
        if not decision["outputs"]:
            decision["detail"] = "no linked outputs"
        self._send_audit(decision, event_log)
        return {"fired": True, "outputs": decision["outputs"]}

    def _trigger(
        self, rule: rules.InputRule, output: rules.OutputRule, now: float, message: str
    ) -> dict[str, Any]:
        state = self._output_state.setdefault(output.id, rules.OutputState())
        verdict = rules.evaluate_output(output, state, now, self._snap.outputs_enabled)
        result: dict[str, Any] = {
            "output_device_id": output.id,
            "output_key": output.device_key,
            "output_label": output.label,
        }
        if verdict.fire:
            handler = self._settings.handler_for(output.device_type)
            key = rules.routing_key(handler, output)
            data = rules.control_data(handler, output, rule, message)
            if key is None or data is None:
                verdict = rules.Decision(
                    False, rules.NO_ROUTE, f"no handler for device type {output.device_type!r}"
                )
            else:
                inproc.send(
                    self._control,
                    ControlMessage(
                        routing_key=key,
                        body=wire.make_payload(data),
                        expires_at=now + self._settings.control_message_ttl,
                        output_key=output.device_key,
                    ),
                )
                state.last_fired = now
                health.count("processor.triggers")
                result.update(fired=True, reason=None, detail=key)
                return result
        health.count(f"processor.blocked.{verdict.reason}")
        result.update(fired=False, reason=verdict.reason, detail=verdict.detail)
        return result

    def _record(
        self, now: float, rule: rules.InputRule, origin: str, detail: str | None, actor: str | None
    ) -> dict[str, Any]:
        return {
            "timestamp": now,
            "input_device_id": rule.id,
            "input_key": rule.device_key,
            "input_label": rule.label,
            "origin": origin if actor is None else f"{origin} ({actor})",
            "event_detail": detail,
            "fired": False,
            "reason": None,
            "detail": None,
            "outputs": [],
        }

    def _send_audit(self, decision: dict[str, Any], event_log: list[dict[str, Any]]) -> None:
        inproc.send(self._audit, AuditRecord(decision=decision, event_log=event_log))
