"""Security of the running hub over real HTTP: the lock-out race, sessions ended on the server, token
roles, unlock codes, security headers, the public health answer, trusted proxies and file modes."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from werkzeug.security import generate_password_hash

from app.core.settings import Settings
from app.hub import Hub
from app.store import accounts, db
from app.store.models import User, WebSession
from app.web import auth, security
from tests.hubtools import start_hub

PASSWORD = "correct horse battery staple"
FAST_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
MESSAGE = "Wrong username or password, or too many attempts; try again later."
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ROOT = Path(__file__).resolve().parents[2]


class Browser:
    """One browser: its own cookie jar, CSRF tokens read from the pages as a person's browser would."""

    def __init__(self, base: str, forwarded_for: str | None = None) -> None:
        self.base = base
        self.http = requests.Session()
        if forwarded_for:
            self.http.headers["X-Forwarded-For"] = forwarded_for

    def csrf(self, path: str = "/login") -> str:
        match = CSRF.search(self.http.get(self.base + path, timeout=10).text)
        assert match, path
        return match.group(1)

    def login(self, password: str = PASSWORD, username: str = "admin", code: str = "") -> requests.Response:
        form = {"username": username, "password": password, "csrf_token": self.csrf(), "unlock_code": code}
        return self.http.post(self.base + "/login", data=form, allow_redirects=False, timeout=30)

    def logged_in(self) -> bool:
        return (
            self.http.get(self.base + "/settings/tokens", allow_redirects=False, timeout=10).status_code
            == 200
        )

    def post(self, path: str, **form: str) -> requests.Response:
        form["csrf_token"] = self.csrf("/settings/tokens")
        return self.http.post(self.base + path, data=form, allow_redirects=False, timeout=30)


@pytest.fixture
def start_live(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., tuple[Hub, str]]]:
    """A real hub (real RabbitMQ and Mosquitto) serving over HTTP; the test client is a trusted proxy."""
    started: list[Hub] = []

    def start(**env: str) -> tuple[Hub, str]:
        settings = make_settings(
            **{
                "TABLESPACE_PATH": str(tmp_path / "data" / "event_processor.db"),
                "APP_ADMIN_PASSWORD_HASH": FAST_HASH,
                "APP_LOGIN_MAX_FAILURES": "5",
                "APP_LOGIN_LOCKOUT_SECONDS": "300",
                "APP_TRUSTED_PROXIES": "127.0.0.1",
                **env,
            }
        )
        hub = start_hub(settings)
        started.append(hub)
        return hub, f"http://127.0.0.1:{hub.port}"

    yield start
    for hub in started:
        hub.stop()


@pytest.fixture
def live(start_live: Callable[..., tuple[Hub, str]]) -> tuple[Hub, str]:
    return start_live()


def admin(hub: Hub) -> User:
    assert hub.sessions is not None
    with hub.sessions() as s:
        row = s.scalars(sa.select(User).where(User.username == "admin")).one()
        s.expunge(row)
        return row


# ---- the lock-out race ----------------------------------------------------------------------


def test_parallel_wrong_passwords_each_count(start_live: Callable[..., tuple[Hub, str]]) -> None:
    # Ten free tries, so that no delay starts while the eight parallel ones are in flight.
    hub, base = start_live(APP_LOGIN_MAX_FAILURES="10")
    browsers = [Browser(base, forwarded_for=f"198.51.100.{n}") for n in range(8)]
    forms = [
        {"username": "admin", "password": f"wrong-{n}", "csrf_token": b.csrf()}
        for n, b in enumerate(browsers)
    ]
    start = threading.Barrier(len(browsers))
    answers: list[int] = []

    def attempt(browser: Browser, form: dict[str, str]) -> None:
        start.wait()
        response = browser.http.post(base + "/login", data=form, allow_redirects=False, timeout=60)
        answers.append(response.status_code)

    workers = [threading.Thread(target=attempt, args=pair) for pair in zip(browsers, forms, strict=True)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=90)
    assert answers == [200] * 8  # all refused, none lost to an error
    # Eight parallel wrong passwords count eight, however they interleaved.
    assert admin(hub).failed_logins == 8
    assert admin(hub).locked_until is None
    for n in range(2):
        Browser(base, f"198.51.100.{20 + n}").login(password="wrong")
    # From the tenth failure on, each sets a growing delay; none locks the account for good.
    row = admin(hub)
    assert row.failed_logins == 10 and row.locked_until is not None
    # During the delay the right password is refused too, from any address...
    assert MESSAGE in Browser(base, "203.0.113.5").login().text
    # ...but the owner's unlock code (Telegram /unlock or the console) skips it, once.
    with hub.sessions() as s:  # type: ignore[misc]
        code = accounts.issue_unlock_code(s, "admin")
    owner = Browser(base, "203.0.113.5")
    assert MESSAGE in owner.login(password="still wrong", code=code).text  # the code needs the password
    response = owner.login(code=code)
    assert response.status_code == 302 and owner.logged_in()
    row = admin(hub)
    assert (row.failed_logins, row.locked_until, row.unlock_hash) == (0, None, None)


