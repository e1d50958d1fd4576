"""Device registration in SQLite: rows for devices seen for the first time, and the built-in devices."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.store.models import InputConfig, MeterConfig, OutputConfig

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 100
PANIC_BUTTON = "App Panic Button"
DASH_BUTTON = "App Dash Button"
SMS_OUTPUT = "SMS"
SMS_TYPE = "sms"  # the output type the Telegram notifier serves


@dataclass(frozen=True)
class Advert:
    """A device as a source describes it, reduced to what the configuration tables keep."""

    kind: str  # "input" or "output"
    device_key: str
    label: str
    device_type: str
    location: str | None


class BadDevice(ValueError):
    pass


def _text(device: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = device.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_KEY_LENGTH]
    return None


def advert(kind: str, device: Any) -> Advert:
    """Validate one device dict from device_info or active_devices; raises BadDevice."""
    if not isinstance(device, dict):
        raise BadDevice(f"device is a {type(device).__name__}, not a map")
    key = device.get("device_key")
    if not isinstance(key, str) or not key.strip():
        raise BadDevice("device has no device_key string")
    key = key.strip()
    if len(key) > MAX_KEY_LENGTH:
        raise BadDevice(f"device_key is longer than {MAX_KEY_LENGTH} characters")
    return Advert(
        kind=kind,
        device_key=key,
        label=_text(device, "device_label") or key,
        device_type=_text(device, "type", "device_type") or "unknown",
        location=_text(device, "location", "device_location", "input_location"),
    )


def _model(kind: str) -> type[InputConfig] | type[OutputConfig]:
    return InputConfig if kind == "input" else OutputConfig


def load_known(session: Session) -> dict[tuple[str, str], tuple[str | None, str, str | None, str | None]]:
    """(kind, key) -> (label, type, location, origin) for every registered device."""
    known = {}
    for kind in ("input", "output"):
        model = _model(kind)
        rows = session.execute(
            select(model.device_key, model.device_label, model.device_type, model.location, model.origin)
        )
        for key, label, dtype, location, origin in rows:
            # Interned and kept: msgpack interns every map key it decodes, and a device payload's
            # `samples` map is keyed by these. With the key held here each decode finds it, instead
            # of adding and dropping an entry in CPython's interned-strings dict per message (its
            # dummies made the dict resize in a burst: docs/performance.md, session 5).
            known[(kind, sys.intern(key))] = (label, dtype, location, origin)
    return known


def load_generations(session: Session) -> dict[str, tuple[str | None, str | None]]:
    """Output key -> (generation, device name) as last detected (app/protocols)."""
    rows = session.execute(
        select(OutputConfig.device_key, OutputConfig.generation, OutputConfig.generation_device)
    )
    return {key: (generation, device) for key, generation, device in rows}


def set_generation(session: Session, keys: list[str], generation: str, device: str) -> None:
    """Record the generation an output's device was heard speaking (a person's override is separate)."""
    session.execute(
        update(OutputConfig)
        .where(OutputConfig.device_key.in_(keys))
        .values(generation=generation, generation_device=device[:MAX_KEY_LENGTH])
    )


def insert(session: Session, ad: Advert, origin: str) -> None:
    """A new device: inputs start disabled (a new device never fires until a person enables it)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    common = dict(
        device_key=ad.device_key,
        device_type=ad.device_type,
        device_label=ad.label,
        location=ad.location,
        origin=origin,
        created_at=now,
        last_seen=now,
    )
    if ad.kind == "input":
        row = InputConfig(**common, device_enabled=False)
        if is_meter(ad.device_type):
            row.meter = new_meter_config()
        session.add(row)
    else:
        session.add(OutputConfig(**common, device_enabled=True))


def refresh(session: Session, ad: Advert) -> None:
    """Follow a device's own label, type and location changes; a label a person set is kept."""
    model = _model(ad.kind)
    session.execute(
        update(model)
        .where(model.device_key == ad.device_key)
        .values(device_type=ad.device_type, location=ad.location)
    )
    session.execute(
        update(model)
        .where(
            model.device_key == ad.device_key,
            or_(model.label_customized.is_(None), model.label_customized.is_(False)),
        )
        .values(device_label=ad.label)
    )


def is_meter(device_type: str | None) -> bool:
    return device_type is not None and "meter" in device_type.lower()


def new_meter_config() -> MeterConfig:
    """A meter's settings row, created with its input so a reading never finds it missing."""
    return MeterConfig(meter_value=0, register_value=0, meter_reading="unset", meter_iot_topic="")


def ensure_builtin(session: Session, device_name: str) -> None:
    """The hub's own devices (original §4.2): panic and dash buttons, and the SMS notifier output."""
    builtin = [
        Advert("input", PANIC_BUTTON, "Panic Button", "Panic Button", None),
        Advert("input", DASH_BUTTON, "Dash Button", "Dash Button", None),
        Advert("output", SMS_OUTPUT, "SMS", SMS_TYPE, None),
    ]
    for ad in builtin:
        model = _model(ad.kind)
        if session.scalar(select(model.id).where(model.device_key == ad.device_key)) is None:
            insert(session, ad, device_name)
            log.info("registered built-in %s %r", ad.kind, ad.device_key)
    session.commit()


def flush_last_seen(session: Session, seen: dict[str, float]) -> None:
    """Persist last-seen times (kept in memory between flushes so heartbeats cost no write each)."""
    for key, when in seen.items():
        stamp = datetime.fromtimestamp(when, UTC).replace(tzinfo=None)
        for model in (InputConfig, OutputConfig):
            session.execute(update(model).where(model.device_key == key).values(last_seen=stamp))
    session.commit()
