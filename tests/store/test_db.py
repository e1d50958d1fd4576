"""Tests for app.store.db: pragmas, migrations (fresh, repeated, original file in place), PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from app import protocols
from app.engine.config_snapshot import load_snapshot
from app.store import db
from app.store.models import (
    ApiToken,
    Base,
    ConfigChange,
    Decision,
    DecisionOutput,
    EventLog,
    GeneralConfig,
    Heartbeat,
    HubNode,
    InputConfig,
    InputLink,
    MeterConfig,
    MeterHistory,
    OutputConfig,
    OutputLink,
    RuleState,
    User,
    WebSession,
)

ORIGINAL_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "original_db_schema.sql"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ORIGINAL_TABLES = (
    "general_config",
    "event_log",
    "input_config",
    "output_config",
    "input_link",
    "output_link",
    "meter_config",
)
HEAD = ScriptDirectory(str(db.MIGRATIONS_DIR)).get_current_head()
_RUN = uuid.uuid4().hex[:8]
_pg_counter = iter(range(1_000_000))


@contextmanager
def temporary_pg_database() -> Iterator[str]:
    """A new, uniquely named PostgreSQL database (SQLAlchemy URL), dropped afterwards.

    Fails (never skips) when the server is unreachable: the PostgreSQL support must be tested.
    """
    name = f"ep_test_{_RUN}_{next(_pg_counter)}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is unreachable: {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    """make_engine that disposes every engine it made at the end of the test."""
    made: list[Engine] = []

    def make(url: str, timeout: int = 30) -> Engine:
        engine = db.make_engine(url, timeout)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with temporary_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        with temporary_pg_database() as url:
            yield url


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# -- SQLite engine ---------------------------------------------------------------------------------


def test_sqlite_file_engine_creates_parent_directory(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    path = tmp_path / "nested" / "deeper" / "hub.db"
    engine = engines(sqlite_url(path))
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert path.is_file()


def test_every_sqlite_connection_has_wal_busy_timeout_and_normal_sync(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    engine = engines(sqlite_url(tmp_path / "hub.db"), timeout=7)
    seen: list[tuple[Any, ...]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def check() -> None:
        try:
            with engine.connect() as conn:
                # hold the connection until all threads have one, so each uses its own
                barrier.wait(timeout=10)
                seen.append(
                    (
                        conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                        conn.exec_driver_sql("PRAGMA busy_timeout").scalar(),
                        conn.exec_driver_sql("PRAGMA synchronous").scalar(),
                    )
                )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=check) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=20)
    assert not errors
    # synchronous NORMAL is 1
    assert seen == [("wal", 7000, 1)] * 4
    assert engine.pool.checkedin() >= 4


def test_writer_waits_for_lock_and_readers_are_not_blocked(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    engine = engines(sqlite_url(tmp_path / "hub.db"), timeout=10)
    db.upgrade(engine)
    factory = db.session_factory(engine)
    locked = threading.Event()
    results: dict[str, Any] = {}

    def hold_write_lock() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("INSERT INTO general_config (config_key, config_value) VALUES ('a', '1')")
            locked.set()
            time.sleep(1.0)
            conn.commit()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    assert locked.wait(5)
    # WAL: a read proceeds while the write transaction is open, and does not see it yet
    with factory() as session:
        results["read"] = session.scalar(select(sa.func.count()).select_from(GeneralConfig))
    started = time.monotonic()
    # the second writer waits in busy_timeout instead of failing with "database is locked"
    with factory() as session, session.begin():
        session.add(GeneralConfig(config_key="b", config_value="2"))
    waited = time.monotonic() - started
    holder.join(timeout=10)
    assert results["read"] == 0
    assert waited > 0.3
    with factory() as session:
        assert sorted(session.scalars(select(GeneralConfig.config_key))) == ["a", "b"]


def test_memory_sqlite_is_shared_between_threads(engines: Callable[..., Engine]) -> None:
    engine = engines("sqlite://")
    db.upgrade(engine)
    found: list[str | None] = []
    worker = threading.Thread(target=lambda: found.append(db.current_revision(engine)))
    worker.start()
    worker.join(timeout=10)
    assert found == [HEAD]


def test_postgres_url_gets_a_plain_pre_pinging_engine(engines: Callable[..., Engine]) -> None:
    # no connection is made: this only checks the engine's configuration
    engine = engines("postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    assert engine.dialect.name == "postgresql"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]


# -- migrations on SQLite --------------------------------------------------------------------------


def test_fresh_sqlite_migrates_to_head_and_matches_models(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    engine = engines(sqlite_url(tmp_path / "hub.db"))
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == HEAD == "0011_event_keyset"
    assert db.schema_differences(engine) == []


def test_sqlite_differences_ignored_are_only_varchar_lengths(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    """Pins what db.compare_type hides: exactly the original's device_key VARCHAR(50), kept on SQLite."""
    engine = engines(sqlite_url(tmp_path / "hub.db"))
    db.upgrade(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    flat = [d for group in diffs for d in (group if isinstance(group, list) else [group])]
    assert sorted((d[0], d[2], d[3], str(d[5]), str(d[6])) for d in flat) == [
        ("modify_type", "input_config", "device_key", "VARCHAR(50)", "VARCHAR(100)"),
        ("modify_type", "output_config", "device_key", "VARCHAR(50)", "VARCHAR(100)"),
    ]


def test_upgrade_is_idempotent(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    path = tmp_path / "hub.db"
    engine = engines(sqlite_url(path))
    db.upgrade(engine)
    with db.session_factory(engine)() as session, session.begin():
        session.add(InputConfig(device_key="pir1", device_type="Motion"))
    db.upgrade(engine)
    # as on a restart: a new engine on the same file
    again = engines(sqlite_url(path))
    db.upgrade(again)
    assert db.current_revision(again) == HEAD
    assert db.schema_differences(again) == []
    with db.session_factory(again)() as session:
        assert session.scalars(select(InputConfig.device_key)).all() == ["pir1"]


def test_database_made_by_create_all_is_adopted(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    engine = engines(sqlite_url(tmp_path / "hub.db"))
    Base.metadata.create_all(engine)
    db.upgrade(engine)
    assert db.current_revision(engine) == HEAD
    assert db.schema_differences(engine) == []


def test_downgrade_to_original_and_back(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    engine = engines(sqlite_url(tmp_path / "hub.db"))
    db.upgrade(engine)
    with db.session_factory(engine)() as session, session.begin():
        session.add(OutputConfig(device_key="siren", device_type="ioboard", device_enabled=False))
    db.downgrade(engine, "0001_original_schema")
    assert db.current_revision(engine) == "0001_original_schema"
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("decision")
        columns = {c["name"] for c in sa.inspect(conn).get_columns("output_config")}
    assert columns == {"id", "device_key", "device_type", "device_label", "device_params"}
    db.upgrade(engine)
    assert db.schema_differences(engine) == []
    with db.session_factory(engine)() as session:
        output = session.scalars(select(OutputConfig)).one()
    assert (output.device_key, output.device_enabled) == ("siren", None)


# -- an original database, upgraded in place -------------------------------------------------------

# Values as the original (Flask-SQLAlchemy on SQLite) stored them: booleans 0/1/NULL, datetimes as
# "YYYY-MM-DD HH:MM:SS.ffffff" text.
ORIGINAL_ROWS: dict[str, list[tuple[Any, ...]]] = {
    "general_config": [(1, "auto_scheduler", "true"), (2, "other", "x" * 500)],
    "event_log": [
        (1, "Front Door", "Hall Camera", "2023-05-01 07:30:00.123456"),
        (2, "Garage PIR", None, "2023-05-02 23:59:59.000000"),
        (3, None, None, None),
    ],
    "input_config": [
        (1, "front-door", "Contact", "Front Door", 1, 60, 1, "22:00", "06:30", 1, 0, "perimeter", 1),
        (2, "garage-pir", "Motion", None, None, None, None, None, None, None, None, None, None),
        (3, "pulse-meter", "Meter", "Electricity", 0, 0, 0, None, None, 1, 1, "meters", 0),
    ],
    "output_config": [
        (1, "hall-cam", "Camera", "Hall Camera", '{"snapshot": true}'),
        (2, "siren", "ioboard", None, None),
    ],
    "input_link": [(1, 1, 2), (2, 2, 1)],
    "output_link": [(1, 1, 1), (2, 1, 2), (3, 2, 1)],
    "meter_config": [
        (1, 3, 12345, 7, "123.45", "meter/electricity", 0, 99999, 0, 1, "kWh", 100, 2),
        (2, 2, 0, 0, "0", "", None, None, None, None, None, None, None),
    ],
}
NEW_COLUMNS = {
    "input_config": (
        "location",
        "origin",
        "label_customized",
        "multi_trigger_rate",
        "multi_trigger_interval",
        "last_seen",
        "created_at",
    ),
    "output_config": (
        "device_enabled",
        "trigger_topic",
        "trigger_interval",
        "location",
        "origin",
        "label_customized",
        "last_seen",
        "created_at",
        "generation",
        "generation_device",
        "generation_override",
    ),
    "event_log": ("decision_id",),
}


# Values migration 0007 converts so they keep their meaning (tests/test_original_meaning.py checks
# them); every other original value stays byte for byte as it was.
CONVERTED = {"meter_config": ("meter_low_limit", "meter_high_limit")}
ADOPTED_MARKER = "original-database-adopted"


def kept_rows(path: Path, table: str, columns: str) -> list[tuple[Any, ...]]:
    """The rows of an original table without the converted columns and without the adoption marker."""
    names = [c.strip() for c in columns.split(",") if c.strip() not in CONVERTED.get(table, ())]
    rows = read_rows(path, table, ", ".join(names))
    if table == "general_config":
        rows = [row for row in rows if ADOPTED_MARKER not in row]
    return rows


def make_original_database(path: Path) -> None:
    """A database file as the original app left it: its schema, rows in every table, no alembic_version."""
    with sqlite3.connect(path) as conn:
        conn.executescript(ORIGINAL_SCHEMA.read_text())
        for table, rows in ORIGINAL_ROWS.items():
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    conn.close()


def read_rows(path: Path, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()
    conn.close()
    return rows


def original_columns(path: Path, table: str) -> str:
    with sqlite3.connect(path) as conn:
        names = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    conn.close()
    return ", ".join(names)


def test_original_database_upgrades_in_place(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    path = tmp_path / "event_processor.db"
    make_original_database(path)
    assert {t: read_rows(path, t) for t in ORIGINAL_TABLES} == ORIGINAL_ROWS
    before = {
        t: (original_columns(path, t), kept_rows(path, t, original_columns(path, t))) for t in ORIGINAL_TABLES
    }

    engine = engines(sqlite_url(path))
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    assert db.current_revision(engine) == HEAD
    assert db.schema_differences(engine) == []

    # every original row and value, byte for byte as stored (but those 0007 converts), and the marker
    for table, (columns, rows) in before.items():
        assert kept_rows(path, table, columns) == rows, table
    assert [row[1] for row in read_rows(path, "general_config")].count(ADOPTED_MARKER) == 1
    for table, new in NEW_COLUMNS.items():
        assert all(value is None for row in read_rows(path, table, ", ".join(new)) for value in row), table

    # the ORM reads the adopted rows, relationships included
    with db.session_factory(engine)() as session:
        door = session.scalars(select(InputConfig).where(InputConfig.device_key == "front-door")).one()
        assert (door.device_label, door.customized, door.multi_trigger, door.location) == (
            "Front Door",
            True,
            False,
            None,
        )
        assert sorted(link.output.device_key for link in door.output_links) == ["hall-cam", "siren"]
        meter = session.scalars(select(MeterConfig).where(MeterConfig.id == 1)).one()
        assert (meter.input.device_key, meter.meter_reading, meter.meter_reset_additive) == (
            "pulse-meter",
            "123.45",
            True,
        )
        event = session.get(EventLog, 1)
        assert event is not None
        assert event.timestamp == datetime(2023, 5, 1, 7, 30, 0, 123456)

    # the renamed output_link constraint still rejects a duplicate link
    with pytest.raises(IntegrityError), db.session_factory(engine)() as session, session.begin():
        session.add(OutputLink(input_device_id=1, output_device_id=1))

    # and a second start changes nothing
    db.upgrade(engines(sqlite_url(path)))
    for table, (columns, rows) in before.items():
        assert kept_rows(path, table, columns) == rows, table
    assert [row[1] for row in read_rows(path, "general_config")].count(ADOPTED_MARKER) == 1


def test_original_database_without_later_tables_gets_them(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    """Older original files predate general_config and meter_config; 0001 creates only those."""
    path = tmp_path / "old.db"
    make_original_database(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE meter_config")
        conn.execute("DROP TABLE general_config")
    conn.close()
    columns = original_columns(path, "input_config")
    rows = read_rows(path, "input_config", columns)
    engine = engines(sqlite_url(path))
    db.upgrade(engine)
    assert db.schema_differences(engine) == []
    assert read_rows(path, "input_config", columns) == rows
    assert read_rows(path, "meter_config") == []
    # created by 0001 for this adoption, holding only its marker
    assert [row[1] for row in read_rows(path, "general_config")] == [ADOPTED_MARKER]


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_migrates_to_head_and_matches_models(pg_url: str, engines: Callable[..., Engine]) -> None:
    engine = engines(pg_url)
    assert db.current_revision(engine) is None
    db.upgrade(engine)
    db.upgrade(engine)
    assert db.current_revision(engine) == HEAD
    assert db.schema_differences(engine) == []
    # the plain Alembic comparison too: on PostgreSQL nothing needs ignoring (device_key was widened)
    with engine.connect() as conn:
        assert (
            compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            == []
        )
    db.downgrade(engine, "0001_original_schema")
    assert db.schema_differences(engine) != []
    db.upgrade(engine)
    assert db.schema_differences(engine) == []


def _one_of_each(stamp: datetime) -> list[Any]:
    long_key = "k" * 100  # beyond the original's VARCHAR(50): must fit after 0002
    door = InputConfig(
        device_key=long_key,
        device_type="Contact",
        device_label="Front Door",
        customized=True,
        activation_interval=60,
        auto_schedule=True,
        auto_schedule_enable="22:00",
        auto_schedule_disable="06:30",
        device_enabled=True,
        multi_trigger=False,
        group_name="perimeter",
        info_notify=False,
        location="hall",
        origin="pi-1",
        label_customized=True,
        multi_trigger_rate=3,
        multi_trigger_interval=20,
        last_seen=stamp,
        created_at=stamp,
    )
    pir = InputConfig(device_key="pir", device_type="Motion")
    cam = OutputConfig(
        device_key="cam",
        device_type="Camera",
        device_label="Hall Camera",
        device_params='{"a": 1}',
        device_enabled=False,
        trigger_topic="cam/trigger",
        trigger_interval=30,
        location="hall",
        origin="pi-2",
        label_customized=False,
        last_seen=stamp,
        created_at=stamp,
    )
    door.input_links.append(InputLink(linked_device_id=2))
    door.output_links.append(OutputLink(output=cam))
    door.meter = MeterConfig(
        meter_value=5,
        register_value=6,
        meter_reading="0.05",
        meter_iot_topic="meter/x",
        meter_low_limit=1,
        meter_high_limit=9,
        meter_reset_value=0,
        meter_reset_additive=True,
        meter_reading_unit="kWh",
        meter_reading_unit_factor=100,
        meter_reading_unit_precision=2,
    )
    decision = Decision(
        timestamp=stamp,
        input_device_id=1,
        input_key=long_key,
        input_label="Front Door",
        origin="pi-1",
        event_detail="opened",
        fired=True,
        reason=None,
        detail="ok",
    )
    decision.outputs.append(
        DecisionOutput(
            output_device_id=1, output_key="cam", output_label="Hall Camera", fired=False, reason="disabled"
        )
    )
    user = User(
        username="admin", password_hash="scrypt:32768:8:1$salt$hash", created_at=stamp, failed_logins=0
    )
    return [
        GeneralConfig(config_key="auto_scheduler", config_value="true"),
        door,
        pir,
        cam,
        *door.input_links,
        *door.output_links,
        door.meter,
        decision,
        *decision.outputs,
        EventLog(input_device="Front Door", output_device="Hall Camera", timestamp=stamp, decision_id=1),
        user,
        ApiToken(
            user=user,
            name="backup script",
            token_hash="ab" * 32,
            prefix="ep_abcd",
            created_at=stamp,
            role="read",
        ),
        WebSession(user=user, key_hash="cd" * 32, created_at=stamp, address="2001:db8::1"),
        MeterHistory(input_device_id=1, timestamp=stamp, register_value=50, meter_value=3, reading=0.05),
        RuleState(state_key="latch:1", state_value='{"last_fired": 1.5}', updated=stamp),
        Heartbeat(dt=stamp, ts=1700000000.5),
        ConfigChange(
            timestamp=stamp,
            actor="token:admin/" + "n" * 100,
            action="update_input",
            target_kind="input",
            target_id=1,
            target_key=long_key,
            summary="input: activation_interval None -> 30",
            before='{"activation_interval": null}',
            after='{"activation_interval": 30}',
        ),
        HubNode(
            node_name="pi-kitchen", role="active", role_since=stamp, seen=stamp, url="http://pi-kitchen:8080/"
        ),
    ]


def _values(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in sa.inspect(type(obj)).columns}


def test_round_trip_of_each_model(any_url: str, engines: Callable[..., Engine]) -> None:
    engine = engines(any_url)
    db.upgrade(engine)
    factory = db.session_factory(engine)
    stamp = datetime(2024, 2, 29, 23, 59, 58, 123456)
    objects = _one_of_each(stamp)
    with factory() as session, session.begin():
        session.add_all(objects)
    written = {(type(obj), obj.id): _values(obj) for obj in objects}
    with factory() as session:
        read = {
            (model, obj.id): _values(obj)
            for model in {type(o) for o in objects}
            for obj in session.scalars(select(model))
        }
        door = session.scalars(select(InputConfig).where(InputConfig.device_key == "k" * 100)).one()
        assert door.meter is not None and door.meter.meter_reading == "0.05"
        assert [link.output.device_key for link in door.output_links] == ["cam"]
        decision = session.scalars(select(Decision)).one()
        assert [o.reason for o in decision.outputs] == ["disabled"]
    # every model has a row, and every column reads back as written (datetimes to the microsecond)
    assert {model for model, _ in read} == {mapper.class_ for mapper in Base.registry.mappers}
    assert read == written


def test_head_revision_constant_matches_the_migrations() -> None:
    # db.HEAD_REVISION lets start-up skip Alembic; it must name the newest migration.
    assert db.HEAD_REVISION == HEAD


def test_upgrade_in_child_migrates_without_importing_alembic_here(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    url = sqlite_url(tmp_path / "child.db")
    engine = engines(url)
    db.upgrade_in_child(engine, url)
    assert db.current_revision(engine) == HEAD
    assert db.schema_differences(engine) == []
    db.upgrade_in_child(engine, url)  # already current: no child at all


def test_upgrade_in_child_reports_a_failed_migration(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    bad = tmp_path / "not-a-database.db"
    bad.write_bytes(b"this is not SQLite" * 100)
    url = sqlite_url(bad)
    with pytest.raises(Exception, match="not a database|migration failed"):
        db.upgrade_in_child(engines(url), url)


def test_early_migration_child_runs_only_when_needed(tmp_path: Path, engines: Callable[..., Engine]) -> None:
    from app.store import early_migration

    path = tmp_path / "early.db"
    url = sqlite_url(path)
    path.touch()  # exists, so not made from the snapshot: an empty database the child migrates
    assert not early_migration.sqlite_at_head(str(path))
    child = early_migration.start(url)
    assert child is not None
    engine = engines(url)
    db.upgrade_in_child(engine, url, started=child)
    assert db.current_revision(engine) == HEAD and child.returncode == 0
    assert early_migration.sqlite_at_head(str(path))
    assert early_migration.start(url) is None  # current: no child at all
    assert early_migration.start("sqlite://") is None  # in memory: nothing to migrate ahead


def _schema_and_rows(path: Path) -> tuple[list[tuple[Any, ...]], dict[str, list[tuple[Any, ...]]], list[Any]]:
    """A SQLite file's tables, indexes, rows and header pragmas, to compare two files by content."""
    conn = sqlite3.connect(path)
    try:
        # Each CREATE statement's lines as a set: SQLAlchemy emits a table's constraints in an order
        # that changes between processes (set iteration), which SQLite keeps in the stored text.
        schema = [
            (kind, name, table, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, table, sql in conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master"
                " WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        tables = [name for kind, name, _, _ in schema if kind == "table"]
        rows = {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
        pragmas = [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("user_version", "application_id")]
    finally:
        conn.close()
    return schema, rows, pragmas


def test_schema_snapshot_is_what_the_migrations_make(
    tmp_path: Path, engines: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """app/store/schema_head.sql is rewritten (python -m app.store.schema_snapshot) by each new migration."""
    from app.store import early_migration, schema_snapshot

    migrated = tmp_path / "migrated.db"
    db.upgrade(engines(sqlite_url(migrated)))
    made = tmp_path / "made.db"
    assert early_migration.create_from_snapshot(str(made))
    assert early_migration.snapshot_revision(early_migration.SNAPSHOT.read_text()) == HEAD
    # same tables, columns, indexes and constraints (the very CREATE text), same rows, same pragmas
    assert _schema_and_rows(made) == _schema_and_rows(migrated)
    assert db.schema_differences(engines(sqlite_url(made))) == []
    # and what `python -m app.store.schema_snapshot` would write makes the same database
    rewritten = tmp_path / "schema_head.sql"
    rewritten.write_text(schema_snapshot.dump())
    monkeypatch.setattr(early_migration, "SNAPSHOT", rewritten)
    assert early_migration.create_from_snapshot(str(tmp_path / "remade.db"))
    assert _schema_and_rows(tmp_path / "remade.db") == _schema_and_rows(migrated)


def test_a_new_sqlite_file_is_made_from_the_snapshot_without_a_child(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    from app.store import early_migration

    path = tmp_path / "data" / "event_processor.db"  # its directory does not exist yet either
    url = sqlite_url(path)
    assert early_migration.start(url) is None  # no migration child
    engine = engines(url)
    assert db.current_revision(engine) == HEAD
    db.upgrade_in_child(engine, url)  # current: nothing to do
    assert db.schema_differences(engine) == []
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".new")]  # no temp file left
    # an existing file is never replaced, even by a snapshot that could be made
    assert not early_migration.create_from_snapshot(str(path))
    assert db.current_revision(engine) == HEAD


def test_a_stale_snapshot_falls_back_to_the_migration_child(
    tmp_path: Path, engines: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.store import early_migration

    stale = tmp_path / "schema_head.sql"
    stale.write_text(early_migration.SNAPSHOT.read_text().replace(HEAD, "0001_an_older_one"))
    monkeypatch.setattr(early_migration, "SNAPSHOT", stale)
    path = tmp_path / "event_processor.db"
    url = sqlite_url(path)
    assert not early_migration.create_from_snapshot(str(path))
    assert not path.exists()
    child = early_migration.start(url)
    assert child is not None
    engine = engines(url)
    db.upgrade_in_child(engine, url, started=child)
    assert db.current_revision(engine) == HEAD and db.schema_differences(engine) == []


def test_outputs_of_an_original_database_keep_getting_the_control_message(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    """0009 adds no generation to old rows: they are answered as before, in the G1 format, until heard."""
    path = tmp_path / "event_processor.db"
    make_original_database(path)
    engine = engines(sqlite_url(path))
    db.upgrade(engine)
    with db.session_factory(engine)() as session:
        snap = load_snapshot(session)
    siren = next(o for o in snap.outputs_by_id.values() if o.device_key == "siren")
    assert siren.generation is None
    trigger = protocols.Trigger(
        handler="ioboard",
        output_key=siren.device_key,
        output_label=siren.label,
        device_params=siren.device_params,
        trigger_topic=siren.trigger_topic,
        input_key="front-door",
        input_label="Front Door",
        input_type="Contact",
        duration=None,
        message="Front Door",
        now=1_700_000_000.0,
    )
    out = protocols.encode(siren.generation, trigger)
    assert out is not None and out.routing_key == "event.control.ioboard"
    assert msgpack.unpackb(out.body) == {
        "timestamp": "2023-11-14T22:13:20.000000+0000",
        "data": ["siren", None],
    }


def test_security_migration_keeps_what_tokens_and_users_could_do(
    tmp_path: Path, engines: Callable[..., Engine]
) -> None:
    """0006: a token made before roles existed could do everything, and still can; users keep their hash."""
    engine = engines(sqlite_url(tmp_path / "hub.db"))
    db.upgrade(engine)
    db.downgrade(engine, "0010_hub_roles")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO app_user (id, username, password_hash, failed_logins) VALUES (1, 'a', 'h', 2)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO api_token (user_id, name, token_hash, prefix) VALUES (1, 'old', :h, 'ep_x')"
            ),
            {"h": "a" * 64},
        )
    db.upgrade(engine)
    assert db.schema_differences(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name, role FROM api_token")).one() == ("old", "admin")
        user = conn.execute(sa.text("SELECT password_hash, failed_logins, unlock_hash FROM app_user")).one()
        assert tuple(user) == ("h", 2, None)
        assert sa.inspect(conn).has_table("web_session")
