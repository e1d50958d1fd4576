"""The event path's writes other than decisions, as the AuditWriter stores them: registrations, readings.

The HeartbeatFilter and the EventProcessor decide from memory and hand these over (app.core.channels:
Registration, MeterReading, LastSeen); nothing here runs on the path from a device message to its
control message. Each function works in the caller's session and leaves the commit to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.channels import MeterReading, Registration
from app.store import registry
from app.store.models import InputConfig, MeterConfig, MeterHistory, OutputConfig

log = logging.getLogger(__name__)


def advert(row: list[Any]) -> registry.Advert:
    """An Advert from its [kind, key, label, type, location] form on an inproc socket."""
    kind, key, label, device_type, location = row
    return registry.Advert(kind, key, label, device_type, location)


def advert_row(ad: registry.Advert) -> list[Any]:
    return [ad.kind, ad.device_key, ad.label, ad.device_type, ad.location]


def register(session: Session, reg: Registration) -> list[str]:
    """Insert the new devices (a key someone else registered meanwhile is left as it is), follow the
    changed descriptions and generations; returns every key it touched."""
    touched: list[str] = []
    for kind, model in (("input", InputConfig), ("output", OutputConfig)):
        wanted = [advert(row) for row in reg.new if row[0] == kind]
        if not wanted:
            continue
        keys = [ad.device_key for ad in wanted]
        existing = set(session.scalars(select(model.device_key).where(model.device_key.in_(keys))))
        for ad in wanted:
            if ad.device_key not in existing:
                registry.insert(session, ad, reg.origin)
                existing.add(ad.device_key)
            touched.append(ad.device_key)
    for row in reg.refreshed:
        ad = advert(row)
        registry.refresh(session, ad)
        touched.append(ad.device_key)
    by_generation: dict[tuple[str, str], list[str]] = {}
    for key, generation, device in reg.generations:
        by_generation.setdefault((generation, device), []).append(key)
    for (generation, device), keys in by_generation.items():
        registry.set_generation(session, keys, generation, device)
        touched.extend(keys)
    session.flush()  # a later registration or reading in this transaction finds these rows
    return touched


def input_ids(session: Session, keys: Iterable[str]) -> dict[str, int]:
    """Input key -> row id, for records made while the input's registration was on its way."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    query = select(InputConfig.device_key, InputConfig.id).where(InputConfig.device_key.in_(wanted))
    rows = session.execute(query)
    return {key: ident for key, ident in rows}


def meter_readings(session: Session, readings: list[MeterReading]) -> int:
    """Store each reading in meter_config (created when missing) and meter_history; returns how many
    were dropped because their input is not in the database (never registered)."""
    ids = input_ids(session, [r.input_key for r in readings if r.input_id < 0])
    dropped = 0
    for r in readings:
        input_id = r.input_id if r.input_id >= 0 else ids.get(r.input_key)
        if input_id is None:
            dropped += 1
            continue
        result = session.execute(
            update(MeterConfig).where(MeterConfig.input_device_id == input_id).values(**r.values)
        )
        changed = getattr(result, "rowcount", 0)  # an UPDATE's CursorResult
        if not changed:
            # a meter input without a meter_config row (e.g. from an original database) gets one
            row = registry.new_meter_config()
            row.input_device_id = input_id
            for name, value in r.values.items():
                setattr(row, name, value)
            session.add(row)
            session.flush()
            log.info("created meter settings for input %d", input_id)
        session.add(
            MeterHistory(
                input_device_id=input_id,
                timestamp=datetime.fromtimestamp(r.timestamp, UTC).replace(tzinfo=None),
                register_value=r.values.get("register_value"),
                meter_value=r.values.get("meter_value"),
                reading=r.reading,
            )
        )
    return dropped


@contextlib.contextmanager
def briefly_waiting(sessions: sessionmaker[Session], seconds: float) -> Iterator[Session]:
    """A session whose SQLite connection waits at most `seconds` for another's lock.

    The writer must come back to its queue while another process holds the file (a sqlite3 shell
    in a transaction, a VACUUM): held in memory, the writes are retried later, and the queue never
    fills up behind a 30 s busy timeout (a full queue would stall the threads that feed it).
    """
    with sessions() as session:
        raw = None
        if session.get_bind().dialect.name == "sqlite":
            raw = session.connection().connection.driver_connection
            if raw is not None:
                usual = raw.execute("PRAGMA busy_timeout").fetchone()[0]
                raw.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
        try:
            yield session
        finally:
            if raw is not None:
                # still this session's connection (the pool gets it back when the session closes)
                raw.execute(f"PRAGMA busy_timeout={int(usual)}")
