"""The hub_node table: the hubs of a standby pair, their roles and when each was last seen.

Revision ID: 0010_hub_roles
Revises: 0007_original_meaning
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_hub_roles"
down_revision: str | None = "0007_original_meaning"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if "hub_node" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "hub_node",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("role_since", sa.DateTime(), nullable=True),
        sa.Column("seen", sa.DateTime(), nullable=True),
        sa.Column("url", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_name"),
    )


def downgrade() -> None:
    op.drop_table("hub_node")