def test_a_strangers_address_is_delayed_not_the_owners(live: tuple[Hub, str]) -> None:
    hub, base = live
    stranger = Browser(base, "192.0.2.66")
    limit = 5 * auth.IP_FAILURE_FACTOR
    for n in range(limit):
        assert stranger.login(username=f"guess-{n}", password="x").status_code == 200
    # The stranger's address now waits; the owner's, elsewhere, does not.
    assert MESSAGE in stranger.login().text
    owner = Browser(base, "203.0.113.9")
    assert owner.login().status_code == 302
    assert admin(hub).failed_logins == 0  # guessing other names never touched the owner's account


def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    hub = start_hub(make_settings(APP_ADMIN_PASSWORD_HASH=FAST_HASH))  # no trusted proxies
    try:
        caplog.set_level(logging.WARNING)
        Browser(f"http://127.0.0.1:{hub.port}", "10.9.9.9").login(password="wrong")
        failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed login")]
        assert failures and "from 127.0.0.1" in failures[-1] and "10.9.9.9" not in failures[-1]
    finally:
        hub.stop()


# ---- sessions end on the server ---------------------------------------------------------------


def test_a_cookie_copied_before_logout_is_dead_after_it(live: tuple[Hub, str]) -> None:
    hub, base = live
    browser = Browser(base)
    assert browser.login().status_code == 302
    stolen = Browser(base)
    stolen.http.cookies.update(browser.http.cookies)
    assert stolen.logged_in()
    assert browser.post("/logout").status_code == 302
    assert not browser.logged_in()
    assert not stolen.logged_in()  # the copy is refused by the server, not just forgotten by the browser
    with hub.sessions() as s:  # type: ignore[misc]
        assert s.scalar(sa.select(sa.func.count()).select_from(WebSession)) == 0


def test_sign_out_everywhere_ends_every_browser(live: tuple[Hub, str]) -> None:
    _, base = live
    phone, laptop = Browser(base), Browser(base)
    assert phone.login().status_code == 302 and laptop.login().status_code == 302
    assert "Logged in on 2 browsers" in laptop.http.get(base + "/settings/tokens", timeout=10).text
    response = laptop.post("/settings/sessions/end")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    assert not laptop.logged_in() and not phone.logged_in()
    assert phone.login().status_code == 302  # the password still works


def test_a_password_change_ends_every_other_browser(live: tuple[Hub, str]) -> None:
    hub, base = live
    # The live hub's admin password comes from APP_ADMIN_PASSWORD_HASH, which the page refuses to change.
    here = Browser(base)
    here.login()
    refused = here.post(
        "/settings/password", current_password=PASSWORD, new_password="x" * 16, new_password_again="x" * 16
    )
    assert refused.status_code == 400 and "APP_ADMIN_PASSWORD_HASH" in refused.text
    with hub.sessions() as s:  # type: ignore[misc]
        s.add(User(username="alice", password_hash=FAST_HASH, failed_logins=0))
        s.commit()
    mine, other = Browser(base), Browser(base)
    assert (
        mine.login(username="alice").status_code == 302 and other.login(username="alice").status_code == 302
    )
    new = "a much longer new password"
    for form, problem in (
        (
            {"current_password": "wrong", "new_password": new, "new_password_again": new},
            "current password is wrong",
        ),
        (
            {"current_password": PASSWORD, "new_password": "short", "new_password_again": "short"},
            "at least 12",
        ),
        ({"current_password": PASSWORD, "new_password": new, "new_password_again": new + "!"}, "differ"),
    ):
        response = mine.post("/settings/password", **form)
        assert response.status_code == 400 and problem in response.text
    assert other.logged_in()
    response = mine.post(
        "/settings/password", current_password=PASSWORD, new_password=new, new_password_again=new
    )
    assert response.status_code == 302
    assert mine.logged_in() and not other.logged_in()
    assert MESSAGE in Browser(base).login(username="alice").text
    assert Browser(base).login(username="alice", password=new).status_code == 302


