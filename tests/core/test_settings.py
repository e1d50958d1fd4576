"""Settings: defaults, precedence of .env and the environment, and a clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core import settings
from app.core.settings import SettingsError


def load(tmp_path: Path, dotenv: str = "", **env: str) -> settings.Settings:
    path = tmp_path / "test.env"
    path.write_text(dotenv)
    return settings.load(env=env, dotenv_path=path)


def test_defaults_start_with_every_optional_integration_off(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.database_url == "sqlite:///data/event_processor.db"
    assert s.sqlite_path == "data/event_processor.db"
    assert not (s.backup_enabled or s.sqs_control_enabled or s.telegram_enabled or s.influxdb_enabled)
    assert not (s.sentry_enabled or s.mdash_enabled)
    assert s.backup_status_path == str(Path("data") / "backup_status.json")
    assert s.backup_retention_days == 30
    assert s.sqs_queue == "automation-control"
    assert s.onepassword_source == ""


def test_dotenv_overrides_defaults_and_the_environment_overrides_dotenv(tmp_path: Path) -> None:
    dotenv = "DEVICE_NAME=from-dotenv\nBACKUP_S3_BUCKET=dotenv-bucket\nUSER_TZ=Europe/London\n"
    s = load(tmp_path, dotenv, DEVICE_NAME="from-env")
    assert s.device_name == "from-env"
    assert s.backup_s3_bucket == "dotenv-bucket"
    assert s.user_tz == "Europe/London"


def test_unknown_environment_variables_are_ignored(tmp_path: Path) -> None:
    s = load(tmp_path, HOME="/root", SOMETHING_ELSE="x")
    assert not hasattr(s, "something_else")


def test_backup_status_file_lives_beside_the_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "ep.db"
    s = load(tmp_path, TABLESPACE_PATH=str(db))
    assert s.sqlite_path == str(db)
    assert s.backup_status_path == str(db.parent / "backup_status.json")
    pg = load(tmp_path, DATABASE_URL="postgresql+psycopg://ep@127.0.0.1/ep")
    assert pg.sqlite_path is None
    assert pg.backup_status_path == str(Path("data") / "backup_status.json")
    explicit = load(tmp_path, BACKUP_STATUS_PATH="/tmp/x.json")
    assert explicit.backup_status_path == "/tmp/x.json"


def test_aws_settings_and_the_secret_key_stays_out_of_describe(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY="very-secret-key",
        AWS_ENDPOINT_URL="http://minio:9000",
        AWS_DEFAULT_REGION="eu-west-1",
    )
    assert (s.aws_access_key_id, s.aws_endpoint_url, s.aws_region) == (
        "AKIAEXAMPLE",
        "http://minio:9000",
        "eu-west-1",
    )
    assert "very-secret-key" not in repr(s)
    assert "very-secret-key" not in str(settings.describe(s))
    assert "AWS_SECRET_ACCESS_KEY" in settings.SECRET_NAMES


def test_sqs_control_needs_a_queue(tmp_path: Path) -> None:
    s = load(tmp_path, SNS_CONTROL_ENABLED="true", SQS_QUEUE="home-control")
    assert s.sqs_control_enabled and s.sqs_queue == "home-control"
    with pytest.raises(SettingsError) as err:
        load(tmp_path, SNS_CONTROL_ENABLED="true", SQS_QUEUE=" ")
    assert err.value.name == "SQS_QUEUE"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BACKUP_S3_BUCKET", "no"),
        ("BACKUP_S3_BUCKET", "bad bucket/name"),
        ("BACKUP_RETENTION_DAYS", "0"),
        ("BACKUP_RETENTION_DAYS", "a month"),
        ("BACKUP_MAX_AGE_HOURS", "0"),
        ("AWS_ENDPOINT_URL", "minio:9000"),
        ("AWS_DEFAULT_REGION", ""),
        ("SNS_CONTROL_ENABLED", "sometimes"),
        ("SQS_WAIT_SECONDS", "21"),
        ("OP_VAULT", "vault-without-server"),
        ("USER_TZ", "Mars/Olympus"),
        ("APP_FLASK_HTTP_PORT", "70000"),
        ("LOG_FORMAT", "xml"),
        ("TELEGRAM_BOT_TOKEN", "no-colon"),
        ("MQTT_PUB_TOPIC_CSV", "meter/#/x"),
        ("AUDIT_BUFFER_SIZE", "0"),
        ("CLOCK_OFFSET_WARNING_SECONDS", "soon"),
    ],
)
def test_a_bad_value_names_its_setting(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(tmp_path, **{name: value})
    named = {"OP_VAULT": "OP_CONNECT_SERVER"}.get(name, name)
    assert err.value.name == named
    assert str(err.value).startswith(f"setting {named}:")


def test_a_secret_value_is_not_repeated_in_its_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load(tmp_path, AWS_ENDPOINT_URL="s3.example.com/?key=hunter2")
    assert "hunter2" not in str(err.value)


def test_trusted_proxies_take_addresses_networks_and_host_names(tmp_path: Path) -> None:
    assert load(tmp_path).trusted_proxies == ()
    s = load(tmp_path, APP_TRUSTED_PROXIES=" 127.0.0.1, 172.16.0.0/12 ,ngrok,::1, proxy.lan ")
    assert s.trusted_proxies == ("127.0.0.1", "172.16.0.0/12", "ngrok", "::1", "proxy.lan")
    for bad in ("10.0.0.0/40", "not a host", "-bad", "http://ngrok"):
        with pytest.raises(SettingsError) as err:
            load(tmp_path, APP_TRUSTED_PROXIES=bad)
        assert err.value.name == "APP_TRUSTED_PROXIES"


def test_backup_encryption_key_must_be_a_fernet_key_and_is_never_repeated(tmp_path: Path) -> None:
    from app.ops import backup_crypto

    key = backup_crypto.generate_key()
    s = load(tmp_path, BACKUP_ENCRYPTION_KEY=key)
    assert s.backup_encryption_key == key
    assert key not in repr(s) and "backup_encryption_key" not in settings.describe(s)
    for bad in ("short", key[:-4], "!" * 44):
        with pytest.raises(SettingsError) as err:
            load(tmp_path, BACKUP_ENCRYPTION_KEY=bad)
        assert err.value.name == "BACKUP_ENCRYPTION_KEY" and bad not in str(err.value)
