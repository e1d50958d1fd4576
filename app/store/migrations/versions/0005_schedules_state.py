"""Output schedules, restart-safe rule state, and the liveness heartbeat row.

Revision ID: 0005_schedules_state
Revises: 0004_offline_alerts
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_schedules_state"
down_revision: str | None = "0004_offline_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTPUT_COLUMNS = (
    ("auto_schedule", sa.Boolean()),
    ("auto_schedule_enable", sa.String(5)),
    ("auto_schedule_disable", sa.String(5)),
)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {c["name"] for c in inspector.get_columns("output_config")}
    for name, type_ in OUTPUT_COLUMNS:
        if name not in present:
            op.add_column("output_config", sa.Column(name, type_, nullable=True))
    tables = set(inspector.get_table_names())
    if "rule_state" not in tables:
        op.create_table(
            "rule_state",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("state_key", sa.String(200), nullable=False),
            sa.Column("state_value", sa.Text(), nullable=False),
            sa.Column("updated", sa.DateTime(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("state_key"),
        )
    if "heartbeat" not in tables:
        op.create_table(
            "heartbeat",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("dt", sa.DateTime(), nullable=True),
            sa.Column("ts", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )


def downgrade() -> None:
    op.drop_table("heartbeat")
    op.drop_table("rule_state")
    with op.batch_alter_table("output_config") as batch:
        for name, _ in reversed(OUTPUT_COLUMNS):
            batch.drop_column(name)
