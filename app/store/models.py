"""SQLAlchemy 2.0 models: the original's tables and columns, plus the hub's new columns and tables.

No `from __future__ import annotations` here, unlike the rest of the project: with it every
Mapped[...] annotation is a string that the declarative scan evaluates (~300 eval() calls, ~5 ms
of the hub's start-up). Only the relationships name a class defined further down, in quotes.
"""

from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class GeneralConfig(Base):
    """Device-independent settings a person changes at run time (e.g. the global outputs switch)."""

    __tablename__ = "general_config"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_key: Mapped[str] = mapped_column(String(50), nullable=False)
    config_value: Mapped[str] = mapped_column(Text, nullable=False)


class EventLog(Base):
    """One row per triggered output (the original's audit table)."""

    __tablename__ = "event_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_device: Mapped[str | None] = mapped_column(String(100), index=True)
    output_device: Mapped[str | None] = mapped_column(String(100), index=True)
    timestamp: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    decision_id: Mapped[int | None] = mapped_column(Integer)


# The events timeline reads the original's rows (no decision_id) newest first, by device or not; by
# device from indexes on those rows only, which the hub's own event_log writes never touch.
_ORIGINAL_ROWS = EventLog.decision_id.is_(None)
Index("ix_event_log_decision_time_id", EventLog.decision_id, EventLog.timestamp, EventLog.id)
# Their PostgreSQL form (postgresql_where) is added by add_postgresql_options(), which db.make_engine
# calls for a PostgreSQL URL: naming it here would import SQLAlchemy's PostgreSQL dialect (~1.7 MB
# and its import time) into every SQLite hub.
_PARTIAL_INDEXES = (
    Index(
        "ix_event_log_original_input",
        EventLog.input_device,
        EventLog.timestamp,
        EventLog.id,
        sqlite_where=_ORIGINAL_ROWS,
    ),
    Index(
        "ix_event_log_original_output",
        EventLog.output_device,
        EventLog.timestamp,
        EventLog.id,
        sqlite_where=_ORIGINAL_ROWS,
    ),
)


def add_postgresql_options() -> None:
    """Give the partial indexes their PostgreSQL WHERE (loads SQLAlchemy's PostgreSQL dialect)."""
    for index in _PARTIAL_INDEXES:
        index.dialect_options["postgresql"]["where"] = _ORIGINAL_ROWS


class InputConfig(Base):
    __tablename__ = "input_config"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_key: Mapped[str] = mapped_column(String(100), nullable=False, unique=True, index=True)
    device_type: Mapped[str] = mapped_column(String(100), nullable=False)
    device_label: Mapped[str | None] = mapped_column(String(100))
    customized: Mapped[bool | None] = mapped_column(Boolean)
    activation_interval: Mapped[int | None] = mapped_column(Integer)
    auto_schedule: Mapped[bool | None] = mapped_column(Boolean)
    auto_schedule_enable: Mapped[str | None] = mapped_column(String(5))
    auto_schedule_disable: Mapped[str | None] = mapped_column(String(5))
    device_enabled: Mapped[bool | None] = mapped_column(Boolean)
    multi_trigger: Mapped[bool | None] = mapped_column(Boolean)
    group_name: Mapped[str | None] = mapped_column(String(100), index=True)
    info_notify: Mapped[bool | None] = mapped_column(Boolean)
    # new in the re-implementation
    location: Mapped[str | None] = mapped_column(String(100))
    origin: Mapped[str | None] = mapped_column(String(100))
    label_customized: Mapped[bool | None] = mapped_column(Boolean)
    multi_trigger_rate: Mapped[int | None] = mapped_column(Integer)
    multi_trigger_interval: Mapped[int | None] = mapped_column(Integer)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    # NULL: the default, which is on for inputs (a silent sensor is a security problem)
    alert_offline: Mapped[bool | None] = mapped_column(Boolean)
    # the zone of the schedule times; NULL: USER_TZ ("UTC" on rows from the original, which ran in UTC)
    auto_schedule_tz: Mapped[str | None] = mapped_column(String(64))

    output_links: Mapped[list["OutputLink"]] = relationship(
        back_populates="input", cascade="all, delete-orphan"
    )
    input_links: Mapped[list["InputLink"]] = relationship(
        back_populates="input", cascade="all, delete-orphan"
    )
    meter: Mapped["MeterConfig | None"] = relationship(back_populates="input", cascade="all, delete-orphan")


