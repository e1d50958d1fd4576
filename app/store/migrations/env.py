"""Alembic environment: runs the migrations on the connection app.store.db hands over, or on the app's URL."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from app.store import db
from app.store.models import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=db.compare_type,
        # SQLite cannot ALTER most things; autogenerate must emit copy-and-move batch operations
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    # the migrations inspect the live schema (to adopt an original database in place), so they
    # cannot be rendered as a plain SQL script
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")

connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    # command-line use: configure logging from alembic.ini and connect like the application does
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = config.get_main_option("sqlalchemy.url")
    timeout = 30
    if not url:
        from app.core import settings

        loaded = settings.load()
        url, timeout = loaded.database_url, loaded.db_timeout
    engine = db.make_engine(url, timeout)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()
