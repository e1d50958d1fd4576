"""EventProcessor: applies the rules to each input event, triggers outputs, and records every decision.

A motion sensor fires: the HeartbeatFilter forwards the message (`_on_envelope`); each active
device is checked for staleness and run through the input rules (`_on_activation`); if it fires,
its linked outputs run (app/engine/output_triggers.py) and every outcome becomes an AuditRecord.
Nothing here waits on the database: it decides from the configuration in memory
(app/engine/config_snapshot.py, which knows a device registered a moment ago from the envelope)
and hands meter readings (app/engine/meter_handling.py) and rule state (app/engine/processor_state.py,
the digest: app/engine/quiet_digest.py) to the AuditWriter. The ConfigApplier stores configuration
changes; this thread reloads after each one and answers the caller. Rule state is handed over at
most every FLUSH_SECONDS and at shutdown (a crash can lose that much latch/window state); a
deferred alert at once, being the alert itself.

Just over ~400 lines as one cohesive thing: the thread's dispatch of every message kind it receives,
and the activation path, which is kept in one place so a decision reads top to bottom.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import protocols
from app.core import delivery, health, zones
from app.core.channels import (
    AUDIT,
    AUDIT_HWM,
    CONFIG,
    CONTROL_PUBLISHER,
    METER_WRITER,
    NOTIFIER,
    PROCESSOR,
    Applied,
    AuditRecord,
    Command,
    DecisionRecord,
    Envelope,
    EventLogRow,
    MeterPoint,
    MeterReading,
    Notification,
    Registered,
    Reply,
    StateWrite,
)
from app.core.settings import Settings
from app.engine import commands, rules
from app.engine.clocks import ClockOffsets
from app.engine.clocks import offsets as clock_offsets
from app.engine.config_snapshot import LiveConfig, Move, Snapshot
from app.engine.meter_handling import MeterHandling
from app.engine.output_triggers import Activation, Outlets, OutputTriggers
from app.engine.processor_state import ProcessorState
from app.engine.quiet_digest import QuietDigest
from app.store import registry, roles, rule_state
from pylib import inproc, ratelog, threads, wire

log = logging.getLogger(__name__)
# Any here: a device's decoded payload (wire data, checked where read) and the decision and
# event_log rows that travel to the AuditWriter as msgpack maps.

RELOAD_SECONDS = 30.0
# Devices the AuditWriter stored are read back at most this often, however many arrive.
REFRESH_SECONDS = 0.25
MAX_PENDING = 10_000  # stored keys waiting for a refresh; past this a full reload is cheaper
RECENT_MAX = 100
MAX_DETAIL = 255
FLUSH_SECONDS = 5.0  # rule state reaches the database at most this long after it changed
# With a standby pair the other hub loads this state at a take-over: the fresher, the fewer repeats.
FLUSH_SECONDS_HA = 1.0
DIGEST_CHECK_SECONDS = 1.0


class EventProcessor(threads.AppThread):
    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
        clocks: ClockOffsets | None = None,
    ) -> None:
        super().__init__("EventProcessor")
        self._settings = settings
        self._sessions = session_factory
        self._clock = clock
        self._clocks = clock_offsets if clocks is None else clocks
        self._defaults = rules.Defaults(
            activation_interval=settings.default_activation_interval,
            multi_trigger_rate=settings.default_multi_trigger_rate,
            trigger_window=settings.default_trigger_window,
            message_validity=settings.max_message_validity,
        )
        quiet_default = rules.QuietHours(settings.quiet_hours_not_before, settings.quiet_hours_not_after)
        self._live = LiveConfig(quiet_default)
        # keys the AuditWriter stored since the last refresh (bounded by the registration caps)
        self._pending: set[str] = set()
        self._next_refresh = 0.0
        self._bad_log = ratelog.RateLimitedLog(log)
        self._tz = zones.zone(settings.user_tz)
        self._state = ProcessorState(QuietDigest(self._tz))
        self._out = Outlets()
        self._outputs = OutputTriggers(settings, self._state, self._out)
        self._meters = MeterHandling(self._state.meter_zones, self._state.mark, self._store, self._chart)
        self._next_flush = 0.0
        self._next_digest_check = 0.0
        self._flush_seconds = FLUSH_SECONDS_HA if settings.ha_enabled else FLUSH_SECONDS
        # False on a standby hub: it decides nothing, changes nothing and writes no rule state
        self._acting = True
        # Bound here, before any thread starts, so nothing sent early is lost.
        self._pull = inproc.bind_pull(PROCESSOR, inproc.BATCH_HWM)

    @property
    def _snap(self) -> Snapshot:
        return self._live.snap

    # ---- loop -------------------------------------------------------------------------------

    def work(self) -> None:
        # Outboxes: the triggers and records of what one recv_frames() drained go on in one frame each.
        self._out.control = inproc.connect_outbox(CONTROL_PUBLISHER)
        self._out.audit = inproc.connect_outbox(AUDIT, hwm=AUDIT_HWM)
        self._out.config = inproc.connect_push(CONFIG)
        # Nobody reads METER_WRITER unless InfluxDB is configured; a PUSH without a peer would fill up.
        if self._settings.influxdb_enabled:
            self._out.meter_writer = inproc.connect_push(METER_WRITER)
        if self._settings.telegram_enabled:
            self._out.notifier = inproc.connect_push(NOTIFIER)
        self._reload()
        self._acting = roles.acting()
        if self._acting:
            self._load_state()
        health.set_state("event_processor", "running")
        next_reload = time.monotonic() + RELOAD_SECONDS
        try:
            while not threads.shutting_down.is_set():
                frames = inproc.recv_frames(self._pull, timeout_ms=200)
                if not frames and self._acting != roles.acting():
                    self._role_changed()
                for frame in frames:
                    try:
                        msg = inproc.decode(frame)
                    except inproc.MessageError as exc:
                        log.warning("dropping undecodable frame: %s", exc)
                        continue
                    if self._acting != roles.acting():
                        self._role_changed()
                    try:
                        self._dispatch(msg)
                    except Exception:
                        # One bad message must never stop the hub; it is logged, counted and skipped.
                        health.count("processor.errors")
                        log.exception("failed to process %s", type(msg).__name__)
                self._hand_on()
                if time.monotonic() >= next_reload:
                    self._reload()
                    next_reload = time.monotonic() + RELOAD_SECONDS
                if self._acting:
                    self._housekeeping()
                    self._hand_on()
        finally:
            # everything, not just what changed since the last flush: a queued StateWrite may
            # still be on its way, and this snapshot (newest version) must win over it.
            # Not on a standby or a fenced hub: the state belongs to the active hub.
            if self._acting and roles.acting():
                self._state.mark_all()
                self._flush()
            self._hand_on()
            if self._out.audit is not None:
                self._out.audit.sock.setsockopt(zmq.LINGER, 1000)  # the last flush must reach the AuditWriter
            for sock in (self._pull, *vars(self._out).values()):
                if sock is not None:
                    sock.close()

    def _hand_on(self) -> None:
        """Send what the messages just handled produced: the triggers first, then their records."""
        for box in (self._out.control, self._out.audit):
            if box is not None:
                box.flush()

    def _dispatch(self, msg: object) -> None:
        if isinstance(msg, Applied):
            self._on_applied(msg)  # applied already: answered on a standby too
        elif isinstance(msg, Registered):
            self._pending.update(msg.keys)  # read back soon (real ids, a person's labels)
            if len(self._pending) > MAX_PENDING:
                self._reload()
        elif not self._acting:
            if msg is not None:
                self._refuse(msg)
        elif isinstance(msg, Envelope):
            self._on_envelope(msg)
            if msg.source == "rabbitmq" and self._settings.ha_enabled:
                delivery.processed(msg.received_at)
        elif isinstance(msg, Command):
            self._on_command(msg)

    def _role_changed(self) -> None:
        """Standby -> active: start from the database's configuration and rule state, as after a restart."""
        self._acting = roles.acting()
        if not self._acting:
            self._state.dirty.clear()  # fenced: the new active hub owns the rule state now
            log.warning("event processor stopped acting: this hub no longer holds the lease")
            return
        self._state.clear()
        self._live.forget_provisional()
        self._reload()
        self._load_state()
        log.info("event processor acting: configuration and rule state loaded from the database")

    def _refuse(self, msg: object) -> None:
        """On a standby: device messages are not ours to decide, changes go to the active hub."""
        if isinstance(msg, Command):
            commands.answer(msg, Reply(ok=False, error=roles.standby_message(), status=503))
        health.count("processor.standby_refused")

    def _reload(self) -> None:
        try:
            with self._sessions() as session:
                self._pending.clear()
                self._moved(self._live.reload(session))
        except SQLAlchemyError:
            health.count("processor.db_errors")
            log.exception("could not load the configuration; keeping the previous one")

    def _refresh(self) -> None:
        """Read back the devices the AuditWriter stored since the last refresh."""
        keys, self._pending = self._pending, set()
        try:
            with self._sessions() as session:
                self._moved(self._live.refresh(session, keys))
        except SQLAlchemyError:
            health.count("processor.db_errors")
            self._pending |= keys
            log.exception("could not refresh the configuration of %d device(s)", len(keys))
            return
        health.count("processor.refreshes")

    def _moved(self, moves: list[Move]) -> None:
        for kinds, old, new in moves:
            self._state.move(kinds, old, new)

    # ---- configuration changes --------------------------------------------------------------

    def _on_command(self, cmd: Command) -> None:
        if cmd.action == "fire_input":
            commands.answer(cmd, self._fire_input(cmd))
        else:
            # Stored by the ConfigApplier, which may wait on the database while events go on here;
            # it comes back as Applied, and the caller hears "saved" only after the reload.
            inproc.send(inproc.made(self._out.config), cmd)

    def _on_applied(self, msg: Applied) -> None:
        if msg.reload:
            self._reload()
        commands.answer(Command(action="", args={}, reply_to=msg.reply_to), Reply(**msg.reply))

    def _fire_input(self, cmd: Command) -> Reply:
        """Fire an input from the hub itself (panic button, /report): no heartbeat filter, no timestamp."""
        key = cmd.args.get("device_key")
        if not isinstance(key, str) or key not in self._snap.inputs_by_key:
            return Reply(ok=False, error=f"no input {key!r}", field="device_key", status=404)
        device = {"device_key": key, "device_label": self._snap.inputs_by_key[key].label}
        detail = cmd.args.get("event_detail")
        if isinstance(detail, str) and detail:
            device["event_detail"] = detail
        # The sender's time, when given (an SQS message in the original's shape): the stale rule applies.
        sent = cmd.args.get("event_ts")
        event_ts = float(sent) if isinstance(sent, int | float) and not isinstance(sent, bool) else None
        result = self._on_activation(self._settings.device_name, device, event_ts, actor=cmd.actor)
        return Reply(ok=True, result=result)

    # ---- events -----------------------------------------------------------------------------

    def _on_envelope(self, env: Envelope) -> None:
        if env.adverts or env.generations:
            self._live.learn(env.adverts, env.generations)
        data = env.payload.get("data") or {}
        # The codec of the sender's generation reads the activations; the HeartbeatFilter already
        # logged and counted whatever in the body could not be read, and named the keys it refused.
        active = protocols.read(env.routing_key, env.origin, data).active
        if env.refused_keys:
            refused = set(env.refused_keys)
            active = [d for d in active if str(d.get("device_key", "")).strip() not in refused]
        if not active:
            return
        event_time = wire.parse_timestamp(env.payload.get("timestamp"))
        event_ts = event_time.timestamp() if event_time else None
        for device in active:
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
            self._bad_log.warning("bad active device from %s: %s", origin, exc)
            return {"fired": False, "reason": "malformed"}
        raw_detail = device.get("event_detail")
        detail = None if raw_detail is None else str(raw_detail)[:MAX_DETAIL]
        snap = self._snap
        rule = snap.inputs_by_key.get(key)
        if rule is None:
            # The HeartbeatFilter registers every device before forwarding (or refuses it past a
            # cap and strips it), and the envelope tells this thread; never a reason to reload.
            health.count("processor.unregistered")
            self._bad_log.warning("input %r from %s is not registered; ignoring", key, origin)
            return {"fired": False, "reason": "unregistered"}
        # The sender's clock may be off (a Pi without a real-time clock before NTP syncs): its
        # offset, learned from its heartbeats, corrects the timestamp (app.engine.clocks).
        offset = None if event_ts is None else self._clocks.offset(key)
        verdict = rules.check_stale(event_ts, now, self._defaults, offset)
        if event_ts is not None and offset is not None:
            event_ts += offset  # the event_log row keeps the time on the hub's clock
        if verdict.fire and registry.is_meter(rule.device_type) and "sample_values" in device:
            entered = self._meters.reading(rule, device, now, snap.meters)
            if entered is None:
                # A routine reading: stored and charted, not an event for the audit trail.
                return {"fired": False, "reason": "meter_reading"}
            detail = entered
        decision: DecisionRecord = {
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
        if verdict.fire:
            state = self._state.inputs.setdefault(rule.id, rules.InputState())
            rules.record_trigger(state, now)
            self._state.mark("input", rule.id)
            linked = {
                i: (snap.inputs_by_id[i].label, self._state.inputs.get(i))
                for i in rule.linked_input_ids
                if i in snap.inputs_by_id
            }
            verdict = rules.evaluate_input(rule, state, detail, now, self._defaults, linked)
        if not verdict.fire:
            health.count(f"processor.blocked.{verdict.reason}")
            decision.update({"fired": False, "reason": verdict.reason, "detail": verdict.detail})
            self._send_audit(decision, [])
            return {"fired": False, "reason": verdict.reason, "detail": verdict.detail}

        rules.record_fired(state, detail, now)
        # DEBUG, not INFO: at the default level a line per activation cost about 0.12 ms of CPU, 29 %
        # of the hub's cost per activation (docs/performance.md). Each decision is in the audit
        # (Events page, API); SIGHUP switches the log to DEBUG to see them there too.
        log.debug("input %r fired (%s)", rule.device_key, detail or "no detail")
        decision["fired"] = True
        event_log: list[EventLogRow] = []
        quiet = rules.quiet_until(now, snap.quiet, self._tz) if rule.info_notify else None
        message = f"{rule.label} {detail}" if detail else rule.label
        act = Activation(rule, now, message, device, detail, quiet)
        for output_id in snap.output_links.get(rule.id, ()):
            output = snap.outputs_by_id[output_id]
            result = self._outputs.trigger(act, output, snap.quiet, snap.outputs_enabled)
            decision["outputs"].append(result)
            if result["fired"]:
                when = event_ts if event_ts is not None else now
                event_log.append(
                    EventLogRow(input_device=rule.label, output_device=output.label, timestamp=when)
                )
        recent = self._state.recent
        recent.pop(rule.device_key, None)
        recent[rule.device_key] = (rule.label, now)
        while len(recent) > RECENT_MAX:
            recent.popitem(last=False)
        self._state.mark("recent")
        if not decision["outputs"]:
            decision["detail"] = "no linked outputs"
        self._send_audit(decision, event_log)
        if ("digest", 0) in self._state.dirty:
            self._flush()  # a deferred alert is handed over at once: it is the alert itself
        return {"fired": True, "outputs": decision["outputs"]}

    def _send_audit(self, decision: DecisionRecord, event_log: list[EventLogRow]) -> None:
        inproc.send(inproc.made(self._out.audit), AuditRecord(decision=decision, event_log=event_log))

    def _store(self, reading: MeterReading) -> None:
        inproc.send(inproc.made(self._out.audit), reading)

    def _chart(self, point: MeterPoint) -> None:
        if self._out.meter_writer is not None:
            inproc.send(self._out.meter_writer, point)

    # ---- housekeeping: read-backs, the digest, rule state ------------------------------------

    def _housekeeping(self) -> None:
        mono = time.monotonic()
        if self._pending and mono >= self._next_refresh:
            self._next_refresh = mono + REFRESH_SECONDS
            self._refresh()
        if mono >= self._next_digest_check:
            self._next_digest_check = mono + DIGEST_CHECK_SECONDS
            self._check_digest(self._clock())
        if self._state.dirty and mono >= self._next_flush and self._acting:
            self._flush()

    def _check_digest(self, now: float) -> None:
        """Send the pending digest as one message once quiet hours are over."""
        if self._out.notifier is None:
            return
        text = self._state.digest.take_if_due(now, self._snap.quiet)
        if text is not None:
            inproc.send(inproc.made(self._out.notifier), Notification(timestamp=now, text=text))
            health.count("processor.digests")
            self._state.mark("digest")
            self._flush()

    def _flush(self) -> None:
        """Hand the changed rule state to the AuditWriter, which stores it beside the event path."""
        self._next_flush = time.monotonic() + self._flush_seconds
        values = self._state.take_changes()
        if values:
            inproc.send(inproc.made(self._out.audit), StateWrite(values=values, version=time.time()))

    def _load_state(self) -> None:
        """Resume the rule state the previous run left (a bad entry is skipped, never fatal)."""
        try:
            with self._sessions() as session:
                stored = rule_state.load(session, rule_state.PROCESSOR_PREFIX)
        except SQLAlchemyError:
            health.count("processor.state_errors")
            log.exception("could not load rule state; starting with none")
            return
        self._state.restore(stored)
