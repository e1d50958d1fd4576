"""Per-device choice of offline alerts (input_config / output_config.alert_offline).

Revision ID: 0004_offline_alerts
Revises: 0003_dashboard
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_offline_alerts"
down_revision: str | None = "0003_dashboard"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("input_config", "output_config")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in TABLES:
        if "alert_offline" not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column("alert_offline", sa.Boolean(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("alert_offline")
