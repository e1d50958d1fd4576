"""Every setting flagged secret on Settings stays out of repr, describe(), log lines, pages and API answers.

The settings covered come from the flag (settings.SECRET_FIELDS), so a newly flagged secret is tested
without touching this file; each one's value carries MARK in the part that is secret.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from app.core import settings as settings_module
from app.core.settings import SECRET, SECRET_FIELDS, Settings
from app.engine.presence import Presence
from app.ops import observability
from app.store import db
from app.web import create_app

MARK = "s3cret"
# Secrets whose value has a form load() checks; the others take a plain marked value by their part.
FORMED = {
    "TELEGRAM_BOT_TOKEN": f"123456:{MARK}-telegram",
    "BACKUP_ENCRYPTION_KEY": MARK + "A" * 37 + "=",  # 44 characters of URL-safe base64: a Fernet key
    "APP_ADMIN_PASSWORD_HASH": f"pbkdf2:sha256:1000${MARK}salt$0123abcd",
}
BY_PART = {
    settings_module.WHOLE: f"{MARK}-{{name}}",
    settings_module.URL_PASSWORD: f"postgresql+psycopg://hub:{MARK}-{{name}}@127.0.0.1:1/ep",
    settings_module.URL_USERINFO: f"https://{MARK}-{{name}}@sentry.example/1",
    settings_module.LAST_SEGMENT: f"https://hc-ping.example/{MARK}-{{name}}",
}


def secret_env() -> dict[str, str]:
    """A marked value for every flagged setting, by its environment variable."""
    env = {}
    for secret_field in SECRET_FIELDS:
        name = secret_field.metadata["env"]
        env[name] = FORMED.get(name) or BY_PART[secret_field.metadata[SECRET]].format(name=name.lower())
    return env


@pytest.fixture
def secret_settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings(**secret_env(), TELEGRAM_CHAT_ROOM="-100123")
    for secret_field in SECRET_FIELDS:
        assert MARK in getattr(settings, secret_field.name), secret_field.name
    return settings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_the_flag_marks_the_known_secrets_and_names_their_variables() -> None:
    assert {"RABBITMQ_PASSWORD", "TELEGRAM_BOT_TOKEN", "DATABASE_URL", "APP_ADMIN_PASSWORD_HASH"} <= (
        settings_module.SECRET_NAMES
    )
    assert "OP_CONNECT_TOKEN" in settings_module.SECRET_NAMES  # read before Settings, not a field
    assert {f.name for f in SECRET_FIELDS} == settings_module.SECRET_ATTRIBUTES
    for secret_field in SECRET_FIELDS:
        assert not secret_field.repr, secret_field.name
    # A field named like a secret must carry the flag (or be shown here not to be one).
    # not secrets: an access key's id, a monitor's name, the vault the settings came from
    not_secret = {"aws_access_key_id", "cronitor_monitor_key", "onepassword_source"}
    named_like_one = {
        f.name
        for f in fields(Settings)
        if any(word in f.name for word in ("password", "token", "secret", "_key", "dsn"))
    }
    assert named_like_one - not_secret <= settings_module.SECRET_ATTRIBUTES


def test_no_secret_in_repr_or_the_start_up_description(secret_settings: Settings) -> None:
    assert MARK not in repr(secret_settings)
    described = settings_module.describe(secret_settings)
    assert MARK not in str(described)
    assert described["database"] == "127.0.0.1:1/ep"  # the host and database still show


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_secret_setting_is_redacted_from_a_log_line(
    secret_settings: Settings, restore_logging: None, log_format: str
) -> None:
    settings = settings_module.load(
        env={**_env_of(secret_settings), "LOG_FORMAT": log_format}, dotenv_path="/nonexistent/.env"
    )
    out = io.StringIO()
    observability.configure_logging(settings, out)
    log = logging.getLogger("test.secret_settings")
    values = secret_env()
    log.warning("every secret: %s", " ".join(values.values()), extra={"all": dict(values)})
    try:
        raise RuntimeError(f"failed with {values}")
    except RuntimeError:
        log.exception("and in a traceback")
    text = out.getvalue()
    assert "every secret" in text and "RuntimeError" in text
    assert MARK not in text


def _env_of(settings: Settings) -> dict[str, str]:
    # make_settings' own environment plus the marked secrets, to load again with another LOG_FORMAT
    return {
        "RABBITMQ_EXCHANGE": settings.rabbitmq_exchange,
        "APP_FLASK_HTTP_PORT": "0",
        "APP_FLASK_BIND_ADDRESS": "127.0.0.1",
        "TELEGRAM_CHAT_ROOM": "-100123",
        **secret_env(),
    }


def test_no_secret_setting_on_a_page_or_in_an_api_answer(secret_settings: Settings, tmp_path: Path) -> None:
    # The pages read the database through their own sessions; DATABASE_URL only has to hold its secret.
    engine = db.make_engine(f"sqlite:///{tmp_path / 'pages.db'}")
    db.upgrade(engine)
    app = create_app(secret_settings, db.session_factory(engine), Presence())
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True, TESTING=True)
    client = app.test_client()
    answered = []
    try:
        for rule in app.url_map.iter_rules():
            if "GET" not in (rule.methods or ()) or rule.arguments or rule.endpoint == "static":
                continue
            response = client.get(rule.rule)
            body = response.get_data(as_text=True)
            assert MARK not in body, rule.rule
            assert MARK not in str(response.headers), rule.rule
            if response.status_code == 200:
                answered.append(rule.rule)
    finally:
        engine.dispose()
    # The pages and the API answered (/api/health says 503 "starting" here: no hub threads run).
    assert {"/", "/events", "/charts", "/config/inputs", "/metrics", "/api/devices"} <= set(answered)
    assert len(answered) >= 15, answered
