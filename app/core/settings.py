"""Typed settings read from the environment, an optional .env file and config/app.conf defaults.

Over ~400 lines as one cohesive thing: the Settings model (one field per variable, secrets flagged
on the field) and load(), which builds each of those fields and checks the ones that depend on each
other. The value parsers live in settings_parsers, the raw sources in settings_sources.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.core import settings_parsers as parse
from app.core import settings_sources, zones
from app.core.settings_defaults import OP_CONNECT_NAMES as OP_CONNECT_NAMES

# Callers know these as settings.SettingsError and the like too ("X as X" re-exports it for mypy).
from app.core.settings_defaults import SettingsError as SettingsError
from app.core.settings_defaults import config_defaults as config_defaults
from app.core.settings_parsers import parse_hhmm as parse_hhmm
from app.core.settings_parsers import sqlite_file as sqlite_file
from app.core.settings_parsers import syslog_target as syslog_target

# INFLUXDB_LAYOUT: the original's measurements, the hub's "meter" measurement, or both
INFLUXDB_LAYOUTS = ("auto", "original", "new", "both")
# handler category -> the variable listing the device types it serves
OUTPUT_TYPE_VARS = {
    "ioboard": "OUTPUT_TYPE_SWITCH",
    "snapshot": "OUTPUT_TYPE_SNAPSHOT",
    "tts": "OUTPUT_TYPE_TTS",
    "bluetooth": "OUTPUT_TYPE_BLUETOOTH",
}
# The flag marking a secret setting: field metadata {SECRET: part}, the part of its value that is
# secret. Everything that must keep secrets out (describe(), log redaction, SECRET_NAMES, the
# pages' test) reads the flag, so a new secret is marked once, on its field.
SECRET = "secret"
WHOLE = "whole"  # the value itself
URL_PASSWORD = "url-password"  # the password in a URL; the rest (host, database) may show
URL_USERINFO = "url-userinfo"  # user and password in a URL (a Sentry DSN's user is its key)
LAST_SEGMENT = "last-segment"  # a URL's last path segment (a ping URL's check id: anyone with it can ping)
# Read before Settings exists (it only reaches 1Password) and kept nowhere after: not a field.
OP_CONNECT_TOKEN = "OP_CONNECT_TOKEN"


def _secret(env: str, part: str = WHOLE, default: Any = MISSING) -> Any:
    """A secret setting's field, from environment variable `env`: out of repr and flagged SECRET."""
    # Any, as dataclasses.field's own default is: fields of several types use it; each keeps its own.
    return field(default=default, repr=False, metadata={SECRET: part, "env": env})


