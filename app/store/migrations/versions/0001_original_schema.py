"""The original event-processor schema (config/db_schema.sql), adopted in place when it already exists.

Revision ID: 0001_original_schema
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001_original_schema"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _general_config() -> None:
    op.create_table(
        "general_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("config_key", sa.String(50), nullable=False),
        sa.Column("config_value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def _event_log() -> None:
    op.create_table(
        "event_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("input_device", sa.String(100), nullable=True),
        sa.Column("output_device", sa.String(100), nullable=True),
        sa.Column("timestamp", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_event_log_output_device", "event_log", ["output_device"])
    op.create_index("ix_event_log_input_device", "event_log", ["input_device"])
    op.create_index("ix_event_log_timestamp", "event_log", ["timestamp"])


def _input_config() -> None:
    op.create_table(
        "input_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_key", sa.String(50), nullable=False),
        sa.Column("device_type", sa.String(100), nullable=False),
        sa.Column("device_label", sa.String(100), nullable=True),
        sa.Column("customized", sa.Boolean(), nullable=True),
        sa.Column("activation_interval", sa.Integer(), nullable=True),
        sa.Column("auto_schedule", sa.Boolean(), nullable=True),
        sa.Column("auto_schedule_enable", sa.String(5), nullable=True),
        sa.Column("auto_schedule_disable", sa.String(5), nullable=True),
        sa.Column("device_enabled", sa.Boolean(), nullable=True),
        sa.Column("multi_trigger", sa.Boolean(), nullable=True),
        sa.Column("group_name", sa.String(100), nullable=True),
        sa.Column("info_notify", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_input_config_device_key", "input_config", ["device_key"], unique=True)
    op.create_index("ix_input_config_group_name", "input_config", ["group_name"])


def _output_config() -> None:
    op.create_table(
        "output_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_key", sa.String(50), nullable=False),
        sa.Column("device_type", sa.String(100), nullable=False),
        sa.Column("device_label", sa.String(100), nullable=True),
        sa.Column("device_params", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_output_config_device_key", "output_config", ["device_key"], unique=True)


def _input_link() -> None:
    op.create_table(
        "input_link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("input_device_id", sa.Integer(), nullable=False),
        # no foreign key on linked_device_id in the original
        sa.Column("linked_device_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("input_device_id", "linked_device_id", name="unique_link"),
        sa.ForeignKeyConstraint(["input_device_id"], ["input_config.id"]),
    )
    op.create_index("ix_input_link_input_device_id", "input_link", ["input_device_id"])


def _output_link() -> None:
    # The original names this constraint "unique_link" like input_link's. SQLite scopes the name to
    # the table; PostgreSQL backs a unique constraint with an index whose name must be unique in
    # the schema, so it gets the name 0002 gives it on SQLite. No original PostgreSQL database exists.
    name = "unique_link" if op.get_bind().dialect.name == "sqlite" else "unique_output_link"
    op.create_table(
        "output_link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("input_device_id", sa.Integer(), nullable=False),
        sa.Column("output_device_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("input_device_id", "output_device_id", name=name),
        sa.ForeignKeyConstraint(["input_device_id"], ["input_config.id"]),
        sa.ForeignKeyConstraint(["output_device_id"], ["output_config.id"]),
    )
    op.create_index("ix_output_link_input_device_id", "output_link", ["input_device_id"])


def _meter_config() -> None:
    op.create_table(
        "meter_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("input_device_id", sa.Integer(), nullable=False),
        sa.Column("meter_value", sa.Integer(), nullable=False),
        sa.Column("register_value", sa.Integer(), nullable=False),
        sa.Column("meter_reading", sa.String(), nullable=False),
        sa.Column("meter_iot_topic", sa.String(100), nullable=False),
        sa.Column("meter_low_limit", sa.Integer(), nullable=True),
        sa.Column("meter_high_limit", sa.Integer(), nullable=True),
        sa.Column("meter_reset_value", sa.Integer(), nullable=True),
        sa.Column("meter_reset_additive", sa.Boolean(), nullable=True),
        sa.Column("meter_reading_unit", sa.String(10), nullable=True),
        sa.Column("meter_reading_unit_factor", sa.Integer(), nullable=True),
        sa.Column("meter_reading_unit_precision", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["input_device_id"], ["input_config.id"]),
    )
    op.create_index("ix_meter_config_input_device_id", "meter_config", ["input_device_id"])


# in dependency order: the link and meter tables refer to the config tables
_TABLES: dict[str, Callable[[], None]] = {
    "general_config": _general_config,
    "event_log": _event_log,
    "input_config": _input_config,
    "output_config": _output_config,
    "input_link": _input_link,
    "output_link": _output_link,
    "meter_config": _meter_config,
}


# general_config key recorded when this revision adopts a database the original app made: later
# revisions convert values whose meaning changed, and settings such as INFLUXDB_LAYOUT default to
# the original's behaviour (app/store/original.py reads it).
ORIGINAL_MARKER_KEY = "original-database-adopted"


def upgrade() -> None:
    # A database made by the original app has these tables but no alembic_version: leave every
    # existing table exactly as it is (rows and all) and create only what is missing (general_config
    # and meter_config were added to the original late, so older files may lack them).
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    # The original's input_config, not one made by metadata.create_all() (which has created_at).
    adopting = "input_config" in existing and "created_at" not in {
        c["name"] for c in inspector.get_columns("input_config")
    }
    for name, create in _TABLES.items():
        if name not in existing:
            create()
    if adopting:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        op.execute(
            sa.text("INSERT INTO general_config (config_key, config_value) VALUES (:key, :value)").bindparams(
                key=ORIGINAL_MARKER_KEY, value=stamp
            )
        )


def downgrade() -> None:
    # Deliberately nothing: these tables may hold a user's data from before the hub, and this
    # revision may not have created them. Downgrading to base only forgets the revision.
    pass
