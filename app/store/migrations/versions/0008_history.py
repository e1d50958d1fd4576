"""Configuration-change history: every change with who made it and the values before and after.

Revision ID: 0008_history
Revises: 0009_device_generation
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_history"
down_revision: str | None = "0009_device_generation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "config_change" in set(inspector.get_table_names()):
        return
    op.create_table(
        "config_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("target_kind", sa.String(20), nullable=True),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("target_key", sa.String(100), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_config_change_timestamp", "config_change", ["timestamp"])
    op.create_index("ix_config_change_target", "config_change", ["target_kind", "target_id", "timestamp"])


def downgrade() -> None:
    op.drop_index("ix_config_change_target", table_name="config_change")
    op.drop_index("ix_config_change_timestamp", table_name="config_change")
    op.drop_table("config_change")
