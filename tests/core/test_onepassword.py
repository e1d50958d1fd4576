"""1Password Connect: settings and secrets read by the real SDK from a local Connect API stand-in."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from app.core import onepassword, settings
from app.core.settings import Settings, SettingsError
from app.engine.presence import Presence
from app.ops import observability
from app.store import db
from app.web import auth, create_app
from tests.connect_standin import ConnectStandIn
from tests.support import free_port, wait_for
from tests.web.test_auth import logged_in, login

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "connect-token-eyJhbGciOiJFUzI1NiJ9.test"
APP = "event_processor"
REGION = "eu-west-1"
ADMIN_PASSWORD = "from the vault, not the env"
# Values that only 1Password holds; none may ever be printed or logged.
SECRETS = {
    "TELEGRAM_BOT_TOKEN": "123456:op-telegram-secret",
    "SENTRY_DSN": "https://opsentrykey9@sentry.example/42",
    "AWS_ACCESS_KEY_ID": "AKIAOPTESTKEY",
    "AWS_SECRET_ACCESS_KEY": "op-aws-secret-access-key",
    "APP_SECRET_KEY": "op-flask-secret-key",
    "INFLUXDB_TOKEN": "op-influx-secret-token",
    "MDASH_API_KEY": "op-mdash-secret",
    "CRONITOR_TELEMETRY_KEY": "op-cronitor-secret",
}


def fill_vault(standin: ConnectStandIn, vault_id: str, env_item: bool = True, secrets: bool = True) -> None:
    """The original's layout: ENV.<app> (settings) and the secret items, plus decoys in other sections."""
    if env_item:
        standin.add_item(
            vault_id,
            f"ENV.{APP}",
            [
                (APP, "USER_TZ", "Europe/Paris"),
                (APP, "TELEGRAM_CHAT_ROOM", "-1001"),
                (APP, "INFLUXDB_URL", "http://influx-from-env-item:8086"),
                (APP, "INFLUXDB_ORG", ""),  # blank: does not hide the InfluxDB item's org
                (APP, "INFLUXDB_BUCKET", "meter"),
                (APP, "NOT_A_SETTING", "ignored"),
                (APP, "OP_VAULT", "not-from-1password"),
                (None, "LOG_LEVEL", "DEBUG"),
                ("build", "DEVICE_NAME", "from-the-build-section"),
            ],
            category="SECURE_NOTE",
        )
    if not secrets:
        return
    standin.add_item(
        vault_id,
        "Telegram",
        [("other_app", "token", "999:other-app-token"), (APP, "token", SECRETS["TELEGRAM_BOT_TOKEN"])],
    )
    standin.add_item(vault_id, "Sentry", [(APP, "dsn", SECRETS["SENTRY_DSN"])])
    standin.add_item(
        vault_id,
        "AWS",
        [
            ("us-east-1", "akid", "AKIAWRONGREGION"),
            (REGION, "akid", SECRETS["AWS_ACCESS_KEY_ID"]),
            (REGION, "sak", SECRETS["AWS_SECRET_ACCESS_KEY"]),
        ],
    )
    standin.add_item(
        vault_id,
        "Frontend",
        [
            (None, "username", "opadmin"),
            (None, "password", "basic-auth-password"),
            ("Flask", "secret_key", SECRETS["APP_SECRET_KEY"]),
            (APP, "password_hash", auth.hash_password(ADMIN_PASSWORD)),
        ],
    )
    standin.add_item(
        vault_id,
        "InfluxDB",
        [
            ("local", "url", "http://influx-from-secret-item:8086"),
            ("local", "org", "home"),
            ("local", "token", SECRETS["INFLUXDB_TOKEN"]),
        ],
    )
    standin.add_item(vault_id, "mdash", [(None, "password", SECRETS["MDASH_API_KEY"])])
    standin.add_item(
        vault_id, "cronitor", [("other", "password", "wrong"), (None, "password", "op-cronitor-secret")]
    )


@pytest.fixture(scope="module")
def connect() -> Iterator[ConnectStandIn]:
    standin = ConnectStandIn(TOKEN).start()
    fill_vault(standin, standin.add_vault("Automation"))
    yield standin
    standin.stop()


@pytest.fixture
def fresh() -> Iterator[ConnectStandIn]:
    """A stand-in of its own, for tests that change its content or mode."""
    standin = ConnectStandIn(TOKEN).start()
    yield standin
    standin.stop()


