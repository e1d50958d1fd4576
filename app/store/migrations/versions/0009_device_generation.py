"""The wire generation of each output's device, where it was learned, and a person's override.

Revision ID: 0009_device_generation
Revises: 0005_schedules_state
Create Date: 2026-12-06

Existing rows get NULL in all three: an output not yet heard from is sent the G1 control message,
exactly what the hub sent it before, so no stored value changes meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_device_generation"
down_revision: str | None = "0005_schedules_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("generation", sa.String(10)),
    ("generation_device", sa.String(100)),
    ("generation_override", sa.String(10)),
)


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("output_config")}
    for name, type_ in COLUMNS:
        if name not in present:
            op.add_column("output_config", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("output_config") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
