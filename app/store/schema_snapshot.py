"""Write app/store/schema_head.sql: a new SQLite file migrated to head with Alembic, as sqlite3 dumps it."""

from __future__ import annotations

import sqlite3
import tempfile

from app.store import db
from app.store.early_migration import SNAPSHOT
from app.store.schema_head import HEAD_REVISION


def dump() -> str:
    """Migrate a new SQLite file to head and return its dump (what SNAPSHOT must hold)."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{tmp}/snapshot.db")
        try:
            db.upgrade(engine)
        finally:
            engine.dispose()
        conn = sqlite3.connect(f"{tmp}/snapshot.db")
        try:
            return "\n".join(conn.iterdump()) + "\n"
        finally:
            conn.close()


if __name__ == "__main__":
    # After adding a migration (and setting HEAD_REVISION): python -m app.store.schema_snapshot
    SNAPSHOT.write_text(dump(), encoding="utf-8")
    print(f"wrote {SNAPSHOT} at {HEAD_REVISION}")