def op_env(url: str, vault: str = "Automation", **extra: str) -> dict[str, str]:
    return {
        "OP_CONNECT_SERVER": url,
        "OP_CONNECT_TOKEN": TOKEN,
        "OP_VAULT": vault,
        "OP_CONNECT_ATTEMPTS": "2",
        "OP_CONNECT_TIMEOUT": "2",
        "AWS_DEFAULT_REGION": REGION,
        **extra,
    }


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ---- where the values come from -------------------------------------------------------------


def test_settings_come_from_the_env_item_and_the_secret_items(
    connect: ConnectStandIn, make_settings: Callable[..., Settings]
) -> None:
    s = make_settings(**op_env(connect.url))
    # ENV.<app>: its <app> section and fields in no section
    assert s.user_tz == "Europe/Paris"
    assert s.log_level == "DEBUG"
    assert s.telegram_chat_room == -1001
    assert s.influxdb_bucket == "meter"
    # the secret items, at <app> and <region>
    assert s.telegram_bot_token == SECRETS["TELEGRAM_BOT_TOKEN"]
    assert s.sentry_dsn == SECRETS["SENTRY_DSN"]
    assert s.aws_access_key_id == SECRETS["AWS_ACCESS_KEY_ID"]
    assert s.aws_secret_access_key == SECRETS["AWS_SECRET_ACCESS_KEY"]
    assert s.secret_key == SECRETS["APP_SECRET_KEY"]
    assert s.admin_user == "opadmin"
    assert s.admin_password_hash.startswith("pbkdf2:")
    assert s.influxdb_token == SECRETS["INFLUXDB_TOKEN"]
    assert s.mdash_api_key == SECRETS["MDASH_API_KEY"]
    assert s.cronitor_telemetry_key == SECRETS["CRONITOR_TELEMETRY_KEY"]
    assert s.telegram_enabled and s.influxdb_enabled and s.mdash_enabled and s.sentry_enabled
    # a field in ENV.<app> wins over the secret item; a blank one does not hide it
    assert s.influxdb_url == "http://influx-from-env-item:8086"
    assert s.influxdb_org == "home"
    assert s.onepassword_source == "1Password (vault Automation)"
    assert connect.requests and all(r["authorized"] for r in connect.requests)


def test_fields_in_other_sections_and_non_settings_are_ignored(
    connect: ConnectStandIn, make_settings: Callable[..., Settings]
) -> None:
    s = make_settings(**op_env(connect.url))
    assert s.device_name != "from-the-build-section"
    assert s.telegram_bot_token != "999:other-app-token"
    assert s.aws_access_key_id != "AKIAWRONGREGION"
    assert s.cronitor_telemetry_key != "wrong"
    fetched = onepassword.read(
        server=connect.url,
        token=TOKEN,
        vault="Automation",
        app_name=APP,
        aws_region=REGION,
        known=frozenset(settings.config_defaults()),
        attempts=1,
        timeout=2,
    ).values()
    assert "NOT_A_SETTING" not in fetched and "DEVICE_NAME" not in fetched
    assert not any(name.startswith("OP_") for name in fetched)  # 1Password cannot redirect itself


def test_a_field_in_an_unlabelled_section_counts_as_no_section(
    fresh: ConnectStandIn, make_settings: Callable[..., Settings]
) -> None:
    vault_id = fresh.add_vault("Automation")
    fresh.add_item(vault_id, f"ENV.{APP}", [("", "USER_TZ", "Europe/Oslo")])
    fresh.add_item(vault_id, "mdash", [("", "password", SECRETS["MDASH_API_KEY"])])
    s = make_settings(**op_env(fresh.url))
    assert s.user_tz == "Europe/Oslo"
    assert s.mdash_api_key == SECRETS["MDASH_API_KEY"]


def test_the_environment_and_dotenv_override_onepassword(connect: ConnectStandIn, tmp_path: Path) -> None:
    # The OP_* settings themselves may come from .env, as `task setup` writes them there.
    dotenv = tmp_path / ".env"
    op = op_env(connect.url)
    lines = [f'{k}="{v}"' for k, v in op.items()]
    dotenv.write_text("\n".join([*lines, 'USER_TZ="Asia/Tokyo"', 'LOG_LEVEL="ERROR"', ""]))
    env = {
        "TABLESPACE_PATH": str(tmp_path / "ep.db"),
        "LOG_LEVEL": "WARNING",
        "INFLUXDB_TOKEN": "env-influx-token",
    }
    s = settings.load(env=env, dotenv_path=dotenv)
    assert s.user_tz == "Asia/Tokyo"  # .env over 1Password
    assert s.log_level == "WARNING"  # the environment over .env and 1Password
    assert s.influxdb_token == "env-influx-token"  # the environment over a secret item
    assert s.telegram_bot_token == SECRETS["TELEGRAM_BOT_TOKEN"]  # the rest still from 1Password


