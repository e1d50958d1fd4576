"""Dashboard tables: users and API tokens for login, and meter reading history for charts.

Revision ID: 0003_dashboard
Revises: 0002_hub_columns
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_dashboard"
down_revision: str | None = "0002_hub_columns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "app_user" not in existing:
        op.create_table(
            "app_user",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("username", sa.String(100), nullable=False),
            sa.Column("password_hash", sa.String(255), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=True),
            sa.Column("last_login", sa.DateTime(), nullable=True),
            sa.Column("failed_logins", sa.Integer(), nullable=False),
            sa.Column("locked_until", sa.DateTime(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("username"),
        )
    if "api_token" not in existing:
        op.create_table(
            "api_token",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("user_id", sa.Integer(), nullable=False),
            sa.Column("name", sa.String(100), nullable=False),
            sa.Column("token_hash", sa.String(64), nullable=False),
            sa.Column("prefix", sa.String(12), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=True),
            sa.Column("last_used", sa.DateTime(), nullable=True),
            sa.Column("revoked_at", sa.DateTime(), nullable=True),
            sa.ForeignKeyConstraint(["user_id"], ["app_user.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("token_hash"),
        )
        op.create_index("ix_api_token_user_id", "api_token", ["user_id"])
    if "meter_history" not in existing:
        op.create_table(
            "meter_history",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("input_device_id", sa.Integer(), nullable=False),
            sa.Column("timestamp", sa.DateTime(), nullable=False),
            sa.Column("register_value", sa.Integer(), nullable=True),
            sa.Column("meter_value", sa.Integer(), nullable=True),
            sa.Column("reading", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_meter_history_input_time", "meter_history", ["input_device_id", "timestamp"])


def downgrade() -> None:
    op.drop_table("meter_history")
    op.drop_index("ix_api_token_user_id", table_name="api_token")
    op.drop_table("api_token")
    op.drop_table("app_user")
