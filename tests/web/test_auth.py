"""Tests for login, lock-out, CSRF, API tokens, the admin bootstrap and the session cookie."""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, url_for
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.security import generate_password_hash

from app.core.settings import Settings
from app.engine.presence import Presence
from app.store import db
from app.store.models import ApiToken, GeneralConfig, InputConfig, User, WebSession
from app.web import api_tokens, auth, create_app, login_check, login_throttle
from tests.web.test_api import StandInProcessor

PASSWORD = "correct horse battery"
# A cheap hash method keeps the tests fast; production hashes come from the default (scrypt).
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
MESSAGE = "Wrong username or password, or too many attempts; try again later."
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_web(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., tuple[Flask, Settings]]]:
    engines: list[sa.Engine] = []
    sessions_by_url: dict[str, sessionmaker[Session]] = {}

    def make(**env: str) -> tuple[Flask, Settings]:
        settings = make_settings(**env)
        if settings.database_url not in sessions_by_url:
            engine = db.make_engine(settings.database_url)
            db.upgrade(engine)
            engines.append(engine)
            sessions_by_url[settings.database_url] = db.session_factory(engine)
        return create_app(settings, sessions_by_url[settings.database_url], Presence()), settings

    yield make
    for engine in engines:
        engine.dispose()


def sessions_of(app: Flask) -> sessionmaker[Session]:
    with app.app_context():
        from app.web.context import ctx

        return ctx().session_factory  # type: ignore[return-value]


@pytest.fixture
def app(make_web: Callable[..., tuple[Flask, Settings]]) -> Flask:
    # The test client connects from 127.0.0.1: as a trusted proxy its X-Forwarded-For names the client.
    flask_app, _ = make_web(
        APP_ADMIN_PASSWORD_HASH=FAST_HASH,
        APP_LOGIN_MAX_FAILURES="3",
        APP_LOGIN_LOCKOUT_SECONDS="60",
        APP_TRUSTED_PROXIES="127.0.0.1",
    )
    return flask_app


@pytest.fixture
def clock(app: Flask) -> Clock:
    fake = Clock(1_700_000_000.0)
    app.extensions["event_processor_auth"].clock = fake
    return fake


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def csrf_from(client: FlaskClient, path: str = "/login") -> str:
    response = client.get(path)
    match = CSRF_FIELD.search(response.get_data(as_text=True))
    assert match, (path, response.status_code)
    return match.group(1)


def login(
    client: FlaskClient,
    username: str = "admin",
    password: str = PASSWORD,
    ip: str | None = None,
    **extra: str,
) -> Any:
    headers = {"X-Forwarded-For": ip} if ip else {}
    token = csrf_from(client)
    form = {"username": username, "password": password, "csrf_token": token, **extra}
    return client.post("/login", data=form, headers=headers)


def logged_in(client: FlaskClient) -> bool:
    return client.get("/settings/tokens").status_code == 200


def admin_row(app: Flask) -> User:
    with sessions_of(app)() as s:
        row = s.scalars(sa.select(User).where(User.username == "admin")).one()
        s.expunge(row)
        return row


# ---- every route is guarded -----------------------------------------------------------------


def _sample_values(app: Flask, rule: Any) -> list[dict[str, Any]]:
    """URL values for the rule: one set, or one per choice of an any(...) part (every choice is a route)."""
    choices: list[dict[str, Any]] = [{}]
    for name in rule.arguments:
        converter = rule._converters[name]
        if type(converter).__name__ == "AnyConverter":
            options: list[Any] = sorted(converter.items)
        elif type(converter).__name__ in ("IntegerConverter", "FloatConverter"):
            options = [1]
        else:
            options = ["x"]
        choices = [{**values, name: option} for values in choices for option in options]
    return choices


def test_every_route_except_the_public_ones_requires_login(app: Flask, client: FlaskClient) -> None:
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in auth.PUBLIC_ENDPOINTS or rule.endpoint.split(".")[0] in auth.PUBLIC_BLUEPRINTS:
            continue
        for values in _sample_values(app, rule):
            with app.test_request_context():
                path = url_for(rule.endpoint, **values)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                response = client.open(path, method=method)
                if path.startswith("/api") or path == "/metrics":  # scrapers need a 401, not a redirect
                    assert response.status_code == 401, (method, path)
                    assert response.json == {"error": "login required"}
                else:
                    assert response.status_code == 302, (method, path)
                    assert response.location.startswith("/login?next="), (method, path)
                checked += 1
    assert checked >= 10  # the API alone has more; a smaller number means the walk is broken