# ---- API token roles ------------------------------------------------------------------------


def test_a_read_only_token_reads_and_cannot_write(live: tuple[Hub, str]) -> None:
    hub, base = live
    browser = Browser(base)
    browser.login()
    page = browser.post("/settings/tokens", name="grafana", role="read").text
    token = re.search(r'id="new-token" value="(ep_[^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert "read-only" in browser.http.get(base + "/settings/tokens", timeout=10).text
    headers = {"Authorization": f"Bearer {token}"}
    devices = requests.get(base + "/api/devices", headers=headers, timeout=10)
    assert devices.status_code == 200
    assert requests.get(base + "/metrics", headers=headers, timeout=10).status_code == 200
    panic = devices.json()["inputs"][0]["id"]
    response = requests.patch(
        base + f"/api/inputs/{panic}", json={"device_enabled": True}, headers=headers, timeout=10
    )
    assert (response.status_code, response.json()) == (403, {"error": "this API token is read-only"})
    assert (
        requests.put(
            base + "/api/outputs-enabled", json={"enabled": False}, headers=headers, timeout=10
        ).status_code
        == 403
    )
    assert requests.get(base + "/api/outputs-enabled", headers=headers, timeout=10).json() == {
        "enabled": True
    }
    admin_page = browser.post("/settings/tokens", name="script", role="admin").text
    admin_token = re.search(r'id="new-token" value="(ep_[^"]+)"', admin_page).group(1)  # type: ignore[union-attr]
    response = requests.put(
        base + "/api/outputs-enabled",
        json={"enabled": False},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert response.status_code == 200 and response.json() == {"enabled": False}
    assert browser.post("/settings/tokens", name="odd", role="root").status_code == 400


# ---- the console's way in -------------------------------------------------------------------


def test_console_unlock_and_password_reset(live: tuple[Hub, str], tmp_path: Path) -> None:
    hub, base = live
    env = {
        "PATH": os.environ["PATH"],
        "TABLESPACE_PATH": hub.settings.sqlite_path or "",
        "APP_ADMIN_PASSWORD_HASH": FAST_HASH,
    }

    def console(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.store.accounts", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for n in range(6):
        Browser(base, f"192.0.2.{n}").login(password="wrong")
    assert MESSAGE in Browser(base, "203.0.113.1").login().text  # delayed
    done = console("unlock")
    assert done.returncode == 0, done.stderr
    code = re.search(r"unlock code for 'admin': (\S+) ", done.stdout).group(1)  # type: ignore[union-attr]
    owner = Browser(base, "203.0.113.1")
    assert owner.login(code=code).status_code == 302
    assert admin(hub).unlock_hash is None  # used once
    done = console("password")
    assert done.returncode == 0, done.stderr
    new = re.search(r"new password for 'admin': (\S+) ", done.stdout).group(1)  # type: ignore[union-attr]
    assert "APP_ADMIN_PASSWORD_HASH is set" in done.stdout
    assert not owner.logged_in()  # a reset signs every browser out
    assert Browser(base).login(password=new).status_code == 302
    assert console("unlock", "nobody").returncode == 1


# ---- headers and the public health answer -------------------------------------------------------


def test_every_response_carries_the_security_headers(live: tuple[Hub, str]) -> None:
    _, base = live
    browser = Browser(base)
    browser.login()
    token_page = browser.post("/settings/tokens", name="x", role="read").text
    token = re.search(r'id="new-token" value="(ep_[^"]+)"', token_page).group(1)  # type: ignore[union-attr]
    answers = [
        requests.get(base + "/login", timeout=10),
        requests.get(base + "/", allow_redirects=False, timeout=10),  # redirect to login
        requests.get(base + "/api/health", timeout=10),
        requests.get(base + "/api/devices", timeout=10),  # 401
        requests.get(base + "/static/app.js", timeout=10),
        requests.get(base + "/assets/bootstrap/css/bootstrap.min.css", timeout=10),
        requests.post(base + "/login", data={"username": "x"}, timeout=10),  # 400 without CSRF
        browser.http.get(base + "/", timeout=10),
        browser.http.get(base + "/no/such/page", timeout=10),
        requests.get(base + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10),
    ]
    assert {r.status_code for r in answers} >= {200, 302, 400, 401, 404}
    for response in answers:
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, response.url
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Frame-Options"] == "DENY"


def test_templates_have_no_inline_script_style_or_handler() -> None:
    inline = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|\sstyle\s*=|<style", re.IGNORECASE)
    for template in sorted((ROOT / "templates").glob("*.html")):
        found = inline.findall(template.read_text())
        assert found == [], (template.name, found)


def test_health_over_http_without_and_with_login(live: tuple[Hub, str]) -> None:
    hub, base = live
    public = requests.get(base + "/api/health", timeout=10)
    assert public.status_code == 200
    body = public.json()
    # status only: which components are down (and, past the grace period, unhealthy), never how to reach them
    assert set(body) == {"status", "ready", "down", "unhealthy"}
    assert not body["unhealthy"]
    assert body["status"] in ("ok", "degraded") and body["ready"] is True
    for detail in ("127.0.0.1", "5672", hub.settings.rabbitmq_exchange, "guest"):
        assert detail not in public.text
    browser = Browser(base)
    browser.login()
    full = browser.http.get(base + "/api/health", timeout=10).json()
    assert {"components", "counters", "backup"} <= set(full)
    assert full["components"]["rabbitmq_source"]["state"] == "connected"


# ---- trusted proxies --------------------------------------------------------------------------


def test_client_address_walks_back_through_trusted_proxies_only() -> None:
    proxies = security.TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert security.client_address("127.0.0.1", "203.0.113.7", proxies) == "203.0.113.7"
    # A client's own X-Forwarded-For entries come first (left); each trusted proxy appended one.
    assert security.client_address("127.0.0.1", "1.2.3.4, 203.0.113.7, 10.1.1.1", proxies) == "203.0.113.7"
    assert security.client_address("192.0.2.9", "203.0.113.7", proxies) == "192.0.2.9"
    assert security.client_address("127.0.0.1", "", proxies) == "127.0.0.1"
    assert security.client_address("127.0.0.1", "not-an-ip", proxies) == "127.0.0.1"
    assert security.client_address("127.0.0.1", "[2001:db8::1]:443", proxies) == "2001:db8::1"
    assert security.client_address("::ffff:127.0.0.1", "203.0.113.8", proxies) == "203.0.113.8"
    nobody = security.TrustedProxies([])
    assert not nobody and security.client_address("127.0.0.1", "203.0.113.7", nobody) == "127.0.0.1"


def test_a_proxy_named_by_host_name_is_resolved_and_followed() -> None:
    answers = {"ngrok": ["172.18.0.5"]}
    proxies = security.TrustedProxies(["ngrok"], resolve=lambda name: answers.get(name, []))
    assert proxies.trusts("172.18.0.5")
    assert not proxies.trusts("172.18.0.6")
    assert security.TrustedProxies(["localhost"]).trusts("127.0.0.1")  # the real resolver


@pytest.mark.parametrize("trusted", [True, False])
def test_forwarded_proto_sets_secure_cookies_only_from_a_trusted_proxy(
    start_live: Callable[..., tuple[Hub, str]], trusted: bool
) -> None:
    _, base = start_live(APP_TRUSTED_PROXIES="127.0.0.1" if trusted else "192.0.2.1")
    # The login page stores its CSRF token in the session, so it sets the cookie.
    response = requests.get(base + "/login", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("session=") and "HttpOnly" in cookie
    assert ("Secure" in cookie) is trusted


# ---- file modes ------------------------------------------------------------------------------


def test_the_hub_keeps_its_data_private(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    db_file = data / "event_processor.db"
    # An older version's files, readable by everyone.
    settings = make_settings(TABLESPACE_PATH=str(db_file), APP_ADMIN_PASSWORD_HASH=FAST_HASH)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    engine.dispose()
    (data / "secret_key").write_text("a" * 64 + "\n")
    kept = data / "event_processor.db.before-restore-20261201T000000Z"
    kept.write_bytes(b"old copy")
    for path in (data, db_file, kept, data / "secret_key"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    old_umask = os.umask(0o022)
    caplog.set_level(logging.WARNING)
    try:
        from app.core import file_modes

        file_modes.private_umask()
        hub = start_hub(settings)
        try:
            assert stat.S_IMODE(data.stat().st_mode) == 0o700
            for name in (
                "event_processor.db",
                "event_processor.db-wal",
                "event_processor.db-shm",
                kept.name,
                "secret_key",
            ):
                assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
            fixed = " ".join(r.getMessage() for r in caplog.records)
            assert f"{data} had mode 755" in fixed and f"{db_file} had mode 644" in fixed
            assert f"{kept} had mode 644" in fixed
        finally:
            hub.stop()
    finally:
        os.umask(old_umask)
