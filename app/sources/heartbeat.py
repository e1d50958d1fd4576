"""HeartbeatFilter: notes last-seen, registers devices on first sight, then forwards to the processor.

It decides from memory and never waits on the database: registrations, generation changes and
last-seen times go to the AuditWriter (which stores them beside the event path), and the envelope
tells the processor what changed so it knows a new device at once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict

import zmq
from sqlalchemy.orm import Session, sessionmaker

from app import protocols
from app.core import health, limits
from app.core.channels import AUDIT, HEARTBEAT_FILTER, PROCESSOR, Envelope, LastSeen, Registration
from app.engine.clocks import ClockOffsets
from app.engine.clocks import offsets as clock_offsets
from app.engine.presence import Presence
from app.store import registry, roles, store_writes
from pylib import inproc, ratelog, threads, wire

log = logging.getLogger(__name__)

FLUSH_SECONDS = 30.0
# An output's recorded device must have been silent this long before another device's generation
# replaces it (a board replaced by a newer one takes over after this; two boards never flip-flop).
GENERATION_HOLD_SECONDS = 600.0
HEARTBEAT_KIND = "heartbeat"  # routing key part [1] of a device's steady heartbeat
Known = tuple[str | None, str, str | None, str | None]  # label, type, location, origin
MAX_TRACKED_DEVICES = 4096  # devices whose registrations are counted for the per-device caps
MAX_WARNED_CONFLICTS = 1000  # origin conflicts logged once each; past this only counted


def adverts(inbound: protocols.Inbound) -> tuple[list[registry.Advert], list[registry.Advert], list[str]]:
    """The devices a message describes, the active inputs it reports, and any problems.

    Only descriptions refresh a registered device: active devices are often partial or spelled
    differently (snapshot-processor reports type 'camera' for its 'Camera'), so they only register
    a device never seen before.
    """
    described: list[registry.Advert] = []
    active: list[registry.Advert] = []
    problems = list(inbound.problems)
    groups = [("input", inbound.inputs, described), ("output", inbound.outputs, described)]
    for kind, devices, into in groups + [("input", inbound.active, active)]:
        for device in devices:
            try:
                into.append(registry.advert(kind, device))
            except registry.BadDevice as exc:
                problems.append(str(exc))
    return described, active, problems


class HeartbeatFilter(threads.AppThread):
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        presence: Presence,
        caps: limits.Caps | None = None,
        refusals: limits.Refusals | None = None,
        clocks: ClockOffsets | None = None,
    ) -> None:
        super().__init__("HeartbeatFilter")
        self._sessions = session_factory
        self._presence = presence
        self._clocks = clock_offsets if clocks is None else clocks
        self._caps = caps or limits.Caps()
        self._refusals = refusals or limits.refusals
        self._known: dict[tuple[str, str], Known] = {}
        self._totals = {"input": 0, "output": 0}
        # device -> keys it registered since the start, per kind; the least recently heard forgotten first
        self._per_device: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._warned_conflicts: set[tuple[str, str]] = set()
        # output key -> (generation, device name) as stored; one entry per registered output
        self._generations: dict[str, tuple[str | None, str | None]] = {}
        self._confirmed: dict[str, float] = {}  # output key -> when its recorded device last confirmed it
        self._warned_generation: set[str] = set()
        self._bad_log = ratelog.RateLimitedLog(log)
        self._change_log = ratelog.RateLimitedLog(log)
        self._pull = inproc.bind_pull(HEARTBEAT_FILTER, inproc.BATCH_HWM)
        # The AuditWriter stores registrations and last-seen; its loop never waits long on a lock.
        # Sent at once, not batched: registrations are rare, and each must be on its way before the
        # envelope that names its devices reaches the processor.
        self._store = inproc.connect_push(AUDIT)

    def work(self) -> None:
        # What one drained burst produced goes on to the processor in one frame.
        push = inproc.connect_outbox(PROCESSOR)
        with self._sessions() as session:
            self._learn_known(registry.load_known(session))
            self._generations = registry.load_generations(session)
        health.set_state("heartbeat_filter", "running")
        next_flush = time.monotonic() + FLUSH_SECONDS
        try:
            while not threads.shutting_down.is_set():
                for frame in inproc.recv_frames(self._pull, 200):
                    try:
                        msg = inproc.decode(frame)
                    except inproc.MessageError as exc:
                        self._bad_log.warning("dropping undecodable frame: %s", exc)
                        continue
                    if isinstance(msg, Envelope):
                        self._handle(msg, frame, push)
                push.flush()
                if time.monotonic() >= next_flush:
                    self._flush()
                    next_flush = time.monotonic() + FLUSH_SECONDS
        finally:
            self._flush()
            push.flush()
            self._pull.close()
            push.close()
            self._store.setsockopt(zmq.LINGER, 1000)  # the last flush must reach the AuditWriter
            self._store.close()

    def _learn_known(self, known: dict[tuple[str, str], Known]) -> None:
        self._known = known
        self._totals = {"input": 0, "output": 0}
        for kind, _ in known:
            self._totals[kind] = self._totals.get(kind, 0) + 1

    def _handle(self, env: Envelope, frame: bytes, push: inproc.Socket | inproc.Outbox) -> None:
        data = env.payload.get("data") or {}
        inbound = protocols.read(env.routing_key, env.origin, data)
        described, active, problems = adverts(inbound)
        if problems:
            # One line per message, however many bad entries it holds.
            health.count("heartbeat_filter.bad_device", len(problems))
            self._bad_log.warning(
                "%d bad device(s) from %s (%s): %s",
                len(problems),
                env.origin,
                env.routing_key or env.source,
                "; ".join(p[:200] for p in problems[:3]),
            )
        if not roles.acting():
            # A standby hub: presence stays current for its dashboard (bounded there); the active
            # hub registers.
            self._presence.seen(env.origin, [ad.device_key for ad in described + active], env.received_at)
            if described:
                self._learn_clock(env, [ad.device_key for ad in described])
            return
        device = env.device or env.origin
        new, refreshed, refused = self._register(device, env.origin, described, active)
        generations = self._note_generation(env.origin, inbound, described, env.received_at)
        if new or refreshed or generations:
            # Stored by the AuditWriter (sent first, so it is on its way before the processor
            # decides anything about these devices); the processor learns them from the envelope.
            inproc.send(
                self._store,
                Registration(
                    origin=env.origin,
                    new=[store_writes.advert_row(ad) for ad in new],
                    refreshed=[store_writes.advert_row(ad) for ad in refreshed],
                    generations=[[key, inbound.generation, inbound.device] for key in generations],
                ),
            )
            env.adverts = [store_writes.advert_row(ad) for ad in new + refreshed]
            env.generations = [[key, inbound.generation] for key in generations]
            env.changed_keys = [ad.device_key for ad in new + refreshed] + generations
        # Only registered keys are tracked: a flood of keys that were refused grows nothing here.
        known = [ad.device_key for ad in described + active if (ad.kind, ad.device_key) in self._known]
        self._presence.seen(env.origin, known, env.received_at)
        described_known = [ad.device_key for ad in described if (ad.kind, ad.device_key) in self._known]
        if described_known:
            self._learn_clock(env, described_known)
        if refused:
            # The message's known inputs still work; the refused ones never reach the rules.
            env.refused_keys = sorted(refused)
            if env.changed_keys or any(ad.device_key not in refused for ad in active):
                inproc.send(push, env)
        elif env.changed_keys:
            inproc.send(push, env)
        elif inbound.active:
            push.send(frame)  # unchanged: pass the frame on as it came, no second encoding

    def _learn_clock(self, env: Envelope, keys: list[str]) -> None:
        """Feed a RabbitMQ heartbeat's timestamp to the clock offsets (MQTT devices send uptimes)."""
        parts = env.routing_key.split(".")
        if env.source != "rabbitmq" or len(parts) < 3 or parts[1] != HEARTBEAT_KIND:
            return
        try:
            stamped = wire.parse_timestamp(env.payload.get("timestamp"))
        except wire.WireError:
            return  # the source already checked it; nothing to learn from a bad one
        if stamped is not None:
            self._clocks.observe(keys, stamped.timestamp(), env.received_at, ".".join(parts[2:]))

    def _admit(self, device: str, ad: registry.Advert) -> str | None:
        """None when this new key may be registered (and it is counted), else the cap it would break."""
        if self._totals.get(ad.kind, 0) >= self._caps.total(ad.kind):
            return limits.TOTAL[ad.kind]
        counts = self._per_device.get(device)
        if counts is None:
            counts = self._per_device[device] = {"input": 0, "output": 0}
            while len(self._per_device) > MAX_TRACKED_DEVICES:
                self._per_device.popitem(last=False)
        self._per_device.move_to_end(device)
        if counts[ad.kind] >= self._caps.per_device(ad.kind):
            return limits.PER_DEVICE[ad.kind]
        counts[ad.kind] += 1
        self._totals[ad.kind] = self._totals.get(ad.kind, 0) + 1
        return None

    def _register(
        self, device: str, origin: str, described: list[registry.Advert], active: list[registry.Advert]
    ) -> tuple[list[registry.Advert], list[registry.Advert], set[str]]:
        """Admit new devices (within the caps) and follow changed descriptions, in memory.

        Returns the new devices, the re-described ones, and the input keys refused by a cap.
        """
        new: dict[tuple[str, str], registry.Advert] = {}
        refused: set[tuple[str, str]] = set()
        by_cap: dict[str, list[str]] = {}
        refreshed: list[registry.Advert] = []
        for ad, is_description in [(a, True) for a in described] + [(a, False) for a in active]:
            ident = (ad.kind, ad.device_key)
            known = self._known.get(ident)
            if known is None:
                if ident in new or ident in refused:
                    continue
                cap = self._admit(device, ad)
                if cap is None:
                    new[ident] = ad
                else:
                    refused.add(ident)
                    by_cap.setdefault(cap, []).append(ad.device_key)
                continue
            if not is_description:
                continue
            label, dtype, location, known_origin = known
            if known_origin and known_origin != origin:
                if ident not in self._warned_conflicts and len(self._warned_conflicts) < MAX_WARNED_CONFLICTS:
                    self._warned_conflicts.add(ident)
                    log.warning(
                        "%s %r already belongs to origin %r; ignoring its advert from %r",
                        ad.kind,
                        ad.device_key,
                        known_origin,
                        origin,
                    )
                health.count("heartbeat_filter.origin_conflict")
                continue
            if (label, dtype, location) != (ad.label, ad.device_type, ad.location):
                refreshed.append(ad)
        refused_inputs = {key for kind, key in refused if kind == "input"}
        for cap, keys in by_cap.items():
            self._refusals.refuse(device, cap, self._cap_limit(cap), keys)
        for ad in new.values():
            key = sys.intern(ad.device_key)  # kept, as registry.load_known's: msgpack finds it
            self._known[(ad.kind, key)] = (ad.label, ad.device_type, ad.location, origin)
            log.info(
                "new %s %r (%s) from %s, registered %s",
                ad.kind,
                ad.device_key,
                ad.device_type,
                origin,
                "disabled" if ad.kind == "input" else "enabled",
            )
        for ad in refreshed:
            key = sys.intern(ad.device_key)  # kept, as registry.load_known's: msgpack finds it
            self._known[(ad.kind, key)] = (ad.label, ad.device_type, ad.location, origin)
            self._change_log.info("%s %r changed its description", ad.kind, ad.device_key)
        return list(new.values()), refreshed, refused_inputs

    def _cap_limit(self, cap: str) -> int:
        return {
            limits.PER_DEVICE["input"]: self._caps.inputs_per_device,
            limits.PER_DEVICE["output"]: self._caps.outputs_per_device,
            limits.TOTAL["input"]: self._caps.inputs,
            limits.TOTAL["output"]: self._caps.outputs,
        }[cap]

    def _note_generation(
        self, origin: str, inbound: protocols.Inbound, described: list[registry.Advert], now: float
    ) -> list[str]:
        """Remember which generation the device speaks, for each output it advertised (§6.2).

        Only outputs registered to this origin are followed; a changed entry is written at once and
        handed to the AuditWriter and named in the envelope, so the processor answers the device in
        kind from its next trigger.
        Two devices advertising the same output key would flip it at every heartbeat: while the
        recorded device keeps confirming it (GENERATION_HOLD_SECONDS), another one is refused and counted.
        """
        if inbound.generation is None:
            return []
        seen = (inbound.generation, inbound.device)
        keys = []
        for ad in described:
            if ad.kind != "output" or not self._owned_by(ad.device_key, origin):
                continue
            stored = self._generations.get(ad.device_key)
            if stored == seen:
                self._confirmed[ad.device_key] = now
                continue
            held_by = stored[1] if stored is not None else None
            recent = now - self._confirmed.get(ad.device_key, float("-inf")) < GENERATION_HOLD_SECONDS
            if held_by not in (None, inbound.device) and recent:
                health.count("heartbeat_filter.generation_conflict")
                if ad.device_key not in self._warned_generation:
                    self._warned_generation.add(ad.device_key)
                    log.warning(
                        "output %r is advertised by devices %s and %s; keeping %s's until it falls silent",
                        ad.device_key,
                        held_by,
                        inbound.device,
                        held_by,
                    )
                continue
            keys.append(ad.device_key)
        for key in keys:
            if key in self._generations:
                log.info("output %r now speaks %s (device %s)", key, inbound.generation, inbound.device)
            self._generations[key] = seen
            self._confirmed[key] = now
        return keys

    def _owned_by(self, key: str, origin: str) -> bool:
        """Registered, and to this origin (or to none: rows of an original database have no origin)."""
        known = self._known.get(("output", key))
        return known is not None and known[3] in (None, origin)

    def _flush(self) -> None:
        """Hand the last-seen times heard since the last flush to the AuditWriter."""
        seen = self._presence.take_dirty()
        if seen:
            inproc.send(self._store, LastSeen(seen=seen))