@dataclass(frozen=True)
class Settings:
    """The hub's settings, one field per variable (load() builds them; a secret is flagged on its field)."""

    app_name: str
    device_name: str
    user_tz: str
    log_level: str
    max_message_validity: int
    max_heartbeat_delay: int
    rabbitmq_servers: tuple[tuple[str, int], ...]
    rabbitmq_exchange: str
    rabbitmq_user: str
    rabbitmq_password: str = _secret("RABBITMQ_PASSWORD")
    rabbitmq_vhost: str = "/"
    rabbitmq_max_message_bytes: int = 1024 * 1024
    control_message_ttl: int = 90
    output_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_activation_interval: int = 60
    default_multi_trigger_rate: int = 2
    default_trigger_window: int = 10
    database_url: str = _secret("DATABASE_URL", URL_PASSWORD, "")
    db_timeout: int = 30
    event_log_retention_days: int = 90
    event_log_max_rows: int = 200000
    audit_buffer_size: int = 5000
    clock_offset_warning: int = 30
    http_port: int = 8080
    http_bind: str = "0.0.0.0"  # login guards every page, and the container needs it
    admin_user: str = "admin"
    admin_password_hash: str = _secret("APP_ADMIN_PASSWORD_HASH", default="")
    secret_key: str = _secret("APP_SECRET_KEY", default="")
    login_max_failures: int = 5
    login_lockout_seconds: int = 300
    session_cookie_secure: str = "auto"  # auto: Secure when the request came over HTTPS
    # X-Forwarded-For/-Proto are believed from these only: addresses, CIDR networks, host names
    trusted_proxies: tuple[str, ...] = ()
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str = ""
    mqtt_password: str = _secret("MQTT_PASSWORD", default="")
    mqtt_tls: bool = False
    mqtt_ca_certs: str = ""
    mqtt_subscriptions: tuple[str, ...] = ("meter/electricity/#", "sensor/#", "+/heartbeat/+")
    mqtt_meter_reset_topic: str = "meter/electricity/control"
    mqtt_outbox_size: int = 1000
    influxdb_url: str = ""
    influxdb_token: str = _secret("INFLUXDB_TOKEN", default="")
    influxdb_org: str = ""
    influxdb_bucket: str = ""
    influxdb_buffer_size: int = 10000
    # auto: the original's layout on a database the original made (app/store/original.py), else the hub's
    influxdb_layout: str = "auto"
    # +CC put in front of SMS numbers written without one (the original's "name;0412..." entries)
    sms_country_code: str = ""
    mdash_api_key: str = _secret("MDASH_API_KEY", default="")
    mdash_api_base_url: str = "https://mdash.net/api/v2/devices"
    mdash_device_tags: tuple[str, ...] = ("meter", "sensor")
    mdash_app_config_mqtt_pub_topic: str = "app.mqtt_pub_topic"
    mdash_poll_seconds: int = 300

    telegram_bot_token: str = _secret("TELEGRAM_BOT_TOKEN", default="")
    telegram_chat_room: int | None = None
    telegram_users: tuple[int, ...] = ()
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    telegram_image_only_with_people: bool = False
    telegram_sms_fallback: bool = False
    telegram_min_send_interval: float = 3.0
    telegram_send_retries: int = 5
    aws_region: str = "us-east-1"
    offline_alert_factor: float = 3.0
    offline_alert_floor: int = 60
    # Informational inputs notify only between these wall-clock times in user_tz (quiet hours outside).
    quiet_hours_not_before: dt.time = dt.time(7, 0)
    quiet_hours_not_after: dt.time = dt.time(21, 0)
    log_format: str = "text"
    sentry_dsn: str = _secret("SENTRY_DSN", URL_USERINFO, "")
    sentry_environment: str = ""
    hc_ping_url: str = _secret("HC_PING_URL", LAST_SEGMENT, "")
    cronitor_monitor_key: str = ""
    cronitor_telemetry_key: str = _secret("CRONITOR_TELEMETRY_KEY", default="")
    cronitor_ping_url: str = "https://cronitor.link/p"
    health_ping_seconds: float = 300.0
    health_down_grace_seconds: float = 120.0
    heartbeat_row_seconds: float = 60.0
    aws_access_key_id: str = ""
    aws_secret_access_key: str = _secret("AWS_SECRET_ACCESS_KEY", default="")
    aws_endpoint_url: str = ""
    backup_s3_bucket: str = ""
    backup_retention_days: int = 30
    backup_status_path: str = "./data/backup_status.json"
    backup_max_age_hours: int = 26
    backup_encryption_key: str = _secret("BACKUP_ENCRYPTION_KEY", default="")
    sqs_control_enabled: bool = False
    sqs_queue: str = "automation-control"
    sqs_wait_seconds: int = 10
    # Standby pair (app/store/roles.py): off unless HA_ENABLED
    ha_enabled: bool = False
    ha_node_name: str = ""
    ha_node_url: str = ""
    ha_queue_name: str = ""
    ha_queue_ttl: int = 3600
    ha_queue_max_length: int = 100000
    ha_check_seconds: float = 1.0
    ha_fence_seconds: float = 3.0
    # Registration caps: past them nothing new is registered (counted, logged, shown on the dashboard).
    max_inputs_per_device: int = 64
    max_outputs_per_device: int = 16
    max_inputs: int = 2000
    max_outputs: int = 500
    # Where settings came from besides app.conf/.env/environment: "" or "1Password (vault …)"
    onepassword_source: str = ""
    # The original's event_log rows (migrated history) are kept by retention unless this is on.
    event_log_prune_migrated: bool = False
    # The dashboard link in Telegram replies: ngrok's public URL (from its local agent API) or a fixed one.
    ngrok_enabled: bool = False
    ngrok_tunnel_name: str = "frontend"
    ngrok_client_api_host: str = "127.0.0.1"
    ngrok_client_api_port: int = 4040
    public_url: str = ""
    healthchecks_badges: tuple[str, ...] = ()
    healthchecks_badge_base_url: str = "https://healthchecks.io/badge"
    grafana_url: str = ""
    cloudwatch_metrics: bool = False
    cloudwatch_namespace: str = "automation"
    cloudwatch_seconds: float = 300.0
    syslog_address: str = ""
    backup_latest_minutes: int = 5

    @property
    def mqtt_enabled(self) -> bool:
        """MQTT is off when MQTT_SERVER_ADDRESS is empty (a house with no MQTT devices)."""
        return bool(self.mqtt_host)

    @property
    def sentry_enabled(self) -> bool:
        return bool(self.sentry_dsn)

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token)

    @property
    def influxdb_enabled(self) -> bool:
        return bool(self.influxdb_url and self.influxdb_token and self.influxdb_org and self.influxdb_bucket)

    @property
    def backup_enabled(self) -> bool:
        return bool(self.backup_s3_bucket)

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file behind database_url, or None for another database."""
        return sqlite_file(self.database_url)

    @property
    def mdash_enabled(self) -> bool:
        return bool(self.mdash_api_key)

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


SECRET_FIELDS = tuple(f for f in fields(Settings) if SECRET in f.metadata)
SECRET_ATTRIBUTES = frozenset(f.name for f in SECRET_FIELDS)
# The environment variables holding secrets: the flagged fields' and the 1Password token.
SECRET_NAMES = frozenset(f.metadata["env"] for f in SECRET_FIELDS) | {OP_CONNECT_TOKEN}


def secret_strings(settings: Settings) -> list[str]:
    """The secret strings the settings hold: of each flagged field, the part its flag names."""
    found: list[str] = []
    for secret_field in SECRET_FIELDS:
        value = getattr(settings, secret_field.name)
        part = secret_field.metadata[SECRET]
        if not value:
            continue
        if part == WHOLE:
            found.append(value)
        elif part in (URL_PASSWORD, URL_USERINFO):
            url = urlsplit(value)
            found += [url.password or "", (url.username or "") if part == URL_USERINFO else ""]
        elif part == LAST_SEGMENT:
            found.append(value.rstrip("/").rsplit("/", 1)[-1])
        else:
            raise AssertionError(f"{secret_field.name}: unknown secret part {part!r}")
    return [text for text in found if text]


def load(env: dict[str, str] | None = None, dotenv_path: str | os.PathLike[str] | None = None) -> Settings:
    """Build Settings; raises SettingsError naming the first bad variable."""
    v = settings_sources.raw_values(env, dotenv_path)
    tz = parse.text(v, "USER_TZ")
    if not zones.is_name(tz):
        raise SettingsError("USER_TZ", f"{tz!r} is not a timezone name such as Europe/London")
    level = parse.text(v, "LOG_LEVEL").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError("LOG_LEVEL", f"{level!r} is not DEBUG, INFO, WARNING or ERROR")
    database_url = v.get("DATABASE_URL", "").strip()
    if not database_url:
        path = parse.text(v, "TABLESPACE_PATH")
        database_url = "sqlite:///" + str(Path(path).expanduser())
    elif "://" not in database_url:
        raise SettingsError("DATABASE_URL", "is not a URL such as postgresql+psycopg://user@host/db")
    output_types = {handler: parse.csv_list(v.get(var, "")) for handler, var in OUTPUT_TYPE_VARS.items()}
    seen: dict[str, str] = {}
    for handler, types in output_types.items():
        for t in types:
            if t in seen and seen[t] != handler:
                raise SettingsError(OUTPUT_TYPE_VARS[handler], f"type {t!r} is also mapped to {seen[t]}")
            seen[t] = handler
    bind = parse.text(v, "APP_FLASK_BIND_ADDRESS")
    admin_hash = v.get("APP_ADMIN_PASSWORD_HASH", "").strip()
    if admin_hash and not admin_hash.startswith(("scrypt:", "pbkdf2:")):
        raise SettingsError(
            "APP_ADMIN_PASSWORD_HASH",
            "is not a werkzeug generate_password_hash string (scrypt:… or pbkdf2:…)",
        )
    cookie_secure = v.get("APP_SESSION_COOKIE_SECURE", "auto").strip().lower() or "auto"
    if cookie_secure not in ("auto", "true", "false"):
        raise SettingsError("APP_SESSION_COOKIE_SECURE", f"{cookie_secure!r} is not auto, true or false")
    mqtt_address = v.get("MQTT_SERVER_ADDRESS", "").strip()
    mqtt_host, mqtt_port = (
        parse.host_port("MQTT_SERVER_ADDRESS", mqtt_address, 1883) if mqtt_address else ("", 1883)
    )
    subscriptions = parse.topics("MQTT_PUB_TOPIC_CSV", v.get("MQTT_PUB_TOPIC_CSV", ""))
    # Device heartbeats ('OK' on <kind>/heartbeat/<device_id>) are always wanted.
    if "+/heartbeat/+" not in subscriptions:
        subscriptions += ("+/heartbeat/+",)
    ca_certs = v.get("MQTT_CA_CERTS", "").strip()
    if ca_certs and not Path(ca_certs).is_file():
        raise SettingsError("MQTT_CA_CERTS", f"{ca_certs!r} is not a file")
    influx_url = v.get("INFLUXDB_URL", "").strip()
    if influx_url and not influx_url.startswith(("http://", "https://")):
        raise SettingsError("INFLUXDB_URL", f"{influx_url!r} is not an http(s) URL")
    telegram_token = v.get("TELEGRAM_BOT_TOKEN", "").strip()
    if telegram_token and ":" not in telegram_token:
        raise SettingsError("TELEGRAM_BOT_TOKEN", "is not a bot token (it looks like 123456:ABC...)")
    chat_room = v.get("TELEGRAM_CHAT_ROOM", "").strip()
    if chat_room:
        try:
            chat_room_id: int | None = int(chat_room)
        except ValueError:
            raise SettingsError(
                "TELEGRAM_CHAT_ROOM", f"{chat_room!r} is not a chat id (a whole number)"
            ) from None
    else:
        chat_room_id = None
    if telegram_token and chat_room_id is None:
        raise SettingsError("TELEGRAM_CHAT_ROOM", "must be set when TELEGRAM_BOT_TOKEN is (alerts go there)")
    users: list[int] = []
    for part in parse.csv_list(v.get("TELEGRAM_USERS_CSV", "")):
        try:
            users.append(int(part))
        except ValueError:
            raise SettingsError("TELEGRAM_USERS_CSV", f"{part!r} is not a Telegram user id") from None
    telegram_url = parse.text(v, "TELEGRAM_API_BASE_URL")
    if not telegram_url.startswith(("http://", "https://")):
        raise SettingsError("TELEGRAM_API_BASE_URL", f"{telegram_url!r} is not an http(s) URL")
    try:
        min_interval = float(v.get("TELEGRAM_MIN_SEND_INTERVAL", "3"))
        factor = float(v.get("OFFLINE_ALERT_FACTOR", "3"))
    except ValueError as exc:
        raise SettingsError("TELEGRAM_MIN_SEND_INTERVAL or OFFLINE_ALERT_FACTOR", str(exc)) from None
    if not 0 <= min_interval <= 3600:
        raise SettingsError("TELEGRAM_MIN_SEND_INTERVAL", "must be from 0 to 3600 seconds")
    if not 1.5 <= factor <= 100:
        raise SettingsError("OFFLINE_ALERT_FACTOR", "must be from 1.5 to 100")
    mdash_url = parse.text(v, "MDASH_API_BASE_URL")
    if not mdash_url.startswith(("http://", "https://")):
        raise SettingsError("MDASH_API_BASE_URL", f"{mdash_url!r} is not an http(s) URL")
    exchange = parse.text(v, "RABBITMQ_EXCHANGE")
    influx_layout = v.get("INFLUXDB_LAYOUT", "").strip().lower() or "auto"
    if influx_layout not in INFLUXDB_LAYOUTS:
        choices = ", ".join(INFLUXDB_LAYOUTS)
        raise SettingsError("INFLUXDB_LAYOUT", f"{influx_layout!r} is not one of {choices}")
    country = v.get("SMS_COUNTRY_CODE", "").strip()
    if country and not re.fullmatch(r"\+?[1-9][0-9]{0,3}", country):
        raise SettingsError("SMS_COUNTRY_CODE", f"{country!r} is not a calling code such as +61 or 44")
    log_format = parse.text(v, "LOG_FORMAT").lower()
    if log_format not in ("text", "json"):
        raise SettingsError("LOG_FORMAT", f"{log_format!r} is not text or json")
    sentry_dsn = parse.url(v, "SENTRY_DSN")
    if sentry_dsn and not urlsplit(sentry_dsn).username:
        raise SettingsError("SENTRY_DSN", "has no public key (it looks like https://<key>@<host>/<project>)")
    cronitor_key = v.get("CRONITOR_MONITOR_KEY", "").strip()
    cronitor_telemetry = v.get("CRONITOR_TELEMETRY_KEY", "").strip()
    if cronitor_key and not cronitor_telemetry:
        raise SettingsError("CRONITOR_TELEMETRY_KEY", "must be set when CRONITOR_MONITOR_KEY is")
    cronitor_url = parse.url(v, "CRONITOR_PING_URL")
    if not cronitor_url:
        raise SettingsError("CRONITOR_PING_URL", "must not be empty")
    bucket = v.get("BACKUP_S3_BUCKET", "").strip()
    if bucket and not (3 <= len(bucket) <= 63 and all(c.isalnum() or c in ".-" for c in bucket)):
        raise SettingsError("BACKUP_S3_BUCKET", f"{bucket!r} is not an S3 bucket name")
    status_path = v.get("BACKUP_STATUS_PATH", "").strip()
    if not status_path:
        db_file = sqlite_file(database_url)
        folder = Path(db_file).parent if db_file and db_file != ":memory:" else Path("data")
        status_path = str(folder / "backup_status.json")
    sqs_enabled = parse.boolean(v, "SNS_CONTROL_ENABLED")
    sqs_queue = v.get("SQS_QUEUE", "").strip()
    if sqs_enabled and not sqs_queue:
        raise SettingsError("SQS_QUEUE", "must be set when SNS_CONTROL_ENABLED is true")
    badges = tuple(p.strip().strip("/") for p in v.get("HEALTHCHECKS_BADGE_CSV", "").split(",") if p.strip())
    for badge in badges:
        if any(c.isspace() or c in "?#\\" for c in badge) or ".." in badge:
            raise SettingsError(
                "HEALTHCHECKS_BADGE_CSV", f"{badge!r} is not a badge id such as <key>/<slug>.svg"
            )
    badge_base = parse.url(v, "HEALTHCHECKS_BADGE_BASE_URL").rstrip("/")
    if badges and not badge_base:
        raise SettingsError("HEALTHCHECKS_BADGE_BASE_URL", "must be set when HEALTHCHECKS_BADGE_CSV is")
    cloudwatch = v.get("CLOUDWATCH_METRICS", "auto").strip().lower() or "auto"
    if cloudwatch == "auto":
        # As the original, where AWS is configured: keys given to the hub.
        cloudwatch_on = bool(v.get("AWS_ACCESS_KEY_ID", "").strip())
    else:
        cloudwatch_on = parse.boolean(v, "CLOUDWATCH_METRICS")
    syslog = v.get("SYSLOG_ADDRESS", "").strip()
    if syslog:
        try:
            syslog_target(syslog)
        except ValueError as exc:
            raise SettingsError("SYSLOG_ADDRESS", str(exc)) from None
    quiet: dict[str, dt.time] = {}
    for name in ("QUIET_HOURS_NOT_BEFORE", "QUIET_HOURS_NOT_AFTER"):
        try:
            quiet[name] = parse_hhmm(parse.text(v, name))
        except ValueError as exc:
            raise SettingsError(name, str(exc)) from None
    ha = _ha(v, database_url, exchange)
    return Settings(
        **ha,
        quiet_hours_not_before=quiet["QUIET_HOURS_NOT_BEFORE"],
        quiet_hours_not_after=quiet["QUIET_HOURS_NOT_AFTER"],
        app_name=parse.text(v, "APP_NAME"),
        device_name=parse.text(v, "DEVICE_NAME"),
        user_tz=tz,
        log_level=level,
        max_message_validity=parse.whole(v, "MAX_MESSAGE_VALIDITY_SECONDS", 1),
        max_heartbeat_delay=parse.whole(v, "MAX_HEARTBEAT_DELAY_SECONDS", 1),
        clock_offset_warning=parse.whole(v, "CLOCK_OFFSET_WARNING_SECONDS", 1, 86400),
        rabbitmq_servers=parse.servers("RABBITMQ_SERVER_ADDRESS", parse.text(v, "RABBITMQ_SERVER_ADDRESS")),
        rabbitmq_exchange=exchange,
        rabbitmq_user=parse.text(v, "RABBITMQ_USER"),
        rabbitmq_password=v.get("RABBITMQ_PASSWORD", ""),
        rabbitmq_vhost=parse.text(v, "RABBITMQ_VHOST"),
        rabbitmq_max_message_bytes=parse.whole(v, "RABBITMQ_MAX_MESSAGE_BYTES", 1024, 64 * 1024 * 1024),
        control_message_ttl=parse.whole(v, "CONTROL_MESSAGE_TTL_SECONDS", 1, 86400),
        output_types=output_types,
        default_activation_interval=parse.whole(v, "DEFAULT_ACTIVATION_INTERVAL", 0),
        default_multi_trigger_rate=parse.whole(v, "DEFAULT_MULTI_TRIGGER_RATE", 1, 120),
        default_trigger_window=parse.whole(v, "DEFAULT_TRIGGER_WINDOW", 1),
        database_url=database_url,
        db_timeout=parse.whole(v, "DB_TIMEOUT", 1),
        event_log_retention_days=parse.whole(v, "EVENT_LOG_RETENTION_DAYS", 1),
        event_log_max_rows=parse.whole(v, "EVENT_LOG_MAX_ROWS", 100),
        audit_buffer_size=parse.whole(v, "AUDIT_BUFFER_SIZE", 1, 1_000_000),
        http_port=parse.whole(v, "APP_FLASK_HTTP_PORT", 0, 65535),
        http_bind=bind,
        admin_user=parse.text(v, "APP_ADMIN_USER"),
        admin_password_hash=admin_hash,
        secret_key=v.get("APP_SECRET_KEY", "").strip(),
        login_max_failures=parse.whole(v, "APP_LOGIN_MAX_FAILURES", 1, 1000),
        login_lockout_seconds=parse.whole(v, "APP_LOGIN_LOCKOUT_SECONDS", 1, 86400),
        session_cookie_secure=cookie_secure,
        trusted_proxies=parse.proxies(v.get("APP_TRUSTED_PROXIES", "")),
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        mqtt_username=v.get("MQTT_USERNAME", "").strip(),
        mqtt_password=v.get("MQTT_PASSWORD", ""),
        mqtt_tls=parse.boolean(v, "MQTT_TLS"),
        mqtt_ca_certs=ca_certs,
        mqtt_subscriptions=subscriptions,
        mqtt_meter_reset_topic=parse.text(v, "MQTT_METER_RESET_TOPIC"),
        mqtt_outbox_size=parse.whole(v, "MQTT_OUTBOX_SIZE", 1, 1_000_000),
        influxdb_url=influx_url,
        influxdb_token=v.get("INFLUXDB_TOKEN", "").strip(),
        influxdb_org=v.get("INFLUXDB_ORG", "").strip(),
        influxdb_bucket=v.get("INFLUXDB_BUCKET", "").strip(),
        influxdb_buffer_size=parse.whole(v, "INFLUXDB_BUFFER_SIZE", 1, 10_000_000),
        influxdb_layout=influx_layout,
        sms_country_code=("+" + country.lstrip("+")) if country else "",
        mdash_api_key=v.get("MDASH_API_KEY", "").strip(),
        mdash_api_base_url=mdash_url,
        mdash_device_tags=parse.csv_list(v.get("MDASH_DEVICE_TAGS_CSV", "")),
        mdash_app_config_mqtt_pub_topic=parse.text(v, "MDASH_APP_CONFIG_MQTT_PUB_TOPIC"),
        mdash_poll_seconds=parse.whole(v, "MDASH_POLL_SECONDS", 10, 86400),
        telegram_bot_token=telegram_token,
        telegram_chat_room=chat_room_id,
        telegram_users=tuple(users),
        telegram_api_base_url=telegram_url,
        telegram_image_only_with_people=parse.boolean(v, "TELEGRAM_IMAGE_SEND_ONLY_WITH_PEOPLE"),
        telegram_sms_fallback=parse.boolean(v, "TELEGRAM_SMS_FALLBACK_ENABLED"),
        telegram_min_send_interval=min_interval,
        telegram_send_retries=parse.whole(v, "TELEGRAM_SEND_RETRIES", 0, 100),
        aws_region=parse.text(v, "AWS_DEFAULT_REGION"),
        offline_alert_factor=factor,
        offline_alert_floor=parse.whole(v, "OFFLINE_ALERT_FLOOR_SECONDS", 1, 86400),
        log_format=log_format,
        sentry_dsn=sentry_dsn,
        sentry_environment=v.get("SENTRY_ENVIRONMENT", "").strip(),
        hc_ping_url=parse.url(v, "HC_PING_URL").rstrip("/"),
        cronitor_monitor_key=cronitor_key,
        cronitor_telemetry_key=cronitor_telemetry,
        cronitor_ping_url=cronitor_url.rstrip("/"),
        health_ping_seconds=parse.seconds(v, "HEALTH_PING_SECONDS", 0.05, 86400),
        health_down_grace_seconds=parse.seconds(v, "HEALTH_DOWN_GRACE_SECONDS", 0, 86400),
        heartbeat_row_seconds=parse.seconds(v, "HEARTBEAT_ROW_SECONDS", 0.05, 86400),
        aws_access_key_id=v.get("AWS_ACCESS_KEY_ID", "").strip(),
        aws_secret_access_key=v.get("AWS_SECRET_ACCESS_KEY", "").strip(),
        aws_endpoint_url=parse.url(v, "AWS_ENDPOINT_URL"),
        backup_s3_bucket=bucket,
        backup_retention_days=parse.whole(v, "BACKUP_RETENTION_DAYS", 1, 3650),
        backup_status_path=status_path,
        backup_max_age_hours=parse.whole(v, "BACKUP_MAX_AGE_HOURS", 1, 24 * 365),
        backup_encryption_key=parse.fernet_key(v, "BACKUP_ENCRYPTION_KEY"),
        sqs_control_enabled=sqs_enabled,
        sqs_queue=sqs_queue,
        sqs_wait_seconds=parse.whole(v, "SQS_WAIT_SECONDS", 0, 20),
        onepassword_source=v.get("_ONEPASSWORD", ""),
        event_log_prune_migrated=parse.boolean(v, "EVENT_LOG_PRUNE_MIGRATED"),
        ngrok_enabled=parse.boolean(v, "NGROK_ENABLED"),
        ngrok_tunnel_name=parse.text(v, "NGROK_TUNNEL_NAME"),
        ngrok_client_api_host=parse.text(v, "NGROK_CLIENT_API_HOST"),
        ngrok_client_api_port=parse.whole(v, "NGROK_CLIENT_API_PORT", 1, 65535),
        public_url=parse.url(v, "DASHBOARD_PUBLIC_URL"),
        healthchecks_badges=badges,
        healthchecks_badge_base_url=badge_base,
        grafana_url=parse.url(v, "GRAFANA_URL"),
        cloudwatch_metrics=cloudwatch_on,
        cloudwatch_namespace=parse.text(v, "CLOUDWATCH_NAMESPACE"),
        cloudwatch_seconds=parse.seconds(v, "CLOUDWATCH_SECONDS", 0.05, 86400),
        syslog_address=syslog,
        backup_latest_minutes=parse.whole(v, "BACKUP_LATEST_MINUTES", 1, 1440),
        max_inputs_per_device=parse.whole(v, "MAX_INPUTS_PER_DEVICE", 1, 100_000),
        max_outputs_per_device=parse.whole(v, "MAX_OUTPUTS_PER_DEVICE", 1, 100_000),
        max_inputs=parse.whole(v, "MAX_INPUTS", 1, 1_000_000),
        max_outputs=parse.whole(v, "MAX_OUTPUTS", 1, 1_000_000),
    )


def _ha(v: dict[str, str], database_url: str, exchange: str) -> dict[str, Any]:
    """The standby-pair settings; HA needs a shared PostgreSQL database (a lease lives there)."""
    enabled = parse.boolean(v, "HA_ENABLED")
    if enabled and not database_url.startswith("postgresql"):
        raise SettingsError(
            "HA_ENABLED", "needs DATABASE_URL to name the PostgreSQL database both hubs share"
        )
    node = v.get("HA_NODE_NAME", "").strip() or socket.gethostname()
    if len(node) > 64 or not node.isprintable():
        raise SettingsError("HA_NODE_NAME", "must be at most 64 printable characters")
    node_url = parse.url(v, "HA_NODE_URL")
    queue = v.get("HA_QUEUE_NAME", "").strip() or f"{exchange}_hub"
    if len(queue.encode()) > 255 or queue.startswith("amq."):
        raise SettingsError("HA_QUEUE_NAME", f"{queue!r} is not a usable queue name")
    check = parse.seconds(v, "HA_CHECK_SECONDS", 0.1, 60)
    fence = parse.seconds(v, "HA_FENCE_SECONDS", 0.5, 300)
    if check * 2 > fence:
        raise SettingsError(
            "HA_FENCE_SECONDS", f"{fence:g} must be at least twice HA_CHECK_SECONDS ({check:g})"
        )
    ttl = parse.whole(v, "HA_QUEUE_TTL_SECONDS", 1, 7 * 86400)
    validity = parse.whole(v, "MAX_MESSAGE_VALIDITY_SECONDS", 1)
    if enabled and ttl <= validity:
        # a message the broker drops unseen is lost silently; one the hub sees late is recorded stale
        raise SettingsError(
            "HA_QUEUE_TTL_SECONDS", f"{ttl} must be longer than MAX_MESSAGE_VALIDITY_SECONDS ({validity})"
        )
    return {
        "ha_enabled": enabled,
        "ha_node_name": node,
        "ha_node_url": node_url,
        "ha_queue_name": queue,
        "ha_queue_ttl": ttl,
        "ha_queue_max_length": parse.whole(v, "HA_QUEUE_MAX_LENGTH", 1, 100_000_000),
        "ha_check_seconds": check,
        "ha_fence_seconds": fence,
    }


def describe(settings: Settings) -> dict[str, Any]:
    """Settings for a start-up log line, with secrets left out."""
    out = {k: v for k, v in settings.__dict__.items() if k not in SECRET_ATTRIBUTES}
    url = settings.database_url
    out["database"] = url.split("@")[-1] if "@" in url else url
    return out
