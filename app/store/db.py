"""Database engine, sessions and in-place schema migration (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from app.store import early_migration, schema_head

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.migration import MigrationContext

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_URL_VARIABLE = early_migration.URL_VARIABLE
# Knowing the newest revision lets a start-up on an up-to-date database skip importing Alembic,
# which costs ~0.3 s and ~10 MB on a Pi.
HEAD_REVISION = schema_head.HEAD_REVISION

# Enough idle connections for the hub's threads plus Flask's request threads without reconnecting;
# the overflow is bounded so a session leak shows up as a pool timeout rather than "too many open files".
_SQLITE_POOL_SIZE = 10
_SQLITE_MAX_OVERFLOW = 40


def _is_memory(database: str) -> bool:
    return database == ":memory:" or "mode=memory" in database


def make_engine(url: str, timeout: int = 30) -> Engine:
    """An engine for url; SQLite gets WAL, a busy timeout of `timeout` seconds and cross-thread use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        from app.store.models import add_postgresql_options  # the PostgreSQL dialect: only for its URLs

        add_postgresql_options()
        # pre-ping: a PostgreSQL restart would otherwise surface as one failed event per pooled connection
        return sa.create_engine(url, pool_pre_ping=True)

    database = parsed.database or ":memory:"
    memory = _is_memory(database)
    kwargs: dict[str, object] = {
        # pysqlite's own busy handler; the PRAGMA below sets the same value explicitly
        "connect_args": {"check_same_thread": False, "timeout": timeout},
    }
    if memory:
        # every connection to ":memory:" would be a different empty database: share one
        kwargs["poolclass"] = StaticPool
    else:
        # not expanduser(): SQLite opens the path literally, so the directory must be that one
        if not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.update(pool_size=_SQLITE_POOL_SIZE, max_overflow=_SQLITE_MAX_OVERFLOW, pool_timeout=timeout)
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may briefly hold
            cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            if not memory:
                # readers (Flask, the backup job) no longer block the event loop's writes, and vice versa
                cursor.execute("PRAGMA journal_mode=WAL")
                # in WAL mode NORMAL is still crash-safe for the database; only the last commits
                # before a power cut may be lost, and it avoids an fsync per event
                cursor.execute("PRAGMA synchronous=NORMAL")
            # SQLite's default page cache is 2 MB per connection, and a dozen threads each hold one;
            # the configuration database is tiny, so 512 KB keeps it all in memory on a Pi.
            cursor.execute("PRAGMA cache_size=-512")
            # foreign_keys stays off as in the original: existing databases may hold orphaned links
        finally:
            cursor.close()

    return engine


def _alembic_config(connection: sa.Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # env.py uses this connection, so no alembic.ini or URL is needed and the caller's engine
    # (with its pragmas) runs the migrations
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Migrate the database to the newest schema; a no-op when it is already there."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "head")


def upgrade_in_child(
    engine: Engine, url: str, timeout: float = 300.0, started: subprocess.Popen[str] | None = None
) -> None:
    """Migrate in a child process, so the long-running hub never imports Alembic.

    Alembic and its migration run leave ~12 MB behind in the process that ran them, which on a
    Raspberry Pi the hub would carry for years; a child takes that memory with it when it exits.
    `started` is a child already started by app.store.early_migration; it is waited for first.
    """
    if started is not None:
        _wait(started, timeout)
    if current_revision(engine) == HEAD_REVISION:
        return
    _wait(
        subprocess.Popen(
            [sys.executable, "-m", "app.store.db"],
            env=early_migration.child_env(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        timeout,
    )
    if current_revision(engine) != HEAD_REVISION:
        raise RuntimeError(f"database migration ended at {current_revision(engine)}, not {HEAD_REVISION}")


def _wait(child: subprocess.Popen[str], timeout: float) -> None:
    _, stderr = child.communicate(timeout=timeout)
    if child.returncode != 0:
        raise RuntimeError(f"database migration failed: {stderr.strip()[-2000:]}")


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database back to `revision` (for tests and manual recovery)."""
    from alembic import command

    with engine.begin() as connection:
        command.downgrade(_alembic_config(connection), revision)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects read in a session stay usable after commit in other threads' code
    return sessionmaker(bind=engine, expire_on_commit=False)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None if it was never migrated."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    # one row on a linear history; several would mean branches, which this project does not use
    return versions[0] if len(versions) == 1 else None


def compare_type(  # Alembic's compare_type hook; Any: columns and types of every kind come through it
    context: MigrationContext,
    inspected_column: sa.Column[Any],
    metadata_column: sa.Column[Any],
    inspected_type: sa.types.TypeEngine[Any],
    metadata_type: sa.types.TypeEngine[Any],
) -> bool | None:
    """Alembic type comparison that ignores VARCHAR length on SQLite.

    SQLite stores any length in a VARCHAR column (type affinity TEXT) and the migrations deliberately
    leave the original's VARCHAR(50) device_key alone there, so a length difference is not drift.
    Returns False for "same", None for "use Alembic's default comparison".
    """
    if (
        context.dialect.name == "sqlite"
        and isinstance(inspected_type, sa.String)
        and isinstance(metadata_type, sa.String)
        and not isinstance(inspected_type, sa.Text)
        and not isinstance(metadata_type, sa.Text)
    ):
        return False
    return None


def schema_differences(engine: Engine) -> list[Any]:  # Any: Alembic's diff entries vary in shape
    """Differences between the database and app.store.models (Alembic diff tuples); empty when in step."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.store.models import Base

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": compare_type})
        diffs = compare_metadata(context, Base.metadata)
    return [d for d in diffs if not (d[0] == "remove_table" and d[1].name == "alembic_version")]


if __name__ == "__main__":
    # The child of upgrade_in_child: migrate the database named in the environment, then exit.
    _engine = make_engine(os.environ[_URL_VARIABLE])
    try:
        upgrade(_engine)
    finally:
        _engine.dispose()
