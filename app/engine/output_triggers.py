"""An input that fired, through its linked outputs: each output's rules, then its control message or alert.

The output rules (disabled, interval, the global switch) decide; a switch, camera or speaker gets
the control message its device's generation parses (app/protocols), the built-in SMS output a
Telegram alert listing the other inputs that fired lately. Quiet hours defer an informational
input's alert to the digest and, when configured for all outputs, hold the others back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app import protocols
from app.core import health
from app.core.channels import ControlMessage, Notification, OutputOutcome
from app.core.settings import Settings
from app.engine import rules
from app.engine.processor_state import ProcessorState
from app.engine.quiet_digest import QuietDigest
from app.store import registry
from pylib import inproc

log = logging.getLogger(__name__)
# Any here: a device's decoded payload (wire data) and the decision rows sent to the AuditWriter.

RECENT_SECONDS = 300  # how far back an alert lists the other inputs that fired
TRIGGERS_BY_TYPE = "processor.triggers_by_type."


@dataclass
class Outlets:
    """The processor's PUSH sockets: work() makes them in its thread; None before that (and when
    that consumer is not configured)."""

    control: inproc.Outbox | None = None
    audit: inproc.Outbox | None = None
    config: inproc.Socket | None = None
    meter_writer: inproc.Socket | None = None
    notifier: inproc.Socket | None = None


@dataclass(frozen=True)
class Activation:
    """One input that fired, as its outputs need it."""

    rule: rules.InputRule
    now: float
    message: str
    device: dict[str, Any]
    detail: str | None
    quiet: float | None  # when quiet hours end, if they hold back this input now


class OutputTriggers:
    def __init__(self, settings: Settings, state: ProcessorState, outlets: Outlets) -> None:
        self._settings = settings
        self._state = state
        self._out = outlets

    @property
    def _digest(self) -> QuietDigest:
        return self._state.digest

    def trigger(
        self, act: Activation, output: rules.OutputRule, quiet_hours: rules.QuietHours, enabled: bool
    ) -> OutputOutcome:
        """Run one linked output; returns its part of the decision record."""
        state = self._state.outputs.setdefault(output.id, rules.OutputState())
        verdict = rules.evaluate_output(output, state, act.now, enabled)
        result: OutputOutcome = {
            "output_device_id": output.id,
            "output_key": output.device_key,
            "output_label": output.label,
        }
        if verdict.fire and output.device_type.strip().lower() == registry.SMS_TYPE:
            if self._out.notifier is None:
                verdict = rules.Decision(False, rules.NO_ROUTE, "Telegram is off (TELEGRAM_BOT_TOKEN)")
            elif act.quiet is not None:
                self._digest.defer(act.rule, act.now, act.detail)
                self._state.mark("digest")
                health.count(f"processor.blocked.{rules.QUIET_HOURS}")
                when = self._digest.hhmm(act.quiet)
                result.update(
                    {"fired": False, "reason": rules.QUIET_HOURS, "detail": f"deferred to {when} digest"}
                )
                return result
            else:
                self._notify(act, output)
                state.last_fired = act.now
                self._state.mark("output", output.id)
                health.count("processor.notifications")
                result.update({"fired": True, "reason": None, "detail": "telegram"})
                return result
        if verdict.fire and act.quiet is not None and quiet_hours.all_outputs:
            # Switches and cameras only make sense now, so they are held back, not deferred.
            until = self._digest.hhmm(act.quiet)
            verdict = rules.Decision(False, rules.QUIET_HOURS, f"held back by quiet hours until {until}")
        if verdict.fire:
            handler = self._settings.handler_for(output.device_type)
            try:
                outbound = protocols.encode(
                    output.generation,
                    protocols.Trigger(
                        handler=handler,
                        output_key=output.device_key,
                        output_label=output.label,
                        device_params=output.device_params,
                        trigger_topic=output.trigger_topic,
                        input_key=act.rule.device_key,
                        input_label=act.rule.label,
                        input_type=act.rule.device_type,
                        duration=rules.pulse_duration(output, act.rule),
                        message=act.message,
                        now=act.now,
                    ),
                )
            except protocols.Refused as exc:
                # never send what would stop the device: say so in the record, the count and the log
                outbound = None
                verdict = rules.Decision(False, rules.REFUSED, str(exc))
                log.warning("trigger of %r refused: %s", output.device_key, exc)
            if outbound is None and verdict.fire:
                verdict = rules.Decision(
                    False, rules.NO_ROUTE, f"no handler for device type {output.device_type!r}"
                )
            if outbound is not None:
                inproc.send(
                    inproc.made(self._out.control),
                    ControlMessage(
                        routing_key=outbound.routing_key,
                        body=outbound.body,
                        expires_at=act.now + self._settings.control_message_ttl,
                        output_key=output.device_key,
                    ),
                )
                state.last_fired = act.now
                self._state.mark("output", output.id)
                health.count("processor.triggers")
                # by handler (ioboard, snapshot, tts, bluetooth) or "topic" for a trigger_topic output
                health.count(f"{TRIGGERS_BY_TYPE}{handler or 'topic'}")
                health.count(f"processor.triggers_by_generation.{outbound.generation}")
                result.update({"fired": True, "reason": None, "detail": outbound.routing_key})
                return result
        health.count(f"processor.blocked.{verdict.reason}")
        result.update({"fired": False, "reason": verdict.reason, "detail": verdict.detail})
        return result

    def _notify(self, act: Activation, output: rules.OutputRule) -> None:
        """Hand an alert to the Telegram notifier, with the other inputs that fired lately."""
        rule, now = act.rule, act.now
        history = [
            [label, round(now - when)]
            for key, (label, when) in reversed(self._state.recent.items())
            if key != rule.device_key and 0 <= now - when <= RECENT_SECONDS
        ]
        image = act.device.get("image")
        storage_url = act.device.get("storage_url")
        inproc.send(
            inproc.made(self._out.notifier),
            Notification(
                timestamp=now,
                input_key=rule.device_key,
                input_label=rule.label,
                input_type=rule.device_type,
                event_detail=act.detail,
                storage_url=storage_url if isinstance(storage_url, str) else None,
                history=history,
                image=image if isinstance(image, bytes) else None,
                sms_recipients=output.device_params,
            ),
        )