def test_public_routes_need_no_login(client: FlaskClient) -> None:
    assert client.get("/login").status_code == 200
    assert client.get("/api/health").status_code in (200, 503)
    assert client.get("/assets/bootstrap/css/bootstrap.min.css").status_code == 200
    assert client.get("/static/app.css").status_code == 200


def test_unknown_paths_do_not_reveal_themselves(client: FlaskClient) -> None:
    assert client.get("/no/such/page").status_code == 302
    assert client.get("/api/no/such/thing").status_code == 401


def test_login_disabled_flag_switches_the_guard_off(app: Flask, client: FlaskClient) -> None:
    app.config["LOGIN_DISABLED"] = True
    assert client.get("/api/devices").status_code == 200


# ---- login and logout -----------------------------------------------------------------------


def test_login_then_logout(client: FlaskClient) -> None:
    response = login(client)
    assert response.status_code == 302
    assert response.location == "/"
    assert logged_in(client)
    assert client.get("/api/devices").status_code == 200
    # Logging out needs the CSRF token too.
    assert client.post("/logout").status_code == 400
    assert logged_in(client)
    response = client.post("/logout", data={"csrf_token": csrf_from(client, "/settings/tokens")})
    assert response.status_code == 302
    assert response.location == "/login"
    assert not logged_in(client)


def test_login_records_last_login(app: Flask, client: FlaskClient, clock: Clock) -> None:
    login(client)
    assert admin_row(app).last_login == datetime(2023, 11, 14, 22, 13, 20)


@pytest.mark.parametrize(
    ("username", "password"), [("admin", "wrong"), ("nobody", PASSWORD), ("", PASSWORD), ("admin", "")]
)
def test_failed_login_says_the_same_whatever_the_reason(
    client: FlaskClient, username: str, password: str
) -> None:
    response = login(client, username, password)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert MESSAGE in page
    assert password not in page or not password
    assert not logged_in(client)


def test_login_page_redirects_a_logged_in_user(client: FlaskClient) -> None:
    login(client)
    response = client.get("/login?next=/settings/tokens")
    assert response.status_code == 302
    assert response.location == "/settings/tokens"


def test_page_redirect_carries_next_and_login_follows_it(client: FlaskClient) -> None:
    response = client.get("/settings/tokens?x=1")
    assert response.location == "/login?next=%2Fsettings%2Ftokens%3Fx%3D1"
    page = client.get(response.location).get_data(as_text=True)
    assert 'name="next" value="/settings/tokens?x=1"' in page
    response = login(client, next="/settings/tokens?x=1")
    assert response.location == "/settings/tokens?x=1"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/\r\nLocation: https://evil.example",
        "",
    ],
)
def test_external_next_urls_are_refused(client: FlaskClient, target: str) -> None:
    response = login(client, next=target)
    assert response.status_code == 302
    assert response.location == "/"


def test_safe_next_keeps_local_paths() -> None:
    assert auth.safe_next("/events?input=door") == "/events?input=door"
    assert auth.safe_next(None) == "/"


# ---- lock-out and rate limit ----------------------------------------------------------------


def test_failures_grow_a_delay_instead_of_locking_the_account(
    app: Flask, client: FlaskClient, clock: Clock
) -> None:
    for _ in range(3):
        assert MESSAGE in login(client, password="wrong", ip="10.0.0.8").get_data(as_text=True)
    row = admin_row(app)
    assert row.failed_logins == 3
    assert row.locked_until == datetime(2023, 11, 14, 22, 13, 21)  # the first delay: 1 s
    # During the delay even the right password is refused, and the answer is the same.
    response = login(client, ip="10.0.0.9")
    assert MESSAGE in response.get_data(as_text=True)
    assert not logged_in(client)
    # Each further failure doubles the delay: 2 s, 4 s, ... up to APP_LOGIN_LOCKOUT_SECONDS (60).
    delays = []
    for _ in range(8):
        clock.now = (admin_row(app).locked_until - datetime(1970, 1, 1)).total_seconds()  # type: ignore[operator]
        login(client, password="wrong", ip="10.0.0.8")
        row = admin_row(app)
        delays.append(round((row.locked_until - datetime(1970, 1, 1)).total_seconds() - clock.now))  # type: ignore[operator]
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert admin_row(app).failed_logins == 11
    clock.now += 61
    assert login(client, ip="10.0.0.9").status_code == 302
    row = admin_row(app)
    assert row.locked_until is None
    assert row.failed_logins == 0


