"""The hub's additions: device metadata columns, event_log.decision_id, the decision audit tables.

Revision ID: 0002_hub_columns
Revises: 0001_original_schema
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002_hub_columns"
down_revision: str | None = "0001_original_schema"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Column[Any]: the lists hold columns of several types.
# All new columns are nullable so rows from the original keep NULL (the app treats a NULL
# output_config.device_enabled as enabled).
def _input_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("location", sa.String(100), nullable=True),
        sa.Column("origin", sa.String(100), nullable=True),
        sa.Column("label_customized", sa.Boolean(), nullable=True),
        sa.Column("multi_trigger_rate", sa.Integer(), nullable=True),
        sa.Column("multi_trigger_interval", sa.Integer(), nullable=True),
        sa.Column("last_seen", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=True),
    ]


def _output_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("device_enabled", sa.Boolean(), nullable=True),
        sa.Column("trigger_topic", sa.String(255), nullable=True),
        sa.Column("trigger_interval", sa.Integer(), nullable=True),
        sa.Column("location", sa.String(100), nullable=True),
        sa.Column("origin", sa.String(100), nullable=True),
        sa.Column("label_customized", sa.Boolean(), nullable=True),
        sa.Column("last_seen", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=True),
    ]


def _columns(inspector: sa.Inspector, table: str) -> set[str]:
    return {c["name"] for c in inspector.get_columns(table)}


def _indexes(inspector: sa.Inspector, table: str) -> set[str]:
    return {i["name"] for i in inspector.get_indexes(table) if i["name"]}


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    tables = set(inspector.get_table_names())

    # Each step checks first, so a database made with metadata.create_all() (no alembic_version)
    # is adopted instead of failing on "duplicate column".
    for table, columns in (("input_config", _input_columns()), ("output_config", _output_columns())):
        present = _columns(inspector, table)
        for column in columns:
            if column.name not in present:
                op.add_column(table, column)

    if "decision_id" not in _columns(inspector, "event_log"):
        op.add_column("event_log", sa.Column("decision_id", sa.Integer(), nullable=True))
    if "ix_event_log_decision_id" not in _indexes(inspector, "event_log"):
        op.create_index("ix_event_log_decision_id", "event_log", ["decision_id"])

    if "decision" not in tables:
        op.create_table(
            "decision",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("timestamp", sa.DateTime(), nullable=False),
            sa.Column("input_device_id", sa.Integer(), nullable=True),
            sa.Column("input_key", sa.String(100), nullable=False),
            sa.Column("input_label", sa.String(100), nullable=True),
            sa.Column("origin", sa.String(100), nullable=True),
            sa.Column("event_detail", sa.String(255), nullable=True),
            sa.Column("fired", sa.Boolean(), nullable=False),
            sa.Column("reason", sa.String(50), nullable=True),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_decision_timestamp", "decision", ["timestamp"])
        op.create_index("ix_decision_input_device_id", "decision", ["input_device_id"])
        op.create_index("ix_decision_input_time", "decision", ["input_device_id", "timestamp"])

    if "decision_output" not in tables:
        op.create_table(
            "decision_output",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("decision_id", sa.Integer(), nullable=False),
            sa.Column("output_device_id", sa.Integer(), nullable=True),
            sa.Column("output_key", sa.String(100), nullable=False),
            sa.Column("output_label", sa.String(100), nullable=True),
            sa.Column("fired", sa.Boolean(), nullable=False),
            sa.Column("reason", sa.String(50), nullable=True),
            sa.Column("detail", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.ForeignKeyConstraint(["decision_id"], ["decision.id"], ondelete="CASCADE"),
        )
        op.create_index("ix_decision_output_decision_id", "decision_output", ["decision_id"])
        op.create_index("ix_decision_output_output_device_id", "decision_output", ["output_device_id"])

    if bind.dialect.name == "sqlite":
        # SQLite does not enforce VARCHAR lengths, so device_key stays VARCHAR(50) there; only the
        # duplicate constraint name needs fixing (see 0001), which SQLite can do only by copying the
        # table. The copy keeps every row, id, foreign key and index.
        uniques = {u["name"] for u in inspector.get_unique_constraints("output_link")}
        if "unique_link" in uniques:
            with op.batch_alter_table("output_link", recreate="always") as batch:
                batch.drop_constraint("unique_link", type_="unique")
                batch.create_unique_constraint("unique_output_link", ["input_device_id", "output_device_id"])
    else:
        for table in ("input_config", "output_config"):
            op.alter_column(
                table,
                "device_key",
                type_=sa.String(100),
                existing_type=sa.String(50),
                existing_nullable=False,
            )


def downgrade() -> None:
    bind = op.get_bind()
    op.drop_table("decision_output")
    op.drop_table("decision")
    op.drop_index("ix_event_log_decision_id", table_name="event_log")
    # batch: SQLite before 3.35 cannot drop columns in place
    with op.batch_alter_table("event_log") as batch:
        batch.drop_column("decision_id")
    for table, columns in (("input_config", _input_columns()), ("output_config", _output_columns())):
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_column(column.name)
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table("output_link", recreate="always") as batch:
            batch.drop_constraint("unique_output_link", type_="unique")
            batch.create_unique_constraint("unique_link", ["input_device_id", "output_device_id"])
    else:
        # fails if a device_key longer than 50 characters was stored since the upgrade
        for table in ("input_config", "output_config"):
            op.alter_column(
                table,
                "device_key",
                type_=sa.String(50),
                existing_type=sa.String(100),
                existing_nullable=False,
            )
