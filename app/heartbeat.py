"""HeartbeatFilter: records last-seen, registers devices on first sight, then forwards to the processor."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import health, registry
from app.channels import HEARTBEAT_FILTER, PROCESSOR, Envelope
from app.presence import Presence
from pylib import inproc, threads

log = logging.getLogger(__name__)

FLUSH_SECONDS = 30.0


def adverts(data: dict[str, Any]) -> tuple[list[registry.Advert], list[registry.Advert], list[str]]:
    """The devices a message describes (device_info), the active inputs it reports, and any problems.

    Only descriptions refresh a registered device: active devices are often partial or spelled
    differently (snapshot-processor reports type 'camera' for its 'Camera'), so they only register
    a device never seen before.
    """
    described: list[registry.Advert] = []
    active: list[registry.Advert] = []
    problems: list[str] = []
    info = data.get("device_info")
    groups: list[tuple[str, Any, list[registry.Advert]]] = []
    if isinstance(info, dict):
        groups += [("input", info.get("inputs"), described), ("output", info.get("outputs"), described)]
    elif info is not None:
        problems.append(f"device_info is a {type(info).__name__}, not a map")
    # Dec 2023 clients also put inputs/outputs at the root of the body.
    groups += [
        ("input", data.get("inputs"), described),
        ("output", data.get("outputs"), described),
        ("input", data.get("active_devices"), active),
    ]
    for kind, devices, into in groups:
        if devices is None:
            continue
        if not isinstance(devices, list):
            problems.append(f"{kind} list is a {type(devices).__name__}")
            continue
        for device in devices:
            try:
                into.append(registry.advert(kind, device))
            except registry.BadDevice as exc:
                problems.append(str(exc))
    return described, active, problems


class HeartbeatFilter(threads.AppThread):
    def __init__(self, session_factory: sessionmaker[Session], presence: Presence) -> None:
        super().__init__("HeartbeatFilter")
        self._sessions = session_factory
        self._presence = presence
        self._known: dict[tuple[str, str], tuple[str | None, str, str | None, str | None]] = {}
        self._warned_conflicts: set[tuple[str, str]] = set()
        self._pull = inproc.bind_pull(HEARTBEAT_FILTER)

    def work(self) -> None:
        push = inproc.connect_push(PROCESSOR)
        with self._sessions() as session:
            self._known = registry.load_known(session)
        health.set_state("heartbeat_filter", "running")
        next_flush = time.monotonic() + FLUSH_SECONDS
        try:
            while not threads.shutting_down.is_set():
                frame = inproc.recv_frame(self._pull, 200)
                if frame is not None:
                    try:
                        msg = inproc.decode(frame)
                    except inproc.MessageError as exc:
                        log.warning("dropping undecodable frame: %s", exc)
                        continue
                    if isinstance(msg, Envelope):
                        self._handle(msg, frame, push)
                if time.monotonic() >= next_flush:
                    self._flush()
                    next_flush = time.monotonic() + FLUSH_SECONDS
        finally:
            self._flush()
            self._pull.close()
            push.close()

    def _handle(self, env: Envelope, frame: bytes, push: Any) -> None:
        data = env.payload.get("data") or {}
        described, active, problems = adverts(data)
        for problem in problems:
            health.count("heartbeat_filter.bad_device")
            log.warning(
                "bad device from %s (%s): %s", env.origin, env.routing_key or env.source, problem[:200]
            )
        self._presence.seen(env.origin, [ad.device_key for ad in described + active], env.received_at)
        try:
            env.changed_keys = self._register(env.origin, described, active)
        except SQLAlchemyError:
            # The processor can still act on devices already known; registration retries next time.
            health.count("heartbeat_filter.db_errors")
            log.exception("could not register devices from %s", env.origin)
        if env.changed_keys:
            inproc.send(push, env)
        elif data.get("active_devices"):
            push.send(frame)  # unchanged: pass the frame on as it came, no second encoding

    def _register(
        self, origin: str, described: list[registry.Advert], active: list[registry.Advert]
    ) -> list[str]:
        changed: list[str] = []
        new: dict[tuple[str, str], registry.Advert] = {}
        refreshed: list[registry.Advert] = []
        for ad, is_description in [(a, True) for a in described] + [(a, False) for a in active]:
            ident = (ad.kind, ad.device_key)
            known = self._known.get(ident)
            if known is None:
                new.setdefault(ident, ad)
                continue
            if not is_description:
                continue
            label, dtype, location, known_origin = known
            if known_origin and known_origin != origin:
                if ident not in self._warned_conflicts:
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
        if not new and not refreshed:
            return changed
        try:
            with self._sessions() as session:
                for ad in new.values():
                    registry.insert(session, ad, origin)
                for ad in refreshed:
                    registry.refresh(session, ad)
                session.commit()
        except IntegrityError:
            # Someone else registered one of these keys; learn the table again and move on.
            with self._sessions() as session:
                self._known = registry.load_known(session)
            return [ad.device_key for ad in new.values()]
        for ad in new.values():
            self._known[(ad.kind, ad.device_key)] = (ad.label, ad.device_type, ad.location, origin)
            changed.append(ad.device_key)
            log.info(
                "new %s %r (%s) from %s, registered %s",
                ad.kind,
                ad.device_key,
                ad.device_type,
                origin,
                "disabled" if ad.kind == "input" else "enabled",
            )
        for ad in refreshed:
            self._known[(ad.kind, ad.device_key)] = (ad.label, ad.device_type, ad.location, origin)
            changed.append(ad.device_key)
            log.info("%s %r changed its description", ad.kind, ad.device_key)
        return changed

    def _flush(self) -> None:
        seen = self._presence.take_dirty()
        if not seen:
            return
        try:
            with self._sessions() as session:
                registry.flush_last_seen(session, seen)
        except SQLAlchemyError:
            log.exception("could not store last-seen times")