def test_an_empty_dotenv_line_does_not_blank_a_vault_value(connect: ConnectStandIn, tmp_path: Path) -> None:
    # .env.example has `TELEGRAM_BOT_TOKEN=` and `INFLUXDB_TOKEN=` lines: "not set here", not "empty"
    dotenv = tmp_path / ".env"
    lines = [f"{k}='{v}'" for k, v in op_env(connect.url).items()]
    dotenv.write_text("\n".join([*lines, "TELEGRAM_BOT_TOKEN=", "INFLUXDB_TOKEN=''", "MQTT_USERNAME=", ""]))
    s = settings.load(env={"TABLESPACE_PATH": str(tmp_path / "ep.db")}, dotenv_path=dotenv)
    assert s.telegram_bot_token == SECRETS["TELEGRAM_BOT_TOKEN"]
    assert s.influxdb_token == SECRETS["INFLUXDB_TOKEN"]
    assert s.mqtt_username == ""  # an empty line for a setting the vault does not hold still applies


def test_a_missing_env_item_is_a_warning_and_the_secrets_still_load(
    fresh: ConnectStandIn, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    fill_vault(fresh, fresh.add_vault("Automation"), env_item=False)
    s = make_settings(**op_env(fresh.url), TELEGRAM_CHAT_ROOM="-5")
    assert s.telegram_bot_token == SECRETS["TELEGRAM_BOT_TOKEN"]
    assert s.user_tz != "Europe/Paris"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f'"ENV.{APP}" not found' in w for w in warnings), warnings