class OutputConfig(Base):
    __tablename__ = "output_config"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_key: Mapped[str] = mapped_column(String(100), nullable=False, unique=True, index=True)
    device_type: Mapped[str] = mapped_column(String(100), nullable=False)
    device_label: Mapped[str | None] = mapped_column(String(100))
    device_params: Mapped[str | None] = mapped_column(Text)
    # new in the re-implementation
    device_enabled: Mapped[bool | None] = mapped_column(Boolean)
    trigger_topic: Mapped[str | None] = mapped_column(String(255))
    trigger_interval: Mapped[int | None] = mapped_column(Integer)
    location: Mapped[str | None] = mapped_column(String(100))
    origin: Mapped[str | None] = mapped_column(String(100))
    label_customized: Mapped[bool | None] = mapped_column(Boolean)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    # NULL: the default, which is off for outputs
    alert_offline: Mapped[bool | None] = mapped_column(Boolean)
    # daily schedule, as inputs have had since the original
    auto_schedule: Mapped[bool | None] = mapped_column(Boolean)
    auto_schedule_enable: Mapped[str | None] = mapped_column(String(5))
    auto_schedule_disable: Mapped[str | None] = mapped_column(String(5))
    # The wire generation (app/protocols: g1, g2, g3) of the device that last advertised this output,
    # that device's name (routing key part [3]), and a person's choice, which wins (NULL: as detected).
    generation: Mapped[str | None] = mapped_column(String(10))
    generation_device: Mapped[str | None] = mapped_column(String(100))
    generation_override: Mapped[str | None] = mapped_column(String(10))
    auto_schedule_tz: Mapped[str | None] = mapped_column(String(64))
    # switch pulse sent with a trigger: NULL the device's default (a null duration, as the original
    # sent), -1 the input's activation_interval (app.engine.rules.PULSE_INPUT_INTERVAL), N seconds
    pulse_seconds: Mapped[int | None] = mapped_column(Integer, default=-1)

    links: Mapped[list["OutputLink"]] = relationship(back_populates="output", cascade="all, delete-orphan")


