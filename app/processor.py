"""EventProcessor: applies the rules to each input event, triggers outputs, and records every decision.

What happens when a motion sensor fires, top to bottom: the HeartbeatFilter forwards the message
(`_on_envelope`); each active device is checked for staleness, counted, and run through the input
rules (`_on_activation`); if it fires, each linked output goes through the output rules and, when
it fires, a ControlMessage goes to the ControlPublisher. Every outcome becomes an AuditRecord for
the AuditWriter. Nothing here waits on the database: it decides from the configuration in memory,
learns a device the HeartbeatFilter just registered from the envelope (with a provisional negative
id until the AuditWriter has stored the row and says Registered), and hands meter readings and rule
state to the AuditWriter. Configuration changes are applied by the ConfigApplier beside it; this
thread reloads after each one and answers the caller (`_on_command`, `_on_applied`).

Informational inputs (info_notify) inside quiet hours do not notify: the alert goes into a pending
digest, sent as one message when the window opens (`_check_digest`). Rule state (latches, trigger
histories, output intervals, meter zones, recent triggers, the digest) is kept in rule_state and
loaded at start. Changes only mark state dirty; `_flush` hands them to the AuditWriter at most every
FLUSH_SECONDS and at shutdown, so a crash (not a stop) can lose up to FLUSH_SECONDS of latch/window
changes. A deferred alert is handed over at once: losing it would lose the alert itself.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import zmq
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import (
    commands,
    config_changes,
    delivery,
    health,
    meters,
    protocols,
    registry,
    roles,
    rule_state,
    rules,
    zones,
)
from app.channels import (
    AUDIT,
    CONFIG,
    CONTROL_PUBLISHER,
    METER_WRITER,
    NOTIFIER,
    PROCESSOR,
    Applied,
    AuditRecord,
    Command,
    ControlMessage,
    Envelope,
    MeterPoint,
    MeterReading,
    Notification,
    Registered,
    Reply,
    StateWrite,
)
from app.clocks import ClockOffsets
from app.clocks import offsets as clock_offsets
from app.models import InputConfig, InputLink, MeterConfig, OutputConfig, OutputLink
from app.settings import Settings
from pylib import inproc, ratelog, threads, wire

log = logging.getLogger(__name__)

RELOAD_SECONDS = 30.0
# Registrations refresh the configuration for just the changed keys: before the next activation,
# else at most this often, however many arrive (a flood of new keys must not stall events).
REFRESH_SECONDS = 0.25
REFRESH_CHUNK = 500  # keys per query (SQLite allows 32766 parameters; PostgreSQL more)
MAX_PENDING = 10_000  # changed keys waiting for a refresh; past this a full reload is cheaper
RECENT_SECONDS = 300  # how far back an alert lists the other inputs that fired
RECENT_MAX = 100
TRIGGERS_BY_TYPE = "processor.triggers_by_type."
MAX_DETAIL = 255
FLUSH_SECONDS = 5.0  # rule state reaches the database at most this long after it changed
# With a standby pair the other hub loads this state at a take-over: the fresher, the fewer repeats.
FLUSH_SECONDS_HA = 1.0
DIGEST_CHECK_SECONDS = 1.0
DIGEST_MAX = 200  # entries listed in one digest; later ones are only counted
STATE_PREFIX = "processor:"


@dataclass
class Snapshot:
    """The configuration the rules read, loaded in one go so no event waits on the database."""

    inputs_by_key: dict[str, rules.InputRule] = field(default_factory=dict)
    inputs_by_id: dict[int, rules.InputRule] = field(default_factory=dict)
    outputs_by_id: dict[int, rules.OutputRule] = field(default_factory=dict)
    output_links: dict[int, list[int]] = field(default_factory=dict)
    meters: dict[int, meters.MeterRule] = field(default_factory=dict)
    outputs_enabled: bool = True
    quiet: rules.QuietHours = field(default_factory=rules.QuietHours)
    output_ids: dict[str, int] = field(default_factory=dict)  # output key -> id
    # (kind, key) of devices whose label a person set: a device's own advert no longer changes it
    custom_labels: set[tuple[str, str]] = field(default_factory=set)
    overridden: set[int] = field(default_factory=set)  # outputs whose generation a person chose


def load_snapshot(session: Session, quiet_default: rules.QuietHours | None = None) -> Snapshot:
    snap = Snapshot(
        outputs_enabled=config_changes.outputs_enabled(session),
        quiet=config_changes.quiet_hours(session, quiet_default or rules.QuietHours()),
    )
    input_links: dict[int, list[int]] = {}
    for input_id, linked_id in session.execute(select(InputLink.input_device_id, InputLink.linked_device_id)):
        if linked_id != input_id:
            input_links.setdefault(input_id, []).append(linked_id)
    for row in session.scalars(select(InputConfig)):
        add_input(snap, row, input_links.get(row.id, ()))
    for out_row in session.scalars(select(OutputConfig)):
        add_output(snap, out_row)
    for input_id, output_id in session.execute(
        select(OutputLink.input_device_id, OutputLink.output_device_id)
    ):
        if output_id in snap.outputs_by_id:
            snap.output_links.setdefault(input_id, []).append(output_id)
    for ids in snap.output_links.values():
        ids.sort(key=lambda i: snap.outputs_by_id[i].device_key)
    for m in session.scalars(select(MeterConfig)):
        snap.meters[m.input_device_id] = meters_rule(m)
    return snap


def add_input(snap: Snapshot, row: InputConfig, linked: Iterable[int]) -> rules.InputRule:
    rule = input_rule(row, linked)
    snap.inputs_by_key[rule.device_key] = rule
    snap.inputs_by_id[rule.id] = rule
    if row.label_customized:
        snap.custom_labels.add(("input", row.device_key))
    else:
        snap.custom_labels.discard(("input", row.device_key))
    return rule


def add_output(snap: Snapshot, row: OutputConfig) -> rules.OutputRule:
    rule = snap.outputs_by_id[row.id] = output_rule(row)
    snap.output_ids[row.device_key] = row.id
    if row.label_customized:
        snap.custom_labels.add(("output", row.device_key))
    else:
        snap.custom_labels.discard(("output", row.device_key))
    if row.generation_override:
        snap.overridden.add(row.id)
    else:
        snap.overridden.discard(row.id)
    return rule


def input_rule(row: InputConfig, linked: Iterable[int]) -> rules.InputRule:
    return rules.InputRule(
        id=row.id,
        device_key=row.device_key,
        label=row.device_label or row.device_key,
        enabled=bool(row.device_enabled),
        activation_interval=row.activation_interval,
        multi_trigger=bool(row.multi_trigger),
        multi_trigger_rate=row.multi_trigger_rate,
        multi_trigger_interval=row.multi_trigger_interval,
        linked_input_ids=tuple(sorted(linked)),
        info_notify=bool(row.info_notify),
        device_type=row.device_type,
    )


def output_rule(row: OutputConfig) -> rules.OutputRule:
    return rules.OutputRule(
        id=row.id,
        device_key=row.device_key,
        label=row.device_label or row.device_key,
        device_type=row.device_type,
        # NULL (a row from the original schema) means enabled: the original had no such switch.
        enabled=row.device_enabled is not False,
        device_params=row.device_params,
        trigger_topic=row.trigger_topic,
        trigger_interval=row.trigger_interval,
        generation=row.generation_override or row.generation,
        pulse_seconds=row.pulse_seconds,
    )


def refresh_keys(session: Session, snap: Snapshot, keys: Iterable[str]) -> None:
    """Bring the snapshot up to date for devices the HeartbeatFilter registered or re-described.

    Costs a query per REFRESH_CHUNK keys, however large the configuration: registration changes
    only a device's own row (a new device has no links yet; a described one keeps its links).
    """
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), REFRESH_CHUNK):
        chunk = wanted[start : start + REFRESH_CHUNK]
        for row in session.scalars(select(InputConfig).where(InputConfig.device_key.in_(chunk))):
            old = snap.inputs_by_id.get(row.id)
            add_input(snap, row, old.linked_input_ids if old else ())
            if row.id not in snap.meters and registry.is_meter(row.device_type) and row.meter is not None:
                snap.meters[row.id] = meters_rule(row.meter)
        for out_row in session.scalars(select(OutputConfig).where(OutputConfig.device_key.in_(chunk))):
            add_output(snap, out_row)


Rule = rules.InputRule | rules.OutputRule


def new_device(kind: str, key: str, label: str, device_type: str, ident: int) -> Rule:
    """The rule of a device registered a moment ago, as registry.insert writes its row."""
    if kind == "input":
        return input_rule(
            InputConfig(
                id=ident, device_key=key, device_label=label, device_type=device_type, device_enabled=False
            ),
            (),
        )
    return output_rule(
        OutputConfig(
            id=ident,
            device_key=key,
            device_label=label,
            device_type=device_type,
            device_enabled=True,
            pulse_seconds=rules.PULSE_INPUT_INTERVAL,
        )
    )


def meters_rule(m: MeterConfig) -> meters.MeterRule:
    return meters.MeterRule(
        input_id=m.input_device_id,
        unit=m.meter_reading_unit,
        factor=m.meter_reading_unit_factor,
        precision=m.meter_reading_unit_precision,
        low_limit=m.meter_low_limit,
        high_limit=m.meter_high_limit,
        iot_topic=m.meter_iot_topic or None,
        reset_value=m.meter_reset_value,
        reset_additive=bool(m.meter_reset_additive),
    )


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
        self._snap = Snapshot()
        # keys the AuditWriter stored since the last refresh (bounded by the registration caps)
        self._pending: set[str] = set()
        # (kind, key) -> rule of devices registered but not yet read back from the database, under a
        # provisional negative id (bounded by the registration caps)
        self._provisional: dict[tuple[str, str], rules.InputRule | rules.OutputRule] = {}
        self._next_provisional = -1
        self._next_refresh = 0.0
        self._bad_log = ratelog.RateLimitedLog(log)
        self._input_state: dict[int, rules.InputState] = {}
        self._output_state: dict[int, rules.OutputState] = {}
        self._meter_zone: dict[int, str] = {}
        # input key -> (label, when it last fired), oldest first: the "recent triggers" of an alert
        self._recent: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._tz = zones.zone(settings.user_tz)
        self._quiet_default = rules.QuietHours(
            settings.quiet_hours_not_before, settings.quiet_hours_not_after
        )
        # Alerts of informational inputs held back by quiet hours: {"items": [...], "more": n}
        self._digest: dict[str, Any] = {"items": [], "more": 0}
        # ("input" | "output" | "meter_zone", id) or ("recent" | "digest", 0): state not yet written
        self._dirty: set[tuple[str, int]] = set()
        self._next_flush = 0.0
        self._next_digest_check = 0.0
        self._flush_seconds = FLUSH_SECONDS_HA if settings.ha_enabled else FLUSH_SECONDS
        # False on a standby hub: it decides nothing, changes nothing and writes no rule state
        self._acting = True
        # Bound here, before any thread starts, so nothing sent early is lost.
        self._pull = inproc.bind_pull(PROCESSOR)
        # PUSH sockets work() makes in this thread; None before that (and when not configured).
        self._control: inproc.Socket | None = None
        self._audit: inproc.Socket | None = None
        self._config: inproc.Socket | None = None
        self._meter_writer: inproc.Socket | None = None
        self._notifier: inproc.Socket | None = None

    # ---- loop -------------------------------------------------------------------------------

    def work(self) -> None:
        self._control = inproc.connect_push(CONTROL_PUBLISHER)
        self._audit = inproc.connect_push(AUDIT)
        self._config = inproc.connect_push(CONFIG)
        # Nobody reads METER_WRITER unless InfluxDB is configured; a PUSH without a peer would fill up.
        if self._settings.influxdb_enabled:
            self._meter_writer = inproc.connect_push(METER_WRITER)
        if self._settings.telegram_enabled:
            self._notifier = inproc.connect_push(NOTIFIER)
        self._reload()
        self._acting = roles.acting()
        if self._acting:
            self._load_state()
        health.set_state("event_processor", "running")
        next_reload = time.monotonic() + RELOAD_SECONDS
        try:
            while not threads.shutting_down.is_set():
                try:
                    msg = inproc.recv(self._pull, timeout_ms=200)
                except inproc.MessageError as exc:
                    log.warning("dropping undecodable frame: %s", exc)
                    continue
                if self._acting != roles.acting():
                    self._role_changed()
                try:
                    if isinstance(msg, Applied):
                        self._on_applied(msg)  # applied already: answered on a standby too
                    elif isinstance(msg, Registered):
                        self._on_registered(msg)
                    elif not self._acting:
                        if msg is not None:
                            self._refuse(msg)
                    elif isinstance(msg, Envelope):
                        self._on_envelope(msg)
                        if msg.source == "rabbitmq" and self._settings.ha_enabled:
                            delivery.processed(msg.received_at)
                    elif isinstance(msg, Command):
                        self._on_command(msg)
                except Exception:
                    # One bad message must never stop the hub; it is logged, counted and skipped.
                    health.count("processor.errors")
                    log.exception("failed to process %s", type(msg).__name__)
                if time.monotonic() >= next_reload:
                    self._reload()
                    next_reload = time.monotonic() + RELOAD_SECONDS
                if self._acting:
                    self._housekeeping()
        finally:
            # everything, not just what changed since the last flush: a queued StateWrite may
            # still be on its way, and this snapshot (newest version) must win over it.
            # Not on a standby or a fenced hub: the state belongs to the active hub.
            if self._acting and roles.acting():
                self._dirty |= self._all_state_keys()
                self._flush()
            if self._audit is not None:
                self._audit.setsockopt(zmq.LINGER, 1000)  # the last flush must reach the AuditWriter
            for sock in (
                self._pull,
                self._control,
                self._audit,
                self._config,
                self._meter_writer,
                self._notifier,
            ):
                if sock is not None:
                    sock.close()

    def _role_changed(self) -> None:
        """Standby -> active: start from the database's configuration and rule state, as after a restart."""
        self._acting = roles.acting()
        if not self._acting:
            self._dirty.clear()  # fenced: the new active hub owns the rule state now
            log.warning("event processor stopped acting: this hub no longer holds the lease")
            return
        self._input_state.clear()
        self._output_state.clear()
        self._meter_zone.clear()
        self._recent.clear()
        self._digest = {"items": [], "more": 0}
        self._dirty.clear()
        self._provisional.clear()
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
                self._snap = load_snapshot(session, self._quiet_default)
        except SQLAlchemyError:
            health.count("processor.db_errors")
            log.exception("could not load the configuration; keeping the previous one")
            return
        self._adopt()

    # ---- configuration changes --------------------------------------------------------------

    def _on_command(self, cmd: Command) -> None:
        if cmd.action == "fire_input":
            commands.answer(cmd, self._fire_input(cmd))
        else:
            # Stored by the ConfigApplier, which may wait on the database while events go on here;
            # it comes back as Applied, and the caller hears "saved" only after the reload.
            inproc.send(_made(self._config), cmd)

    def _on_applied(self, msg: Applied) -> None:
        if msg.reload:
            self._reload()
        commands.answer(Command(action="", args={}, reply_to=msg.reply_to), Reply(**msg.reply))

    def _on_registered(self, msg: Registered) -> None:
        """The AuditWriter stored these devices: read their rows (real ids, a person's labels) soon."""
        self._pending.update(msg.keys)
        if len(self._pending) > MAX_PENDING:
            self._reload()

    def _learn(self, adverts: list[list[Any]], generations: list[list[Any]]) -> None:
        """Devices the HeartbeatFilter registered or re-described, and outputs' new generations:
        known here at once, while the AuditWriter stores them."""
        snap = self._snap
        for kind, key, label, device_type, _location in adverts:
            if kind == "input":
                old_in = snap.inputs_by_key.get(key)
                if old_in is None:
                    rule: Rule = new_device(kind, key, label, device_type, self._temp_id())
                else:
                    keep = ("input", key) in snap.custom_labels
                    rule = replace(old_in, device_type=device_type, label=old_in.label if keep else label)
                snap.inputs_by_key[key] = snap.inputs_by_id[rule.id] = rule  # type: ignore[assignment]
            else:
                ident = snap.output_ids.get(key)
                old_out = None if ident is None else snap.outputs_by_id.get(ident)
                if old_out is None:
                    rule = new_device(kind, key, label, device_type, self._temp_id())
                else:
                    keep = ("output", key) in snap.custom_labels
                    rule = replace(old_out, device_type=device_type, label=old_out.label if keep else label)
                snap.outputs_by_id[rule.id] = rule  # type: ignore[assignment]
                snap.output_ids[key] = rule.id
            if rule.id < 0:
                self._provisional[(kind, key)] = rule
        for key, generation in generations:
            ident = snap.output_ids.get(key)
            out = None if ident is None else snap.outputs_by_id.get(ident)
            if out is not None and out.id not in snap.overridden:
                snap.outputs_by_id[out.id] = replace(out, generation=generation)
                if out.id < 0:
                    self._provisional[("output", key)] = snap.outputs_by_id[out.id]

    def _temp_id(self) -> int:
        ident, self._next_provisional = self._next_provisional, self._next_provisional - 1
        return ident

    def _adopt(self) -> None:
        """After reading the database: provisional devices now stored take their real ids (their rule
        state moves along); those still on their way stay in the snapshot as they were."""
        snap = self._snap
        for (kind, key), temp in list(self._provisional.items()):
            if kind == "input":
                real_in = snap.inputs_by_key.get(key)
                if real_in is None or real_in.id == temp.id:
                    snap.inputs_by_key[key] = snap.inputs_by_id[temp.id] = temp  # type: ignore[assignment]
                    continue
                snap.inputs_by_id.pop(temp.id, None)
                snap.meters.pop(temp.id, None)
                self._move_state(("input", "meter_zone"), temp.id, real_in.id)
            else:
                real = snap.output_ids.get(key)
                if real is None or real == temp.id:
                    snap.outputs_by_id[temp.id] = temp  # type: ignore[assignment]
                    snap.output_ids[key] = temp.id
                    continue
                snap.outputs_by_id.pop(temp.id, None)
                self._move_state(("output",), temp.id, real)
            del self._provisional[(kind, key)]

    def _move_state(self, kinds: tuple[str, ...], old: int, new: int) -> None:
        tables: dict[str, dict[int, Any]] = {
            "input": self._input_state,
            "meter_zone": self._meter_zone,
            "output": self._output_state,
        }
        for kind in kinds:
            if old in tables[kind]:
                tables[kind][new] = tables[kind].pop(old)
                self._dirty.add((kind, new))

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
            self._learn(env.adverts, env.generations)
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

    def _refresh(self, keys: set[str] | None = None) -> None:
        """Refresh the snapshot for the given pending keys (None: every pending key)."""
        keys = set(self._pending) if keys is None else keys
        self._pending -= keys
        if not keys:
            return
        try:
            with self._sessions() as session:
                refresh_keys(session, self._snap, keys)
        except SQLAlchemyError:
            health.count("processor.db_errors")
            self._pending |= keys
            log.exception("could not refresh the configuration of %d device(s)", len(keys))
            return
        health.count("processor.refreshes")
        self._adopt()

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
        rule = self._snap.inputs_by_key.get(key)
        if rule is None:
            # The HeartbeatFilter registers every device before forwarding (or refuses it past a
            # cap and strips it); this is a database fault, and never a reason to reload for each one.
            health.count("processor.unregistered")
            self._bad_log.warning("input %r from %s is not registered; ignoring", key, origin)
            return {"fired": False, "reason": "unregistered"}
        # The sender's clock may be off (a Pi without a real-time clock before NTP syncs): its
        # offset, learned from its heartbeats, corrects the timestamp (app.clocks).
        offset = None if event_ts is None else self._clocks.offset(key)
        verdict = rules.check_stale(event_ts, now, self._defaults, offset)
        if event_ts is not None and offset is not None:
            event_ts += offset  # the event_log row keeps the time on the hub's clock
        if verdict.fire and registry.is_meter(rule.device_type) and "sample_values" in device:
            entered = self._meter_reading(rule, device, now)
            if entered is None:
                # A routine reading: stored and charted, not an event for the audit trail.
                return {"fired": False, "reason": "meter_reading"}
            detail = entered
        decision = self._record(now, rule, origin, detail, actor)
        if verdict.fire:
            state = self._input_state.setdefault(rule.id, rules.InputState())
            rules.record_trigger(state, now)
            self._dirty.add(("input", rule.id))
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
        # DEBUG, not INFO: at the default level a line per activation cost about 0.12 ms of CPU, 29 %
        # of the hub's cost per activation (docs/performance.md). Each decision is in the audit
        # (Events page, API); SIGHUP switches the log to DEBUG to see them there too.
        log.debug("input %r fired (%s)", rule.device_key, detail or "no detail")
        decision["fired"] = True
        event_log = []
        message = f"{rule.label} {detail}" if detail else rule.label
        quiet = rules.quiet_until(now, self._snap.quiet, self._tz) if rule.info_notify else None
        for output_id in self._snap.output_links.get(rule.id, ()):
            output = self._snap.outputs_by_id[output_id]
            result = self._trigger(rule, output, now, message, device, detail, quiet)
            decision["outputs"].append(result)
            if result["fired"]:
                event_log.append(
                    {
                        "input_device": rule.label,
                        "output_device": output.label,
                        "timestamp": event_ts if event_ts is not None else now,
                    }
                )
        self._recent.pop(rule.device_key, None)
        self._recent[rule.device_key] = (rule.label, now)
        while len(self._recent) > RECENT_MAX:
            self._recent.popitem(last=False)
        self._dirty.add(("recent", 0))
        if not decision["outputs"]:
            decision["detail"] = "no linked outputs"
        self._send_audit(decision, event_log)
        return {"fired": True, "outputs": decision["outputs"]}

    def _meter_reading(self, rule: rules.InputRule, device: dict[str, Any], now: float) -> str | None:
        """Store a meter reading; returns the crossing detail when it leaves the allowed range."""
        values = device.get("sample_values")
        if not isinstance(values, dict):
            health.count("processor.malformed")
            log.warning("meter %r sent sample_values of type %s", rule.device_key, type(values).__name__)
            return None
        register, metered = values.get("register"), values.get("meter")
        if not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in (register, metered)
        ):
            health.count("processor.malformed")
            log.warning("meter %r sent non-numeric values", rule.device_key)
            return None
        meter = self._snap.meters.get(rule.id)
        if meter is None:
            meter = self._create_meter(rule)
        value = meters.normalise(register, meter)
        stored: dict[str, Any] = {"meter_reading": meters.reading_text(value, meter)}
        if value is not None:
            stored["register_value"] = int(register)  # type: ignore[arg-type]
        if metered is not None:
            stored["meter_value"] = int(metered)
        # Stored by the AuditWriter; the limits below decide from memory.
        inproc.send(
            _made(self._audit),
            MeterReading(
                input_id=rule.id, input_key=rule.device_key, timestamp=now, values=stored, reading=value
            ),
        )
        health.count("processor.meter_readings")
        if self._meter_writer is not None:
            location = device.get("location")
            inproc.send(
                self._meter_writer,
                MeterPoint(
                    device_key=rule.device_key,
                    location=location if isinstance(location, str) else None,
                    metered=None if metered is None else float(metered),
                    register=None if value is None else float(register),  # type: ignore[arg-type]
                    reading=value,
                    timestamp=now,
                    divisor=meter.divisor,
                ),
            )
        zone = meters.zone(value, meter)
        entered = meters.crossing(self._meter_zone.get(rule.id), zone)
        if zone is not None and zone != self._meter_zone.get(rule.id):
            self._meter_zone[rule.id] = zone
            self._dirty.add(("meter_zone", rule.id))
        if entered is None or value is None:
            return None
        detail = meters.crossing_detail(entered, meter)
        log.info("meter %r is %s: %s", rule.device_key, detail, meters.reading_text(value, meter))
        return detail

    def _create_meter(self, rule: rules.InputRule) -> meters.MeterRule:
        """A meter input without a meter_config row (e.g. from an original database, or registered a
        moment ago) decides with the default settings; the AuditWriter creates the row with its reading."""
        row = registry.new_meter_config()
        row.input_device_id = rule.id
        meter = self._snap.meters[rule.id] = meters_rule(row)
        return meter

    def _trigger(
        self,
        rule: rules.InputRule,
        output: rules.OutputRule,
        now: float,
        message: str,
        device: dict[str, Any],
        detail: str | None,
        quiet: float | None = None,
    ) -> dict[str, Any]:
        """Run one linked output; quiet is when quiet hours end if they hold back this input now."""
        state = self._output_state.setdefault(output.id, rules.OutputState())
        verdict = rules.evaluate_output(output, state, now, self._snap.outputs_enabled)
        result: dict[str, Any] = {
            "output_device_id": output.id,
            "output_key": output.device_key,
            "output_label": output.label,
        }
        if verdict.fire and output.device_type.strip().lower() == registry.SMS_TYPE:
            if self._notifier is None:
                verdict = rules.Decision(False, rules.NO_ROUTE, "Telegram is off (TELEGRAM_BOT_TOKEN)")
            elif quiet is not None:
                self._defer(rule, now, detail)
                health.count(f"processor.blocked.{rules.QUIET_HOURS}")
                when = self._hhmm(quiet)
                result.update(fired=False, reason=rules.QUIET_HOURS, detail=f"deferred to {when} digest")
                return result
            else:
                self._notify(rule, output, now, device, detail)
                state.last_fired = now
                self._dirty.add(("output", output.id))
                health.count("processor.notifications")
                result.update(fired=True, reason=None, detail="telegram")
                return result
        if verdict.fire and quiet is not None and self._snap.quiet.all_outputs:
            # Switches and cameras only make sense now, so they are held back, not deferred.
            verdict = rules.Decision(
                False, rules.QUIET_HOURS, f"held back by quiet hours until {self._hhmm(quiet)}"
            )
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
                        input_key=rule.device_key,
                        input_label=rule.label,
                        input_type=rule.device_type,
                        duration=rules.pulse_duration(output, rule),
                        message=message,
                        now=now,
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
                    _made(self._control),
                    ControlMessage(
                        routing_key=outbound.routing_key,
                        body=outbound.body,
                        expires_at=now + self._settings.control_message_ttl,
                        output_key=output.device_key,
                    ),
                )
                state.last_fired = now
                self._dirty.add(("output", output.id))
                health.count("processor.triggers")
                # by handler (ioboard, snapshot, tts, bluetooth) or "topic" for a trigger_topic output
                health.count(f"{TRIGGERS_BY_TYPE}{handler or 'topic'}")
                health.count(f"processor.triggers_by_generation.{outbound.generation}")
                result.update(fired=True, reason=None, detail=outbound.routing_key)
                return result
        health.count(f"processor.blocked.{verdict.reason}")
        result.update(fired=False, reason=verdict.reason, detail=verdict.detail)
        return result

    def _notify(
        self,
        rule: rules.InputRule,
        output: rules.OutputRule,
        now: float,
        device: dict[str, Any],
        detail: str | None,
    ) -> None:
        """Hand an alert to the Telegram notifier, with the other inputs that fired lately."""
        history = [
            [label, round(now - when)]
            for key, (label, when) in reversed(self._recent.items())
            if key != rule.device_key and 0 <= now - when <= RECENT_SECONDS
        ]
        image = device.get("image")
        storage_url = device.get("storage_url")
        inproc.send(
            _made(self._notifier),
            Notification(
                timestamp=now,
                input_key=rule.device_key,
                input_label=rule.label,
                input_type=rule.device_type,
                event_detail=detail,
                storage_url=storage_url if isinstance(storage_url, str) else None,
                history=history,
                image=image if isinstance(image, bytes) else None,
                sms_recipients=output.device_params,
            ),
        )

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
        inproc.send(_made(self._audit), AuditRecord(decision=decision, event_log=event_log))

    # ---- quiet hours --------------------------------------------------------------------------

    def _hhmm(self, when: float) -> str:
        return datetime.fromtimestamp(when, self._tz).strftime("%H:%M")

    def _defer(self, rule: rules.InputRule, now: float, detail: str | None) -> None:
        """Hold an informational alert for the digest, and write it at once (it is the alert itself)."""
        items = self._digest["items"]
        if len(items) < DIGEST_MAX:
            items.append({"key": rule.device_key, "label": rule.label, "time": now, "detail": detail})
        else:
            self._digest["more"] += 1
        log.info("notification for %r deferred by quiet hours", rule.device_key)
        self._dirty.add(("digest", 0))
        self._flush()

    def _check_digest(self, now: float) -> None:
        """Send the pending digest as one message once quiet hours are over."""
        if not self._digest["items"] or self._notifier is None:
            return
        if rules.quiet_until(now, self._snap.quiet, self._tz) is not None:
            return
        inproc.send(_made(self._notifier), Notification(timestamp=now, text=self._digest_text(now)))
        health.count("processor.digests")
        log.info("sent the quiet-hours digest of %d notification(s)", len(self._digest["items"]))
        self._digest = {"items": [], "more": 0}
        self._dirty.add(("digest", 0))
        self._flush()

    def _digest_text(self, now: float) -> str:
        items, more = self._digest["items"], self._digest["more"]
        today = datetime.fromtimestamp(now, self._tz).date()
        count = len(items) + more
        lines = [f"Quiet hours digest: {count} notification{'' if count == 1 else 's'}"]
        for item in items:
            local = datetime.fromtimestamp(item["time"], self._tz)
            when = local.strftime("%H:%M" if local.date() == today else "%d %b %H:%M")
            detail = f" {item['detail']}" if item.get("detail") else ""
            lines.append(f"{when} {item['label']}{detail}")
        if more:
            lines.append(f"and {more} more")
        return "\n".join(lines)

    # ---- rule state across restarts ---------------------------------------------------------

    def _housekeeping(self) -> None:
        mono = time.monotonic()
        if self._pending and mono >= self._next_refresh:
            self._next_refresh = mono + REFRESH_SECONDS
            self._refresh()
        if mono >= self._next_digest_check:
            self._next_digest_check = mono + DIGEST_CHECK_SECONDS
            self._check_digest(self._clock())
        if self._dirty and mono >= self._next_flush and self._acting:
            self._flush()

    def _state_value(self, kind: str, ident: int) -> Any:
        """The JSON value of one piece of state, or None when there is nothing to keep."""
        if kind == "input":
            st = self._input_state.get(ident)
            if st is None:
                return None
            return {
                "triggers": list(st.triggers),
                "last_fired": st.last_fired,
                "detail": st.last_fired_detail,
            }
        if kind == "output":
            out = self._output_state.get(ident)
            return None if out is None or out.last_fired is None else out.last_fired
        if kind == "meter_zone":
            return self._meter_zone.get(ident)
        if kind == "recent":
            return [[key, label, when] for key, (label, when) in self._recent.items()]
        return self._digest if self._digest["items"] else None

    @staticmethod
    def _state_key(kind: str, ident: int) -> str:
        return f"{STATE_PREFIX}{kind}" if kind in ("recent", "digest") else f"{STATE_PREFIX}{kind}:{ident}"

    def _flush(self) -> None:
        """Hand the changed rule state to the AuditWriter, which stores it beside the event path.

        State of a device still under a provisional id waits until the device has its real id.
        """
        self._next_flush = time.monotonic() + self._flush_seconds
        if not self._dirty:
            return
        dirty = {(kind, ident) for kind, ident in self._dirty if ident >= 0}
        self._dirty = set()
        if not dirty:
            return
        values = {self._state_key(kind, ident): self._state_value(kind, ident) for kind, ident in dirty}
        inproc.send(_made(self._audit), StateWrite(values=values, version=time.time()))

    def _all_state_keys(self) -> set[tuple[str, int]]:
        keys = {("input", i) for i in self._input_state} | {("output", i) for i in self._output_state}
        keys |= {("meter_zone", i) for i in self._meter_zone}
        return keys | {("recent", 0), ("digest", 0)}

    def _load_state(self) -> None:
        """Resume the rule state the previous run left (a bad entry is skipped, never fatal)."""
        try:
            with self._sessions() as session:
                stored = rule_state.load(session, STATE_PREFIX)
        except SQLAlchemyError:
            health.count("processor.state_errors")
            log.exception("could not load rule state; starting with none")
            return
        for key, value in stored.items():
            kind, _, ident = key.removeprefix(STATE_PREFIX).partition(":")
            try:
                self._restore(kind, int(ident) if ident else 0, value)
            except (TypeError, ValueError, KeyError, AttributeError):
                log.warning("rule_state %r is not in the expected shape; ignoring it", key)
        log.info(
            "rule state resumed: %d inputs, %d outputs, %d pending digest entries",
            len(self._input_state),
            len(self._output_state),
            len(self._digest["items"]),
        )

    def _restore(self, kind: str, ident: int, value: Any) -> None:
        if kind == "input":
            st = rules.InputState(last_fired=value["last_fired"], last_fired_detail=value["detail"])
            st.triggers.extend(float(t) for t in value["triggers"])
            self._input_state[ident] = st
        elif kind == "output":
            self._output_state[ident] = rules.OutputState(last_fired=float(value))
        elif kind == "meter_zone":
            self._meter_zone[ident] = str(value)
        elif kind == "recent":
            for key, label, when in value:
                self._recent[str(key)] = (str(label), float(when))
        elif kind == "digest":
            items = [dict(i) for i in value["items"] if isinstance(i, dict) and "label" in i and "time" in i]
            self._digest = {"items": items, "more": int(value.get("more", 0))}


def _made(sock: inproc.Socket | None) -> inproc.Socket:
    """A push socket work() made (sending on one before work(), or an unconfigured one, is a bug)."""
    if sock is None:
        raise RuntimeError("a processor socket was used before work() made it")
    return sock
