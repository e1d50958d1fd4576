"""Indexes for the events timeline's keyset pages: each part's newest rows, filtered, straight from an index.

Revision ID: 0011_event_keyset
Revises: 0006_security
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_event_keyset"
down_revision: str | None = "0006_security"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns, only the original's rows). Every index ends in (timestamp, id), the timeline's
# order, so a page is read in order and stops after its rows (PostgreSQL needs the id spelled out;
# SQLite has it anyway as the rowid). The event_log ones by device cover only the original's rows
# (no decision_id): small, and the hub's own event_log writes never touch them.
NEW = (
    ("ix_decision_time_id", "decision", ["timestamp", "id"], False),
    ("ix_decision_input_time_id", "decision", ["input_device_id", "timestamp", "id"], False),
    ("ix_decision_key_time_id", "decision", ["input_key", "timestamp", "id"], False),
    # an output's decisions by its key as well as by its row id (an OR of two indexes)
    ("ix_decision_output_output_key", "decision_output", ["output_key"], False),
    ("ix_config_change_time_id", "config_change", ["timestamp", "id"], False),
    ("ix_config_change_key_time_id", "config_change", ["target_key", "timestamp", "id"], False),
    # The original's rows (decision_id NULL) newest first, an equality and then the order.
    ("ix_event_log_decision_time_id", "event_log", ["decision_id", "timestamp", "id"], False),
    ("ix_event_log_original_input", "event_log", ["input_device", "timestamp", "id"], True),
    ("ix_event_log_original_output", "event_log", ["output_device", "timestamp", "id"], True),
)
# Replaced by a new one above that starts with the same columns.
OLD = (
    ("ix_decision_timestamp", "decision", ["timestamp"]),
    ("ix_decision_input_time", "decision", ["input_device_id", "timestamp"]),
    ("ix_config_change_timestamp", "config_change", ["timestamp"]),
    ("ix_event_log_decision_id", "event_log", ["decision_id"]),
)


def _indexes(table: str) -> set[str]:
    return {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table) if i["name"]}


def upgrade() -> None:
    for name, table, columns, original in NEW:
        if name in _indexes(table):  # a database made by create_all from the models has them
            continue
        where = sa.text("decision_id IS NULL") if original else None
        op.create_index(name, table, columns, sqlite_where=where, postgresql_where=where)
    for name, table, _columns in OLD:
        if name in _indexes(table):
            op.drop_index(name, table_name=table)


def downgrade() -> None:
    for name, table, columns in OLD:
        if name not in _indexes(table):
            op.create_index(name, table, columns)
    for name, table, _columns, _original in NEW:
        if name in _indexes(table):
            op.drop_index(name, table_name=table)