def test_growing_delay() -> None:
    assert [login_throttle.growing_delay(n, 5, 300) for n in range(4, 16)] == [
        0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300,
    ]  # fmt: skip
    assert login_throttle.growing_delay(10**6, 5, 300) == 300


def test_lock_in_the_database_is_honoured(app: Flask, client: FlaskClient, clock: Clock) -> None:
    with sessions_of(app)() as s:
        row = s.scalars(sa.select(User)).one()
        row.locked_until = datetime(2023, 11, 14, 22, 13, 20) + timedelta(seconds=5)
        s.commit()
    assert login(client).status_code == 200
    with sessions_of(app)() as s:
        row = s.scalars(sa.select(User)).one()
        row.locked_until = datetime(2023, 11, 14, 22, 13, 20) - timedelta(seconds=5)
        s.commit()
    assert login(client).status_code == 302


def test_success_resets_the_failure_count(app: Flask, client: FlaskClient, clock: Clock) -> None:
    login(client, password="wrong")
    login(client, password="wrong")
    assert admin_row(app).failed_logins == 2
    assert login(client).status_code == 302
    assert admin_row(app).failed_logins == 0


def test_one_address_cannot_try_many_usernames(client: FlaskClient, clock: Clock) -> None:
    limit = 3 * auth.IP_FAILURE_FACTOR
    for n in range(limit):  # each to another (unknown) account: only the address's own count grows
        assert login(client, f"guess{n}", "x", ip="203.0.113.7").status_code == 200
    # Blocked: even the right password from that address is refused...
    assert MESSAGE in login(client, ip="203.0.113.7").get_data(as_text=True)
    assert not logged_in(client)
    # ...but the owner elsewhere is not, and the address is free again after the period.
    assert login(client, ip="198.51.100.1").status_code == 302
    client.post("/logout", data={"csrf_token": csrf_from(client, "/settings/tokens")})
    clock.now += 61
    assert login(client, ip="203.0.113.7").status_code == 302


def test_forwarded_for_is_trusted_only_from_a_local_proxy(client: FlaskClient, clock: Clock) -> None:
    remote = {"REMOTE_ADDR": "192.0.2.50"}
    for n in range(3 * auth.IP_FAILURE_FACTOR):
        token = csrf_from(client)
        client.post(
            "/login",
            data={"username": f"g{n}", "password": "x", "csrf_token": token},
            headers={"X-Forwarded-For": f"10.1.1.{n}"},
            environ_base=remote,
        )
    token = csrf_from(client)
    form = {"username": "admin", "password": PASSWORD, "csrf_token": token}
    response = client.post("/login", data=form, environ_base=remote, headers={"X-Forwarded-For": "10.9.9.9"})
    assert response.status_code == 200  # counted against 192.0.2.50 whatever the header said


def test_failure_window_delays_grow_and_old_failures_are_forgotten() -> None:
    window = auth.FailureWindow(limit=2, window=10)
    window.record("a", 0)
    assert window.wait("a", 0) == 0  # below the limit: no delay
    window.record("a", 1)
    assert window.wait("a", 1) == 1  # the limit reached: 1 s after the last failure
    window.record("a", 2)
    assert window.wait("a", 2) == 2
    assert window.blocked("a", 3.5)
    assert not window.blocked("a", 4.5)
    assert not window.blocked("b", 2)
    assert window.wait("a", 12.5) == 0  # every failure older than the window: forgotten


def test_failure_window_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login_throttle, "MAX_TRACKED_ADDRESSES", 5)
    window = auth.FailureWindow(limit=1, window=100)
    for n in range(8):
        window.record(f"10.0.0.{n}", 1)
    assert len(window._failures) == 5
    assert window.evicted == 3
    assert not window.blocked("10.0.0.0", 1.5)  # forgotten first
    assert window.blocked("10.0.0.7", 1.5)
    for _ in range(500):
        window.record("10.0.0.7", 2)
    assert len(window._failures["10.0.0.7"]) <= window.limit + 64


