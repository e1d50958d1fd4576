"""The original's page URLs, the log-level page, Sentry's test event and feedback, footer and Grafana link."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from app.core.settings import Settings
from app.ops import observability
from app.store import db, registry
from app.web import create_app
from tests.ops.test_observability import Recorder
from tests.support import wait_for
from tests.web.test_pages import page_app

PASSWORD_HASH = generate_password_hash("pw-legacy", method="pbkdf2:sha256:1000")


@pytest.fixture
def make_client(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., FlaskClient]]:
    engines = []

    def make(login: bool = False, **env: str) -> FlaskClient:
        settings = make_settings(TABLESPACE_PATH=str(tmp_path / f"legacy{len(engines)}.db"), **env)
        engine = db.make_engine(settings.database_url)
        engines.append(engine)
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        with sessions() as s:
            registry.ensure_builtin(s, settings.device_name)
        app: Flask = create_app(settings, sessions) if login else page_app(settings, sessions, _presence())
        if login:
            app.config.update(TESTING=True)
        return app.test_client()

    yield make
    for engine in engines:
        engine.dispose()


def _presence():  # type: ignore[no-untyped-def]
    from app.engine.presence import Presence

    return Presence()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/event_log", "/events"),
        ("/config", "/config/schedule"),
        ("/input_config", "/config/inputs"),
        ("/input_link", "/config/links"),
        ("/output_config", "/config/outputs"),
        ("/output_link", "/config/links"),
    ],
)
def test_the_original_page_urls_redirect_to_their_new_pages(make_client, old: str, new: str) -> None:
    client = make_client()
    response = client.get(old)
    assert response.status_code == 301 and response.headers["Location"] == new
    assert client.get(new).status_code == 200
    # a form the original posted to its own page lands on the new page, fetched with GET
    posted = client.post(old, data={"device_id": "1"})
    assert posted.status_code == 303 and posted.headers["Location"] == new


def test_the_old_urls_are_behind_login_like_every_page(make_client) -> None:
    client = make_client(login=True)
    for old in ("/event_log", "/config", "/logging?level=DEBUG", "/debug-sentry"):
        response = client.get(old)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login"), old


def test_logging_with_a_level_asks_then_sets_it(make_client, restore_logging) -> None:
    client = make_client()
    logging.getLogger().setLevel(logging.INFO)
    response = client.get("/logging?level=debug")
    assert response.status_code == 302 and response.headers["Location"] == "/settings/logging?level=DEBUG"
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    # a bookmark must not change anything by itself: the page shows the wanted level, preselected
    assert observability.current_level() == "INFO"
    assert '<option value="DEBUG" selected>' in page and "Set DEBUG" in page
    saved = client.post("/settings/logging", data={"level": "DEBUG"})
    assert saved.status_code == 302 and observability.current_level() == "DEBUG"
    assert "The log level is now DEBUG." in client.get("/settings/logging").get_data(as_text=True)
    # without a level (a 500 in the original) and with a bad one: the page, with a message
    assert client.get("/logging").headers["Location"] == "/settings/logging"
    bad = client.get("/settings/logging?level=LOUD")
    assert bad.status_code == 400 and "&#39;LOUD&#39; is not one of" in bad.get_data(as_text=True)
    refused = client.post("/settings/logging", data={"level": "LOUD"})
    assert refused.status_code == 400 and observability.current_level() == "DEBUG"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def test_footer_shows_where_and_when_it_was_served_and_the_render_time(make_client) -> None:
    page = make_client(DEVICE_NAME="hub-a", USER_TZ="Europe/Paris").get("/").get_data(as_text=True)
    footer = re.search(
        r"Served by hub-a at (\S+ \S+) \(Europe/Paris\) in <span class=\"render-time\">(\d+)</span> ms", page
    )
    assert footer is not None, page[-600:]
    assert int(footer.group(2)) >= 0


def logged_in(make_client, **env: str) -> FlaskClient:
    client = make_client(login=True, APP_ADMIN_PASSWORD_HASH=PASSWORD_HASH, **env)
    client.application.config["WTF_CSRF_ENABLED"] = False
    assert client.post("/login", data={"username": "admin", "password": "pw-legacy"}).status_code == 302
    return client


def test_grafana_link_in_the_navigation_where_the_original_redirected_metrics(make_client) -> None:
    page = logged_in(make_client).get("/").get_data(as_text=True)
    assert "Log out" in page and "nav-grafana" not in page
    page = (
        logged_in(make_client, GRAFANA_URL="https://grafana.example/d/home").get("/").get_data(as_text=True)
    )
    assert 'class="nav-link nav-grafana" href="https://grafana.example/d/home"' in page


def test_debug_sentry_without_a_dsn_says_so(make_client) -> None:
    client = make_client()
    page = client.get("/debug-sentry").get_data(as_text=True)
    assert "Sentry is off" in page
    assert client.post("/debug-sentry").status_code == 200  # nothing to fail for


@pytest.fixture
def sentry_recorder() -> Iterator[Recorder]:
    import sentry_sdk

    recorder = Recorder()
    yield recorder
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # no DSN in the test environment: a disabled client
    recorder.close()


def envelopes(recorder: Recorder) -> list[list[dict]]:
    """Each envelope the stand-in got, as its list of JSON lines (headers and payloads)."""
    found = []
    for req in list(recorder.requests):
        if req["path"] == "/api/1/envelope/":
            found.append([json.loads(line) for line in req["body"].decode().splitlines() if line.strip()])
    return found


def test_sentry_test_event_then_the_feedback_form_sends_real_envelopes(
    make_client, make_settings, sentry_recorder: Recorder, restore_logging
) -> None:
    import sentry_sdk

    dsn = f"http://public@127.0.0.1:{sentry_recorder.port}/1"
    client = make_client(SENTRY_DSN=dsn)
    client.application.testing = False  # a failing view becomes the 500 page, as in production
    assert observability.init_sentry(make_settings(SENTRY_DSN=dsn))
    assert "Send a test event" in client.get("/debug-sentry").get_data(as_text=True)
    failed = client.post("/debug-sentry")
    assert failed.status_code == 500
    page = failed.get_data(as_text=True)
    event_id = re.search(r'name="event_id" value="([0-9a-f]{32})"', page)
    assert event_id is not None and "Tell us what happened" in page
    sentry_sdk.flush(5)
    wait_for(lambda: any(item.get("type") == "event" for env in envelopes(sentry_recorder) for item in env))
    error = next(env for env in envelopes(sentry_recorder) if env[0].get("event_id") == event_id.group(1))
    assert "ZeroDivisionError" in json.dumps(error)

    sent = client.post(
        "/sentry-feedback",
        data={
            "event_id": event_id.group(1),
            "name": "Ann",
            "email": "",
            "comments": "pressed the test button",
        },
    )
    assert sent.status_code == 302
    sentry_sdk.flush(5)

    def feedback() -> dict | None:
        for env in envelopes(sentry_recorder):
            for header, item in zip(env[1::2], env[2::2], strict=False):
                if header.get("type") == "feedback":
                    return item
        return None

    item = wait_for(feedback, what="a feedback envelope")
    context = item["contexts"]["feedback"]
    assert context["associated_event_id"] == event_id.group(1)
    assert context["message"] == "pressed the test button" and context["name"] == "Ann"
    assert "contact_email" not in context


def test_feedback_refuses_bad_input_with_messages(make_client) -> None:
    client = make_client()
    assert client.post("/sentry-feedback", data={"event_id": "nope", "comments": "x"}).status_code == 400
    page = client.post("/sentry-feedback", data={"event_id": "a" * 32, "comments": "", "name": "n" * 101})
    text = page.get_data(as_text=True)
    assert page.status_code == 400 and "Say what happened." in text and "At most 100 characters." in text
