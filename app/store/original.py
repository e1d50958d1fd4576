"""What the hub knows about a database adopted from the original app (the marker migration 0001 writes)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import GeneralConfig

# Written by app/store/migrations/versions/0001_original_schema.py when it adopts the original's file.
MARKER_KEY = "original-database-adopted"


def adopted_at(session: Session) -> str | None:
    """When this database was adopted from the original (UTC, ISO 8601), or None for the hub's own."""
    stmt = select(GeneralConfig.config_value).where(GeneralConfig.config_key == MARKER_KEY)
    return session.scalars(stmt.order_by(GeneralConfig.id)).first()


def is_adopted(session: Session) -> bool:
    return adopted_at(session) is not None


def influx_layout(setting: str, session: Session) -> str:
    """INFLUXDB_LAYOUT resolved: auto is the original's layout on an adopted database, else the hub's."""
    if setting != "auto":
        return setting
    return "original" if is_adopted(session) else "new"