def test_missing_secret_items_and_fields_are_skipped(
    fresh: ConnectStandIn, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    vault_id = fresh.add_vault("Automation")
    fill_vault(fresh, vault_id, secrets=False)
    fresh.add_item(vault_id, "Frontend", [(None, "username", "opadmin")])  # no Flask.secret_key
    caplog.set_level(logging.DEBUG, logger="app.core.onepassword")
    s = make_settings(**op_env(fresh.url))
    assert s.user_tz == "Europe/Paris" and s.admin_user == "opadmin"
    assert not s.telegram_enabled and not s.mdash_enabled and s.secret_key == ""
    debug = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert 'no item "Telegram" event_processor.token for TELEGRAM_BOT_TOKEN' in debug
    assert 'no value at "Frontend" Flask.secret_key for APP_SECRET_KEY' in debug
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("by", ["name", "id"])
def test_the_vault_may_be_named_by_name_or_by_id(
    connect: ConnectStandIn, make_settings: Callable[..., Settings], by: str
) -> None:
    vault_id = connect.vaults[0]["id"]
    before = len(connect.requests)
    s = make_settings(**op_env(connect.url, vault="Automation" if by == "name" else vault_id))
    assert s.telegram_bot_token == SECRETS["TELEGRAM_BOT_TOKEN"]
    first = connect.requests[before]
    if by == "name":
        assert first["path"] == "/v1/vaults" and first["query"] == {"filter": 'name eq "Automation"'}
    else:
        assert first["path"] == f"/v1/vaults/{vault_id}"


def test_an_unknown_vault_names_op_vault(
    connect: ConnectStandIn, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(**op_env(connect.url, vault="Nowhere"))
    assert caught.value.name == "OP_VAULT"
    assert "'Nowhere'" in str(caught.value) and "Automation" in str(caught.value)


# ---- failures -------------------------------------------------------------------------------


def test_a_refused_token_names_op_connect_token_at_once(
    connect: ConnectStandIn, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    before = len(connect.requests)
    with pytest.raises(SettingsError) as caught:
        make_settings(**{**op_env(connect.url), "OP_CONNECT_TOKEN": "wrong-token"})
    assert caught.value.name == "OP_CONNECT_TOKEN"
    assert "HTTP 401" in str(caught.value) and "wrong-token" not in str(caught.value)
    assert len(connect.requests) == before + 1  # no retry
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_unreachable_server_is_retried_then_names_op_connect_server(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    url = closed_url()
    with pytest.raises(SettingsError) as caught:
        make_settings(**op_env(url))
    assert caught.value.name == "OP_CONNECT_SERVER"
    assert str(caught.value) == (
        f"setting OP_CONNECT_SERVER: 1Password Connect at {url} is unreachable after 2 attempts: "
        "connection refused"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"1Password Connect at {url} unreachable (connection refused); attempt 1 of 2, retrying in 1 s"
    ]
    assert TOKEN not in str(caught.value) + "".join(warnings)


def test_server_errors_and_timeouts_count_as_unreachable(
    fresh: ConnectStandIn, make_settings: Callable[..., Settings]
) -> None:
    fill_vault(fresh, fresh.add_vault("Automation"))
    fresh.mode = "503"
    with pytest.raises(SettingsError) as caught:
        make_settings(**op_env(fresh.url))
    assert caught.value.name == "OP_CONNECT_SERVER" and str(caught.value).endswith(
        "after 2 attempts: HTTP 503"
    )
    assert len(fresh.requests) == 2
    fresh.mode = "hang"
    try:
        with pytest.raises(SettingsError) as caught:
            make_settings(**op_env(fresh.url, OP_CONNECT_TIMEOUT="0.3"))
    finally:
        fresh.release.set()
    assert str(caught.value).endswith("after 2 attempts: no answer within 0.3 s")


def test_a_server_that_comes_up_during_the_backoff_is_used(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    standin = ConnectStandIn(TOKEN, port=free_port())
    fill_vault(standin, standin.add_vault("Automation"))
    result: dict[str, Any] = {}

    def load() -> None:
        try:
            result["settings"] = make_settings(**op_env(standin.url))
        except SettingsError as exc:
            result["error"] = exc

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_for(
            lambda: any("attempt 1 of 2" in r.getMessage() for r in caplog.records), what="first failure"
        )
        standin.start()
        loader.join(timeout=10)
    finally:
        standin.stop()
    assert "error" not in result, result
    assert result["settings"].telegram_bot_token == SECRETS["TELEGRAM_BOT_TOKEN"]


@pytest.mark.parametrize("missing", settings.OP_CONNECT_NAMES)
def test_two_of_the_three_op_settings_name_the_missing_one(
    make_settings: Callable[..., Settings], missing: str
) -> None:
    env = op_env(closed_url())
    del env[missing]
    with pytest.raises(SettingsError) as caught:
        make_settings(**env)
    assert caught.value.name == missing


def test_python_m_app_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    url = closed_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OP_")}
    env.update(op_env(url), PYTHONPATH=str(ROOT), TABLESPACE_PATH=str(tmp_path / "ep.db"))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"1Password Connect at {url} unreachable (connection refused); attempt 1 of 2, retrying in 1 s",
        f"event-processor: setting OP_CONNECT_SERVER: 1Password Connect at {url} is unreachable after 2 "
        "attempts: connection refused",
    ]
    assert TOKEN not in done.stderr
    assert time.monotonic() - started < 30


# ---- secrets from 1Password in use ----------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_secrets_from_onepassword_are_redacted_from_the_log(
    connect: ConnectStandIn, make_settings: Callable[..., Settings], restore_logging: None
) -> None:
    out = io.StringIO()
    observability.configure_logging(make_settings(**op_env(connect.url)), out)
    log = logging.getLogger("test.onepassword")
    log.warning("telegram %s influx %s", SECRETS["TELEGRAM_BOT_TOKEN"], SECRETS["INFLUXDB_TOKEN"])
    log.warning("aws %s mdash %s", SECRETS["AWS_SECRET_ACCESS_KEY"], SECRETS["MDASH_API_KEY"])
    text = out.getvalue()
    for name in ("TELEGRAM_BOT_TOKEN", "INFLUXDB_TOKEN", "AWS_SECRET_ACCESS_KEY", "MDASH_API_KEY"):
        assert SECRETS[name] not in text, name
    assert text.count(observability.REDACTED) == 4


def test_the_admin_password_hash_from_onepassword_lets_the_admin_log_in(
    connect: ConnectStandIn, make_settings: Callable[..., Settings]
) -> None:
    s = make_settings(**op_env(connect.url))
    engine = db.make_engine(s.database_url)
    try:
        db.upgrade(engine)
        client = create_app(s, db.session_factory(engine), Presence()).test_client()
        assert login(client, "opadmin", "wrong").status_code == 200
        assert not logged_in(client)
        response = login(client, "opadmin", ADMIN_PASSWORD)
        assert response.status_code == 302 and logged_in(client)
    finally:
        engine.dispose()


# ---- the command line -----------------------------------------------------------------------

TRICKY = {
    "USER_TZ": "Europe/London",
    "QUOTES": "say \"hi\" and 'bye'",
    "BACKSLASHES": "C:\\path\\n\\\\x\\",
    "NEWLINES": "line one\nline two\r\nline three\n",
    "DOLLAR": "$HOME and $ alone and $(cmd) and {braces}",
    "HASH": "value # not a comment",
    "SPACES": "  padded  ",
    "UNICODE": "Zürich — ✓",
    "EMPTY": "",
    "APP_ADMIN_PASSWORD_HASH": "pbkdf2:sha256:600000$Zx9$0a1b",
}


def test_dotenv_cli_round_trips_through_python_dotenv(
    fresh: ConnectStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vault_id = fresh.add_vault("Automation")
    fresh.add_item(
        vault_id,
        f"ENV.{APP}",
        [(APP, k, v) for k, v in TRICKY.items()]
        + [("build", "DOCKER_ONLY", "left out"), (APP, "OP_VAULT", "not-from-the-item")],
    )
    env = op_env(fresh.url)
    assert onepassword.main(["dotenv"], environ=env) == 0
    out = capsys.readouterr().out
    target = tmp_path / ".env"
    target.write_text(out)
    # blank fields are left out (they would hide a secret item's value); the OP_CONNECT_* values come
    # from the shell that ran it, so the container can read the secret items too
    op_lines = {k: env[k] for k in env if k.startswith("OP_")}
    assert dict(dotenv_values(target)) == {**{k: v for k, v in TRICKY.items() if v}, **op_lines}
    # Docker Compose expands $ in double-quoted and bare values: any value with a $ is single-quoted
    assert "APP_ADMIN_PASSWORD_HASH='pbkdf2:sha256:600000$Zx9$0a1b'" in out.splitlines()
    assert "DOLLAR='$HOME and $ alone and $(cmd) and {braces}'" in out.splitlines()
    # and settings read that file back as written
    s = settings.load(env={"TABLESPACE_PATH": str(tmp_path / "ep.db")}, dotenv_path=target)
    assert s.user_tz == "Europe/London"


def test_dotenv_cli_refuses_a_value_python_dotenv_would_expand(
    fresh: ConnectStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh.add_item(fresh.add_vault("Automation"), f"ENV.{APP}", [(APP, "TEMPLATE", "secret-${HOME}-value")])
    assert onepassword.main(["dotenv"], environ=op_env(fresh.url)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "TEMPLATE" in captured.err and "secret-" not in captured.err


def test_a_value_with_a_dollar_and_a_quote_is_refused() -> None:
    with pytest.raises(ValueError, match="Compose"):
        onepassword.dotenv_line("X", "it's $5")
    assert onepassword.dotenv_line("X", "it's 5") == 'X="it\'s 5"'


def test_check_cli_names_the_sources_and_prints_no_secret(connect: ConnectStandIn, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OP_")}
    env.update(op_env(connect.url), PYTHONPATH=str(ROOT), INFLUXDB_TOKEN="from-env")
    done = subprocess.run(
        [sys.executable, "-m", "app.core.onepassword", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "vault Automation" in out
    lines = {line.split()[2]: line for line in out.splitlines() if line.startswith("from 1Password")}
    assert "USER_TZ" in lines and f"ENV.{APP} {APP}.USER_TZ" in lines["USER_TZ"]
    assert "LOG_LEVEL" in lines and f"ENV.{APP} .LOG_LEVEL" in lines["LOG_LEVEL"]
    assert f"Telegram {APP}.token" in lines["TELEGRAM_BOT_TOKEN"]
    assert f"AWS {REGION}.sak" in lines["AWS_SECRET_ACCESS_KEY"]
    assert "overridden by the environment" in lines["INFLUXDB_TOKEN"]
    for value in [*SECRETS.values(), TOKEN, "Europe/Paris", "opadmin"]:
        assert value not in out + done.stderr, value


def test_the_cli_needs_the_op_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert onepassword.main(["check"], environ={"OP_CONNECT_SERVER": "http://127.0.0.1:1"}) == 2
    assert "OP_CONNECT_TOKEN" in capsys.readouterr().err
    assert onepassword.main(["dotenv"], environ={**op_env(closed_url()), "OP_CONNECT_ATTEMPTS": "1"}) == 2
    err = capsys.readouterr().err
    assert "setting OP_CONNECT_SERVER" in err and "unreachable after 1 attempt:" in err
