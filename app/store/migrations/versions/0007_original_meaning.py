"""Keep the original's meaning: schedule time zones, meter limits in display units, switch pulse length.

Revision ID: 0007_original_meaning
Revises: 0008_history
Create Date: 2026-12-06

Three stored values are read differently by the hub than by the original (docs/upgrading.md):

* auto_schedule_enable/disable ran in UTC in the original; the hub reads them in USER_TZ. Each
  schedule now carries its zone (auto_schedule_tz, NULL = USER_TZ), and the original's rows get UTC.
* meter_low_limit/high_limit were compared with the raw register and 0 meant "no limit"; the hub
  compares register / unit factor and 0 is a real limit. Limits are divided by the factor (so the
  column becomes a float) and a 0 becomes NULL.
* A switch pulse was always a null duration (the device's 1 s); the hub sends the input's
  activation_interval. output_config.pulse_seconds chooses: NULL = null duration (the original's
  rows), -1 = the input's activation_interval (every other row), N = N seconds.

The conversions run only when 0001 adopted the original's database in this same upgrade (its
marker row in general_config): a database the hub has been running already holds the hub's meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_original_meaning"
down_revision: str | None = "0008_history"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORIGINAL_MARKER_KEY = "original-database-adopted"  # as 0001 writes it
PULSE_INPUT_INTERVAL = -1  # as app/engine/rules.py reads it
SCHEDULE_TABLES = ("input_config", "output_config")
LIMITS = ("meter_low_limit", "meter_high_limit")


def _columns(inspector: sa.Inspector, table: str) -> set[str]:
    return {c["name"] for c in inspector.get_columns(table)}


_Number = sa.types.TypeEngine[float] | sa.types.TypeEngine[int]


def _set_limit_type(type_: _Number, existing: _Number) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot change a column's type in place: batch copies the table (rows, ids, index, FK).
        with op.batch_alter_table("meter_config", recreate="always") as batch:
            for name in LIMITS:
                batch.alter_column(name, type_=type_, existing_type=existing, existing_nullable=True)
    else:
        for name in LIMITS:
            op.alter_column("meter_config", name, type_=type_, existing_type=existing)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table in SCHEDULE_TABLES:
        if "auto_schedule_tz" not in _columns(inspector, table):
            op.add_column(table, sa.Column("auto_schedule_tz", sa.String(64), nullable=True))
    if "pulse_seconds" not in _columns(inspector, "output_config"):
        op.add_column("output_config", sa.Column("pulse_seconds", sa.Integer(), nullable=True))
    limit_types = {c["name"]: c["type"] for c in inspector.get_columns("meter_config")}
    if not isinstance(limit_types["meter_high_limit"], sa.Float):
        _set_limit_type(sa.Float(), sa.Integer())

    adopted = (
        bind.execute(
            sa.text("SELECT COUNT(*) FROM general_config WHERE config_key = :key").bindparams(
                key=ORIGINAL_MARKER_KEY
            )
        ).scalar_one()
        > 0
    )
    if not adopted:
        # The hub's own database: every output keeps today's pulse, the input's activation_interval.
        op.execute(
            sa.text("UPDATE output_config SET pulse_seconds = :pulse WHERE pulse_seconds IS NULL").bindparams(
                pulse=PULSE_INPUT_INTERVAL
            )
        )
        return

    # The original's database, adopted by 0001 in this upgrade. Schedules stay in UTC (the original's
    # container had no TZ); only rows that hold a time, so a schedule set later follows USER_TZ.
    op.execute(
        "UPDATE input_config SET auto_schedule_tz = 'UTC' WHERE auto_schedule_tz IS NULL AND "
        "(COALESCE(auto_schedule_enable, '') <> '' OR COALESCE(auto_schedule_disable, '') <> '')"
    )
    # Outputs keep pulse_seconds NULL: the device's default, as the original always sent.
    # Limits: "register > limit" becomes "register / factor > limit / factor", the same crossing.
    # The original read a 0 (falsy) as no limit; the hub reads 0 as a limit, so 0 becomes NULL.
    # The hub divides by 1 when the factor is NULL or not positive (app/engine/meters.py); so does this.
    for name in LIMITS:
        op.execute(f"UPDATE meter_config SET {name} = NULL WHERE {name} = 0")
        op.execute(
            f"UPDATE meter_config SET {name} = CAST({name} AS FLOAT) / meter_reading_unit_factor "
            f"WHERE {name} IS NOT NULL AND meter_reading_unit_factor > 1"
        )


def downgrade() -> None:
    # Limits go back to whole numbers in the unit shown (the hub's reading before this revision).
    for name in LIMITS:
        op.execute(f"UPDATE meter_config SET {name} = ROUND({name}) WHERE {name} IS NOT NULL")
    _set_limit_type(sa.Integer(), sa.Float())
    with op.batch_alter_table("output_config") as batch:
        batch.drop_column("pulse_seconds")
    for table in SCHEDULE_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("auto_schedule_tz")