# ---- CSRF -----------------------------------------------------------------------------------


def test_login_form_without_csrf_token_is_rejected(client: FlaskClient) -> None:
    response = client.post("/login", data={"username": "admin", "password": PASSWORD})
    assert response.status_code == 400
    assert not logged_in(client)


def test_form_post_without_csrf_changes_nothing(app: Flask, client: FlaskClient) -> None:
    login(client)
    response = client.post("/settings/tokens", data={"name": "sneaky"})
    assert response.status_code == 400
    with sessions_of(app)() as s:
        assert s.scalars(sa.select(ApiToken)).all() == []


@pytest.fixture
def processor(app: Flask) -> Iterator[StandInProcessor]:
    with sessions_of(app)() as s:
        s.add(InputConfig(device_key="door", device_type="Contact", device_enabled=False))
        s.commit()
    stand_in = StandInProcessor(sessions_of(app))  # type: ignore[arg-type]
    stand_in.start()
    yield stand_in
    stand_in.done.set()
    stand_in.join(timeout=5)


def door_enabled(app: Flask) -> bool | None:
    with sessions_of(app)() as s:
        return s.scalars(sa.select(InputConfig.device_enabled)).one()


def test_session_json_write_needs_the_csrf_header(
    app: Flask, client: FlaskClient, processor: StandInProcessor
) -> None:
    login(client)
    response = client.patch("/api/inputs/1", json={"device_enabled": True})
    assert response.status_code == 400
    assert response.json is not None and "error" in response.json
    assert door_enabled(app) is False
    token = csrf_from(client, "/settings/tokens")
    response = client.patch("/api/inputs/1", json={"device_enabled": True}, headers={"X-CSRFToken": token})
    assert response.status_code == 200, response.json
    assert door_enabled(app) is True


# ---- API tokens -----------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_bearer_token_works_for_the_api_without_csrf(
    app: Flask, client: FlaskClient, processor: StandInProcessor, clock: Clock
) -> None:
    with sessions_of(app)() as s:
        token = auth.create_token(s, "admin", "script")
    assert token.startswith("ep_")
    assert client.get("/api/devices", headers=bearer(token)).status_code == 200
    response = client.patch("/api/inputs/1", json={"device_enabled": True}, headers=bearer(token))
    assert response.status_code == 200, response.json
    assert door_enabled(app) is True
    assert "Set-Cookie" not in response.headers  # a script's call leaves no session behind
    with sessions_of(app)() as s:
        assert s.scalars(sa.select(ApiToken.last_used)).one() == datetime(2023, 11, 14, 22, 13, 20)


def test_bearer_token_does_not_open_pages(app: Flask, client: FlaskClient) -> None:
    with sessions_of(app)() as s:
        token = auth.create_token(s, "admin", "script")
    response = client.get("/settings/tokens", headers=bearer(token))
    assert response.status_code == 302


def test_bad_bearer_token_is_refused_even_with_a_session(app: Flask, client: FlaskClient) -> None:
    assert client.get("/api/devices", headers=bearer("ep_nonsense")).status_code == 401
    login(client)
    # A call that names a token is judged by the token alone.
    assert client.get("/api/devices", headers=bearer("ep_nonsense")).status_code == 401
    assert client.get("/api/devices").status_code == 200


