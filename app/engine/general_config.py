"""The hub-wide switches and quiet hours kept as general_config rows: reading them and writing one."""

from __future__ import annotations

import logging
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import settings
from app.engine import rules
from app.engine.change_history import Diff
from app.store.models import GeneralConfig

log = logging.getLogger(__name__)

OUTPUTS_ENABLED_KEY = "outputs-enabled"
SCHEDULER_ENABLED_KEY = "auto-scheduler"
QUIET_NOT_BEFORE_KEY = "quiet-hours-not-before"
QUIET_NOT_AFTER_KEY = "quiet-hours-not-after"
QUIET_ALL_OUTPUTS_KEY = "quiet-hours-all-outputs"
_FALSE_WORDS = frozenset({"0", "false", "off", "no"})


def general_row(session: Session, key: str) -> GeneralConfig | None:
    stmt = select(GeneralConfig).where(GeneralConfig.config_key == key).order_by(GeneralConfig.id)
    return session.scalars(stmt).first()


def outputs_enabled(session: Session) -> bool:
    """The global outputs switch; on when never set, so a fresh install triggers its outputs."""
    row = general_row(session, OUTPUTS_ENABLED_KEY)
    return row is None or row.config_value.strip().lower() not in _FALSE_WORDS


def scheduler_enabled(session: Session) -> bool:
    """The global auto-scheduler switch; on when never set."""
    stmt = (
        select(GeneralConfig)
        .where(GeneralConfig.config_key == SCHEDULER_ENABLED_KEY)
        .order_by(GeneralConfig.id)
    )
    row = session.scalars(stmt).first()
    return row is None or row.config_value.strip().lower() not in _FALSE_WORDS


def quiet_hours(session: Session, default: rules.QuietHours) -> rules.QuietHours:
    """The quiet-hours window: general_config rows override the settings' default, field by field."""
    window = default
    for key, name in ((QUIET_NOT_BEFORE_KEY, "not_before"), (QUIET_NOT_AFTER_KEY, "not_after")):
        row = general_row(session, key)
        if row is not None:
            try:
                at = settings.parse_hhmm(row.config_value)
                window = (
                    replace(window, not_before=at) if name == "not_before" else replace(window, not_after=at)
                )
            except ValueError:
                # A bad stored time must not stop the processor; the setting's value holds instead.
                log.warning("general_config %s=%r is not HH:MM; using the default", key, row.config_value)
    row = general_row(session, QUIET_ALL_OUTPUTS_KEY)
    if row is not None:
        window = replace(window, all_outputs=row.config_value.strip().lower() not in _FALSE_WORDS)
    return window


def set_value(session: Session, key: str, value: str, diff: Diff) -> None:
    row = general_row(session, key)
    old = row.config_value if row is not None else None
    if old != value:
        diff.note(key, old, value)
    if row is None:
        session.add(GeneralConfig(config_key=key, config_value=value))
    else:
        row.config_value = value