class InputLink(Base):
    """Input→input link: the input fires only if its linked inputs also triggered within its interval."""

    __tablename__ = "input_link"
    __table_args__ = (UniqueConstraint("input_device_id", "linked_device_id", name="unique_link"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_device_id: Mapped[int] = mapped_column(ForeignKey("input_config.id"), nullable=False, index=True)
    linked_device_id: Mapped[int] = mapped_column(Integer, nullable=False)

    input: Mapped["InputConfig"] = relationship(back_populates="input_links")


class OutputLink(Base):
    __tablename__ = "output_link"
    # The original reused input_link's "unique_link" here; PostgreSQL needs constraint names unique
    # per schema, so migration 0002 renames it (SQLite) and 0001 creates it so named (PostgreSQL).
    __table_args__ = (UniqueConstraint("input_device_id", "output_device_id", name="unique_output_link"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_device_id: Mapped[int] = mapped_column(ForeignKey("input_config.id"), nullable=False, index=True)
    output_device_id: Mapped[int] = mapped_column(ForeignKey("output_config.id"), nullable=False)

    input: Mapped["InputConfig"] = relationship(back_populates="output_links")
    output: Mapped["OutputConfig"] = relationship(back_populates="links")


class MeterConfig(Base):
    __tablename__ = "meter_config"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_device_id: Mapped[int] = mapped_column(ForeignKey("input_config.id"), nullable=False, index=True)
    meter_value: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    register_value: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    meter_reading: Mapped[str] = mapped_column(String, nullable=False, default="0")
    meter_iot_topic: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    # in the unit shown (register / unit factor), so a fraction is possible
    meter_low_limit: Mapped[float | None] = mapped_column(Float)
    meter_high_limit: Mapped[float | None] = mapped_column(Float)
    meter_reset_value: Mapped[int | None] = mapped_column(Integer)
    meter_reset_additive: Mapped[bool | None] = mapped_column(Boolean)
    meter_reading_unit: Mapped[str | None] = mapped_column(String(10))
    meter_reading_unit_factor: Mapped[int | None] = mapped_column(Integer)
    meter_reading_unit_precision: Mapped[int | None] = mapped_column(Integer)

    input: Mapped["InputConfig"] = relationship(back_populates="meter")


class Decision(Base):
    """What the hub decided for one input event: fired, or blocked and why."""

    __tablename__ = "decision"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    input_device_id: Mapped[int | None] = mapped_column(Integer, index=True)
    input_key: Mapped[str] = mapped_column(String(100), nullable=False)
    input_label: Mapped[str | None] = mapped_column(String(100))
    origin: Mapped[str | None] = mapped_column(String(100))
    event_detail: Mapped[str | None] = mapped_column(String(255))
    fired: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    reason: Mapped[str | None] = mapped_column(String(50))
    detail: Mapped[str | None] = mapped_column(Text)

    outputs: Mapped[list["DecisionOutput"]] = relationship(
        back_populates="decision", cascade="all, delete-orphan", order_by="DecisionOutput.id"
    )


class DecisionOutput(Base):
    """One linked output of a decision: fired, or why not."""

    __tablename__ = "decision_output"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decision_id: Mapped[int] = mapped_column(
        ForeignKey("decision.id", ondelete="CASCADE"), nullable=False, index=True
    )
    output_device_id: Mapped[int | None] = mapped_column(Integer, index=True)
    output_key: Mapped[str] = mapped_column(String(100), nullable=False, index=True)
    output_label: Mapped[str | None] = mapped_column(String(100))
    fired: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    reason: Mapped[str | None] = mapped_column(String(50))
    detail: Mapped[str | None] = mapped_column(Text)

    decision: Mapped["Decision"] = relationship(back_populates="outputs")


# The timeline's order is (timestamp, id): each index ends with it so a page of decisions, all or one
# input's (by row id or by key), is read in order from the index and stops after its rows.
Index("ix_decision_time_id", Decision.timestamp, Decision.id)
Index("ix_decision_input_time_id", Decision.input_device_id, Decision.timestamp, Decision.id)
Index("ix_decision_key_time_id", Decision.input_key, Decision.timestamp, Decision.id)


class User(Base):
    """A person who may log in to the dashboard; only a password hash is stored."""

    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_login: Mapped[datetime | None] = mapped_column(DateTime)
    # failed logins in a row; from APP_LOGIN_MAX_FAILURES on, each one delays the next try further
    failed_logins: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime)  # no password is checked before this
    # A one-time unlock code (Telegram /unlock or `python -m app.users unlock`): its SHA-256 and expiry.
    unlock_hash: Mapped[str | None] = mapped_column(String(64))
    unlock_until: Mapped[datetime | None] = mapped_column(DateTime)


class WebSession(Base):
    """A logged-in browser; its cookie names the row, so logout or "sign out everywhere" ends it here."""

    __tablename__ = "web_session"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"), nullable=False, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    address: Mapped[str | None] = mapped_column(String(64))

    user: Mapped["User"] = relationship()


class ApiToken(Base):
    """A bearer token for scripts; only its SHA-256 is stored, the token is shown once."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(12), nullable=False)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    # "read": GET only; "admin": everything the owner can do (tokens made before roles existed)
    role: Mapped[str] = mapped_column(String(10), nullable=False, default="admin", server_default="admin")

    user: Mapped["User"] = relationship()


class MeterHistory(Base):
    """Meter readings over time for the dashboard charts (bounded by the daily retention)."""

    __tablename__ = "meter_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    input_device_id: Mapped[int] = mapped_column(Integer, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    register_value: Mapped[int | None] = mapped_column(Integer)
    meter_value: Mapped[int | None] = mapped_column(Integer)
    reading: Mapped[float | None] = mapped_column(Float)


Index("ix_meter_history_input_time", MeterHistory.input_device_id, MeterHistory.timestamp)


class RuleState(Base):
    """Rule state that must survive a restart (latches, windows, pending digests, timed re-enables)."""

    __tablename__ = "rule_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state_key: Mapped[str] = mapped_column(String(200), nullable=False, unique=True)
    state_value: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    updated: Mapped[datetime | None] = mapped_column(DateTime)


class Heartbeat(Base):
    """One row the hub rewrites every minute: proof of life for backups and monitoring."""

    __tablename__ = "heartbeat"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dt: Mapped[datetime | None] = mapped_column(DateTime)
    ts: Mapped[float | None] = mapped_column(Float)


class ConfigChange(Base):
    """One configuration change: who made it, what it changed (before and after, as JSON), and when."""

    __tablename__ = "config_change"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    # web:<user>, token:<user>/<token name>, telegram:<user id>, scheduler, sqs, …
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    action: Mapped[str] = mapped_column(String(50), nullable=False)
    # input, output, meter, links, general; target_id/key name the device when there is one
    target_kind: Mapped[str | None] = mapped_column(String(20))
    target_id: Mapped[int | None] = mapped_column(Integer)
    target_key: Mapped[str | None] = mapped_column(String(100))
    summary: Mapped[str] = mapped_column(Text, nullable=False)
    before: Mapped[str | None] = mapped_column(Text)  # JSON object of the changed fields
    after: Mapped[str | None] = mapped_column(Text)


Index("ix_config_change_target", ConfigChange.target_kind, ConfigChange.target_id, ConfigChange.timestamp)
Index("ix_config_change_time_id", ConfigChange.timestamp, ConfigChange.id)
Index("ix_config_change_key_time_id", ConfigChange.target_key, ConfigChange.timestamp, ConfigChange.id)


class HubNode(Base):
    """One row per hub of a standby pair (HA_ENABLED): its role, since when, and when it was last seen."""

    __tablename__ = "hub_node"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)  # active | standby | stopped
    role_since: Mapped[datetime | None] = mapped_column(DateTime)  # naive UTC
    seen: Mapped[datetime | None] = mapped_column(DateTime)  # naive UTC, refreshed every check
    url: Mapped[str | None] = mapped_column(String(255))


# An input or an output row. Constrained (not a union), so mypy checks a function over either once
# for each model: session.get(model, id) is then an InputConfig or an OutputConfig, never just Base.
DeviceRow = TypeVar("DeviceRow", InputConfig, OutputConfig)


class DeviceView(Protocol):
    """What pages read of a device: an InputConfig or OutputConfig row, or just these columns of one."""

    @property
    def id(self) -> int: ...
    @property
    def device_key(self) -> str: ...
    @property
    def device_label(self) -> str | None: ...
    @property
    def device_type(self) -> str: ...
    @property
    def device_enabled(self) -> bool | None: ...
    @property
    def origin(self) -> str | None: ...
    @property
    def last_seen(self) -> datetime | None: ...