def test_tokens_page_creates_shows_once_and_revokes(app: Flask, client: FlaskClient) -> None:
    login(client)
    csrf = csrf_from(client, "/settings/tokens")
    response = client.post("/settings/tokens", data={"name": "backup script", "csrf_token": csrf})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    token = re.search(r'id="new-token" value="(ep_[^"]+)"', page)
    assert token is not None
    new_token = token.group(1)
    assert client.get("/api/devices", headers=bearer(new_token)).status_code == 200
    listing = client.get("/settings/tokens").get_data(as_text=True)
    assert new_token not in listing  # shown once only
    assert "backup script" in listing
    assert new_token[:10] in listing
    with sessions_of(app)() as s:
        row = s.scalars(sa.select(ApiToken)).one()
        token_id = row.id
        # Only the SHA-256 is stored: nothing in the table equals or contains the token.
        stored = s.execute(sa.text("SELECT * FROM api_token")).one()
    assert all(new_token not in str(value) for value in stored)
    assert row.token_hash == api_tokens.token_hash(new_token)
    assert client.post(f"/settings/tokens/{token_id}/revoke").status_code == 400  # no CSRF token
    assert client.get("/api/devices", headers=bearer(new_token)).status_code == 200
    response = client.post(f"/settings/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert response.status_code == 302
    assert client.get("/api/devices", headers=bearer(new_token)).status_code == 401
    assert "revoked" in client.get("/settings/tokens").get_data(as_text=True)


def test_token_and_password_changes_are_in_the_history_without_secrets(
    make_web: Callable[..., tuple[Flask, Settings]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Who made or revoked an API token, and who changed the password, is in the change history
    (the events page and /api/events) as an account change; neither the token nor a password is."""
    app, password = _generated_password(make_web, capsys)
    client = app.test_client()
    login(client, password=password)
    csrf = csrf_from(client, "/settings/tokens")
    form = {"name": "nightly export", "role": "read", "csrf_token": csrf}
    page = client.post("/settings/tokens", data=form)
    match = re.search(r'id="new-token" value="(ep_[^"]+)"', page.get_data(as_text=True))
    assert match is not None
    new_token = match.group(1)
    assert client.post("/settings/tokens", data={"name": " ", "csrf_token": csrf}).status_code == 400
    with sessions_of(app)() as s:
        token_id = s.scalars(sa.select(ApiToken.id)).one()
    for _ in range(2):  # the second revoke changes nothing: no second entry
        revoke = client.post(f"/settings/tokens/{token_id}/revoke", data={"csrf_token": csrf})
        assert revoke.status_code == 302
    new_password = "a much longer new passphrase"
    form = {
        "current_password": password,
        "new_password": new_password,
        "new_password_again": new_password,
        "csrf_token": csrf,
    }
    assert client.post("/settings/password", data=form).status_code == 302

    entries = client.get("/api/events?kind=change").get_json()["events"]
    assert [(e["action"], e["target_key"]) for e in entries] == [
        ("password_changed", "admin"),
        ("token_revoked", "nightly export"),
        ("token_created", "nightly export"),
    ]
    assert {e["actor"] for e in entries} == {"web:admin"}
    assert {e["target_kind"] for e in entries} == {"account"}
    created = entries[2]
    assert created["after"] == {"token": "nightly export", "role": "read-only (GET)"}
    assert created["before"] == {"token": None, "role": None}
    assert entries[1]["before"] == {"revoked": False} and entries[1]["after"] == {"revoked": True}
    assert entries[0]["after"] == {"password": "(hidden) changed"}
    shown = client.get("/events?kind=change").get_data(as_text=True)
    assert "token_created" in shown and "password_changed" in shown
    with sessions_of(app)() as s:
        stored = " ".join(str(v) for row in s.execute(sa.text("SELECT * FROM config_change")) for v in row)
    for secret in (new_token, new_token[:10], password, new_password):
        assert secret not in stored and secret not in shown
        assert secret not in str(entries)


def test_token_name_is_validated(app: Flask, client: FlaskClient) -> None:
    login(client)
    csrf = csrf_from(client, "/settings/tokens")
    for name in ("", "   ", "x" * 101, "bad\nname"):
        response = client.post("/settings/tokens", data={"name": name, "csrf_token": csrf})
        assert response.status_code == 400
        assert "invalid-feedback" in response.get_data(as_text=True)
    with sessions_of(app)() as s:
        assert s.scalars(sa.select(ApiToken)).all() == []


def test_revoking_an_unknown_token_is_404(client: FlaskClient) -> None:
    login(client)
    csrf = csrf_from(client, "/settings/tokens")
    assert client.post("/settings/tokens/999/revoke", data={"csrf_token": csrf}).status_code == 404
    assert client.post(f"/settings/tokens/{2**70}/revoke", data={"csrf_token": csrf}).status_code == 404


def test_create_token_for_an_unknown_user_fails(app: Flask) -> None:
    with sessions_of(app)() as s, pytest.raises(auth.TokenError):
        auth.create_token(s, "nobody", "x")


# ---- admin bootstrap and secret key ---------------------------------------------------------


GENERATED = re.compile(r"generated admin password for 'admin': (\S+) ")


def test_fresh_install_prints_a_password_once_and_never_logs_it(
    make_web: Callable[..., tuple[Flask, Settings]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    first, _ = make_web()
    printed = capsys.readouterr()
    passwords = GENERATED.findall(printed.err)
    assert len(passwords) == 1
    assert printed.out == ""
    for record in caplog.records:  # what a log shipper or Sentry's breadcrumbs would carry
        assert passwords[0] not in record.getMessage()
    assert any("printed it on the console" in r.getMessage() for r in caplog.records)
    with sessions_of(first)() as s:
        stored = s.scalars(sa.select(User.password_hash)).one()
    assert passwords[0] not in stored
    assert login(first.test_client(), password=passwords[0]).status_code == 302
    second, _ = make_web()
    assert GENERATED.findall(capsys.readouterr().err) == []
    assert login(second.test_client(), password=passwords[0]).status_code == 302


def _generated_password(make_web: Callable[..., tuple[Flask, Settings]], capsys: Any) -> tuple[Flask, str]:
    app, _ = make_web()
    return app, GENERATED.findall(capsys.readouterr().err)[0]


def test_env_hash_overrides_the_stored_password(
    make_web: Callable[..., tuple[Flask, Settings]], capsys: pytest.CaptureFixture[str]
) -> None:
    first, generated = _generated_password(make_web, capsys)
    old_client = first.test_client()
    login(old_client, password=generated)
    assert logged_in(old_client)
    second, _ = make_web(APP_ADMIN_PASSWORD_HASH=FAST_HASH)
    client = second.test_client()
    assert login(client, password=generated).status_code == 200
    assert login(client).status_code == 302
    # A session from before the change no longer counts (same key, changed password).
    client.set_cookie("session", old_client.get_cookie("session").value)  # type: ignore[union-attr]
    assert not logged_in(client)


def test_secret_key_lives_in_its_own_0600_file(make_web: Callable[..., tuple[Flask, Settings]]) -> None:
    first, settings = make_web()
    path = auth.secret_key_path(settings)
    assert path.parent == Path(settings.sqlite_path).parent  # type: ignore[arg-type]
    assert path.read_text().strip() == first.secret_key
    assert len(str(first.secret_key)) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sessions_of(first)() as s:
        assert (
            s.scalars(sa.select(GeneralConfig).where(GeneralConfig.config_key == "flask-secret-key")).all()
            == []
        )
    second, _ = make_web()
    assert second.secret_key == first.secret_key
    third, _ = make_web(APP_SECRET_KEY="from-the-environment")
    assert third.secret_key == "from-the-environment"


def test_a_key_kept_in_the_database_moves_to_the_file_and_sessions_survive(
    make_web: Callable[..., tuple[Flask, Settings]], caplog: pytest.LogCaptureFixture
) -> None:
    first, settings = make_web(APP_ADMIN_PASSWORD_HASH=FAST_HASH)
    client = first.test_client()
    login(client)
    path = auth.secret_key_path(settings)
    old_key = path.read_text().strip()
    # As an older version left it: the key in general_config, no file.
    path.unlink()
    with sessions_of(first)() as s:
        s.add(GeneralConfig(config_key="flask-secret-key", config_value=old_key))
        s.commit()
    caplog.set_level(logging.INFO)
    second, _ = make_web(APP_ADMIN_PASSWORD_HASH=FAST_HASH)
    assert second.secret_key == old_key
    assert path.read_text().strip() == old_key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("moved from the database" in r.getMessage() for r in caplog.records)
    with sessions_of(second)() as s:
        assert (
            s.scalars(sa.select(GeneralConfig).where(GeneralConfig.config_key == "flask-secret-key")).all()
            == []
        )
    carried = second.test_client()
    carried.set_cookie("session", client.get_cookie("session").value)  # type: ignore[union-attr]
    assert logged_in(carried)  # the same key: a browser logged in before the upgrade stays logged in


def test_a_world_readable_key_file_is_fixed(
    make_web: Callable[..., tuple[Flask, Settings]], caplog: pytest.LogCaptureFixture
) -> None:
    _, settings = make_web()
    path = auth.secret_key_path(settings)
    path.chmod(0o644)
    caplog.set_level(logging.WARNING)
    make_web()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("set to mode 0600" in r.getMessage() for r in caplog.records)


# ---- cookie and logs ------------------------------------------------------------------------


def _session_cookie(response: Any) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies
    return cookies[-1]


def test_session_cookie_flags(client: FlaskClient) -> None:
    cookie = _session_cookie(login(client))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_behind_https(client: FlaskClient) -> None:
    https = {"X-Forwarded-Proto": "https", "Referer": "https://localhost/login"}
    token = csrf_from(client)
    response = client.post(
        "/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token}, headers=https
    )
    assert response.status_code == 302
    cookie = _session_cookie(response)
    assert "Secure" in cookie
    assert "HttpOnly" in cookie


def test_session_cookie_secure_when_forced(make_web: Callable[..., tuple[Flask, Settings]]) -> None:
    forced, _ = make_web(APP_ADMIN_PASSWORD_HASH=FAST_HASH, APP_SESSION_COOKIE_SECURE="true")
    assert "Secure" in _session_cookie(forced.test_client().get("/login"))
    off, _ = make_web(APP_ADMIN_PASSWORD_HASH=FAST_HASH, APP_SESSION_COOKIE_SECURE="false")
    assert "Secure" not in _session_cookie(
        off.test_client().get("/login", headers={"X-Forwarded-Proto": "https"})
    )


def test_passwords_never_reach_the_log(
    client: FlaskClient, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    login(client, "admin", "wrong-secret-1", ip="10.0.0.1")
    login(client, "nobody", "wrong-secret-2", ip="10.0.0.1")
    login(client, ip="10.0.0.1")
    failures = [r for r in caplog.records if r.getMessage().startswith("failed login")]
    assert len(failures) == 2
    assert all(r.levelno == logging.WARNING for r in failures)
    assert "'nobody'" in failures[1].getMessage() and "10.0.0.1" in failures[1].getMessage()
    for record in caplog.records:
        text = record.getMessage()
        assert "wrong-secret" not in text
        assert PASSWORD not in text


def test_tokens_page_with_login_disabled_sends_to_login(app: Flask, client: FlaskClient) -> None:
    app.config.update(LOGIN_DISABLED=True, WTF_CSRF_ENABLED=False)
    assert client.get("/settings/tokens").status_code == 302
    assert client.post("/settings/tokens", data={"name": "x"}).status_code == 302
    assert client.post("/settings/tokens/1/revoke").status_code == 302


def test_sessions_per_user_are_capped_and_the_oldest_ends(
    app: Flask, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    from app.core import health

    monkeypatch.setattr(login_check, "MAX_SESSIONS_PER_USER", 3)
    browsers = [app.test_client() for _ in range(5)]
    for browser in browsers:
        assert login(browser).status_code == 302
    with sessions_of(app)() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(WebSession)) == 3
    assert [logged_in(b) for b in browsers] == [False, False, True, True, True]
    assert health.counters()["web.sessions_dropped"] == 2


def test_a_login_while_the_database_cannot_write_is_kept_in_memory_and_still_ends_on_logout(
    app: Flask, client: FlaskClient, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk must not lock the owner out; the session then lives in memory, and logout ends it."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    engine = sessions_of(app).kw["bind"]

    def refuse_writes(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            raise OperationalError(statement, {}, Exception("database or disk is full"))

    event.listen(engine, "before_cursor_execute", refuse_writes)
    caplog.set_level(logging.WARNING)
    try:
        assert login(client).status_code == 302
        assert logged_in(client)
        assert any("kept in memory" in r.getMessage() for r in caplog.records)
        copy = app.test_client()
        copy.set_cookie("session", client.get_cookie("session").value)  # type: ignore[union-attr]
        assert logged_in(copy)
        response = client.post("/logout", data={"csrf_token": csrf_from(client, "/settings/tokens")})
    finally:
        event.remove(engine, "before_cursor_execute", refuse_writes)
    assert response.status_code == 302
    assert not logged_in(copy)  # the session is gone from memory even though no row could be deleted
