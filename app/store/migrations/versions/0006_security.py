"""Server-side web sessions, API token roles, one-time unlock codes; the signing key leaves the database.

Revision ID: 0006_security
Revises: 0010_hub_roles
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_security"
down_revision: str | None = "0010_hub_roles"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    user_columns = {c["name"] for c in inspector.get_columns("app_user")}
    for name, type_ in (("unlock_hash", sa.String(64)), ("unlock_until", sa.DateTime())):
        if name not in user_columns:
            op.add_column("app_user", sa.Column(name, type_, nullable=True))
    if "role" not in {c["name"] for c in inspector.get_columns("api_token")}:
        # Tokens made before roles could do everything; they keep that meaning.
        op.add_column("api_token", sa.Column("role", sa.String(10), nullable=False, server_default="admin"))
    if "web_session" not in set(inspector.get_table_names()):
        op.create_table(
            "web_session",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("user_id", sa.Integer(), nullable=False),
            sa.Column("key_hash", sa.String(64), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=True),
            sa.Column("address", sa.String(64), nullable=True),
            sa.ForeignKeyConstraint(["user_id"], ["app_user.id"]),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("key_hash"),
        )
        op.create_index("ix_web_session_user_id", "web_session", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_web_session_user_id", table_name="web_session")
    op.drop_table("web_session")
    with op.batch_alter_table("api_token") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("app_user") as batch:
        batch.drop_column("unlock_until")
        batch.drop_column("unlock_hash")
