"""Typed settings read from the environment, an optional .env file and config/app.conf defaults."""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytz
from dotenv import dotenv_values

CONFIG_FILE = Path(__file__).resolve().parent.parent / "config" / "app.conf"
# handler category -> the variable listing the device types it serves
OUTPUT_TYPE_VARS = {
    "ioboard": "OUTPUT_TYPE_SWITCH",
    "snapshot": "OUTPUT_TYPE_SNAPSHOT",
    "tts": "OUTPUT_TYPE_TTS",
    "bluetooth": "OUTPUT_TYPE_BLUETOOTH",
}
SECRET_NAMES = frozenset({"RABBITMQ_PASSWORD", "DATABASE_URL"})


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {name}: {problem}")
        self.name = name


@dataclass(frozen=True)
class Settings:
    app_name: str
    device_name: str
    user_tz: str
    log_level: str
    max_message_validity: int
    max_heartbeat_delay: int
    rabbitmq_servers: tuple[tuple[str, int], ...]
    rabbitmq_exchange: str
    rabbitmq_user: str
    rabbitmq_password: str = field(repr=False)
    rabbitmq_vhost: str = "/"
    rabbitmq_max_message_bytes: int = 16 * 1024 * 1024
    control_message_ttl: int = 90
    output_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_activation_interval: int = 60
    default_multi_trigger_rate: int = 2
    default_trigger_window: int = 10
    database_url: str = field(default="", repr=False)
    db_timeout: int = 30
    event_log_retention_days: int = 90
    event_log_max_rows: int = 200000
    http_port: int = 8080
    http_bind: str = "127.0.0.1"

    @property
    def control_exchange(self) -> str:
        return f"{self.rabbitmq_exchange}_control"

    def handler_for(self, device_type: str | None) -> str | None:
        """Map an output's device_type to its handler category (ioboard, snapshot, tts, bluetooth)."""
        if not device_type:
            return None
        wanted = device_type.strip().lower()
        for handler, types in self.output_types.items():
            if wanted in types:
                return handler
        return None


def _raw_values(env: dict[str, str] | None, dotenv_path: str | os.PathLike[str] | None) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONFIG_FILE)
    values: dict[str, str] = {}
    for section in parser.sections():
        values.update(parser.items(section))
    path = Path(dotenv_path) if dotenv_path is not None else Path(".env")
    if path.is_file():
        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    source = os.environ if env is None else env
    values.update({k: v for k, v in source.items() if k in values or k.startswith(("OUTPUT_TYPE_",))})
    return values


def _int(values: dict[str, str], name: str, minimum: int = 0, maximum: int | None = None) -> int:
    raw = values.get(name, "").strip()
    try:
        number = int(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a whole number") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(name, f"{number} must be {bound}")
    return number


def _text(values: dict[str, str], name: str) -> str:
    text = values.get(name, "").strip()
    if not text:
        raise SettingsError(name, "must not be empty")
    return text


def _servers(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    servers = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        host, sep, port_text = part.rpartition(":") if part.count(":") == 1 else (part, "", "")
        if not sep:
            host, port_text = part, "5672"
        try:
            port = int(port_text)
        except ValueError:
            raise SettingsError(name, f"port {port_text!r} in {part!r} is not a number") from None
        if not host or not 0 < port < 65536:
            raise SettingsError(name, f"{part!r} is not host[:port]")
        servers.append((host, port))
    if not servers:
        raise SettingsError(name, "names no server")
    return tuple(servers)


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in raw.split(",") if p.strip())


def load(env: dict[str, str] | None = None, dotenv_path: str | os.PathLike[str] | None = None) -> Settings:
    """Build Settings; raises SettingsError naming the first bad variable."""
    v = _raw_values(env, dotenv_path)
    tz = _text(v, "USER_TZ")
    if tz not in pytz.all_timezones_set:
        raise SettingsError("USER_TZ", f"{tz!r} is not a timezone name such as Europe/London")
    level = _text(v, "LOG_LEVEL").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError("LOG_LEVEL", f"{level!r} is not DEBUG, INFO, WARNING or ERROR")
    database_url = v.get("DATABASE_URL", "").strip()
    if not database_url:
        path = _text(v, "TABLESPACE_PATH")
        database_url = "sqlite:///" + str(Path(path).expanduser())
    elif "://" not in database_url:
        raise SettingsError("DATABASE_URL", "is not a URL such as postgresql+psycopg://user@host/db")
    output_types = {handler: _csv(v.get(var, "")) for handler, var in OUTPUT_TYPE_VARS.items()}
    seen: dict[str, str] = {}
    for handler, types in output_types.items():
        for t in types:
            if t in seen and seen[t] != handler:
                raise SettingsError(OUTPUT_TYPE_VARS[handler], f"type {t!r} is also mapped to {seen[t]}")
            seen[t] = handler
    bind = _text(v, "APP_FLASK_BIND_ADDRESS")
    exchange = _text(v, "RABBITMQ_EXCHANGE")
    return Settings(
        app_name=_text(v, "APP_NAME"),
        device_name=_text(v, "DEVICE_NAME"),
        user_tz=tz,
        log_level=level,
        max_message_validity=_int(v, "MAX_MESSAGE_VALIDITY_SECONDS", 1),
        max_heartbeat_delay=_int(v, "MAX_HEARTBEAT_DELAY_SECONDS", 1),
        rabbitmq_servers=_servers("RABBITMQ_SERVER_ADDRESS", _text(v, "RABBITMQ_SERVER_ADDRESS")),
        rabbitmq_exchange=exchange,
        rabbitmq_user=_text(v, "RABBITMQ_USER"),
        rabbitmq_password=v.get("RABBITMQ_PASSWORD", ""),
        rabbitmq_vhost=_text(v, "RABBITMQ_VHOST"),
        rabbitmq_max_message_bytes=_int(v, "RABBITMQ_MAX_MESSAGE_BYTES", 1024, 512 * 1024 * 1024),
        control_message_ttl=_int(v, "CONTROL_MESSAGE_TTL_SECONDS", 1, 86400),
        output_types=output_types,
        default_activation_interval=_int(v, "DEFAULT_ACTIVATION_INTERVAL", 0),
        default_multi_trigger_rate=_int(v, "DEFAULT_MULTI_TRIGGER_RATE", 1, 120),
        default_trigger_window=_int(v, "DEFAULT_TRIGGER_WINDOW", 1),
        database_url=database_url,
        db_timeout=_int(v, "DB_TIMEOUT", 1),
        event_log_retention_days=_int(v, "EVENT_LOG_RETENTION_DAYS", 1),
        event_log_max_rows=_int(v, "EVENT_LOG_MAX_ROWS", 100),
        http_port=_int(v, "APP_FLASK_HTTP_PORT", 0, 65535),
        http_bind=bind,
    )


def describe(settings: Settings) -> dict[str, Any]:
    """Settings for a start-up log line, with secrets left out."""
    out = {k: v for k, v in settings.__dict__.items() if k not in ("rabbitmq_password", "database_url")}
    url = settings.database_url
    out["database"] = url.split("@")[-1] if "@" in url else url
    return out
