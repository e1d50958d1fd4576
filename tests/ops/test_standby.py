"""The standby pair (HA_ENABLED): settings, the PostgreSQL lease, fencing, and two real hub processes."""

from __future__ import annotations

import http.cookiejar
import signal
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.core.settings import SettingsError
from app.store import roles
from app.store.lease import Lease, LeaseLost, lock_key
from app.web.lazy import LazyWebApp
from tests import hapair
from tests.support import wait_for
from tests.telegram_standin import TelegramStandIn
from tests.web.test_auth import CSRF_FIELD, FAST_HASH, PASSWORD
from tests.web.test_lazy import call

TOKEN = "4242:standby-pair-token"
CHAT = "-1001234"
# short periods so the tests run in seconds; the bench uses the defaults
FAST = {"HA_CHECK_SECONDS": "0.3", "HA_FENCE_SECONDS": "1.5", "APP_ADMIN_PASSWORD_HASH": FAST_HASH}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with hapair.pg_database() as url:
        yield url


@pytest.fixture
def pair(pg_url: str, tmp_path: Path, unique_name) -> Iterator[tuple[str, str, Path]]:
    """(database URL, exchange, work dir) with the input and output configured; the queue is deleted after."""
    hapair.prepare(pg_url)
    exchange = unique_name("pair")
    yield pg_url, exchange, tmp_path
    hapair.delete_queue(f"{exchange}_hub")


def stop_all(*hubs: hapair.HubProcess) -> None:
    for hub in hubs:
        hub.stop()


# ---- settings ---------------------------------------------------------------------------------


def test_ha_is_off_by_default_and_single_hub_settings_are_unchanged(make_settings) -> None:
    s = make_settings()
    assert s.ha_enabled is False
    assert s.ha_queue_name == f"{s.rabbitmq_exchange}_hub"
    roles.reset()
    assert roles.acting() and roles.mode() == roles.SINGLE


def test_ha_needs_postgresql(make_settings) -> None:
    with pytest.raises(SettingsError, match="HA_ENABLED") as err:
        make_settings(HA_ENABLED="true")
    assert "PostgreSQL" in str(err.value)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"HA_CHECK_SECONDS": "2", "HA_FENCE_SECONDS": "3"}, "HA_FENCE_SECONDS"),
        ({"HA_QUEUE_TTL_SECONDS": "60", "MAX_MESSAGE_VALIDITY_SECONDS": "120"}, "HA_QUEUE_TTL_SECONDS"),
        ({"HA_QUEUE_NAME": "amq.mine"}, "HA_QUEUE_NAME"),
        ({"HA_NODE_URL": "pi-kitchen:8080"}, "HA_NODE_URL"),
        ({"HA_CHECK_SECONDS": "fast"}, "HA_CHECK_SECONDS"),
    ],
)
def test_bad_ha_settings_name_the_setting(make_settings, env: dict[str, str], name: str) -> None:
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    with pytest.raises(SettingsError) as err:
        make_settings(HA_ENABLED="true", DATABASE_URL=pg, **env)
    assert err.value.name == name


def test_process_with_a_bad_ha_setting_exits_2_naming_it(tmp_path: Path, unique_name) -> None:
    import subprocess
    import sys

    env = hapair.hub_env("sqlite:///x.db", unique_name("ep"), "pi-a", 0, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("event-processor: setting HA_ENABLED: needs DATABASE_URL")


# ---- the lease ----------------------------------------------------------------------------------


def test_lease_is_exclusive_and_passes_on_when_released(pg_url: str) -> None:
    name = uuid.uuid4().hex
    a, b = Lease(pg_url, name, 1.5), Lease(pg_url, name, 1.5)
    try:
        assert a.try_acquire()
        assert not b.try_acquire()
        a.confirm()
        with pytest.raises(LeaseLost):
            b.confirm()
        assert b.holder_pid() is not None
        a.close()
        # the server ends the closed session's backend (and frees the lock) a moment later
        wait_for(b.try_acquire, timeout=5)
        b.confirm()
    finally:
        a.close()
        b.close()


def test_lease_session_is_set_to_drop_a_silent_holder(pg_url: str) -> None:
    lease = Lease(pg_url, uuid.uuid4().hex, 1.5)
    try:
        assert lease.try_acquire()
        conn = lease._conn
        assert conn is not None
        shown = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in (
                "idle_session_timeout",
                "tcp_keepalives_idle",
                "tcp_user_timeout",
                "statement_timeout",
            )
        }
        assert shown["idle_session_timeout"] == "3s"
        assert shown["statement_timeout"] == "1500ms"
    finally:
        lease.close()


def test_a_lease_whose_session_the_database_ended_is_lost(pg_url: str) -> None:
    lease = Lease(pg_url, uuid.uuid4().hex, 1.5)
    try:
        assert lease.try_acquire()
        pid = lease.holder_pid()
        with psycopg.connect(hapair.PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(LeaseLost):
            lease.confirm()
        assert not lease.held
    finally:
        lease.close()


def test_lock_keys_differ_per_app_name_and_fit_a_bigint() -> None:
    assert lock_key("event_processor") != lock_key("other")
    assert -(2**63) <= lock_key("event_processor") < 2**63


def test_fencing_is_by_the_clock_not_by_the_keeper_thread() -> None:
    """An active hub whose last confirmation is older than the fence stops acting, whatever else runs."""
    roles.configure("pi-a", 0.5)
    try:
        assert not roles.acting()  # standby
        roles._role.mode = roles.ACTIVE
        roles._role.confirmed = time.monotonic()
        assert roles.acting()
        roles._role.confirmed = time.monotonic() - 0.6
        assert not roles.acting()
        assert "standby" in roles.standby_message()
    finally:
        roles.reset()


# ---- two hub processes --------------------------------------------------------------------------


def login_opener(port: int) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"http://127.0.0.1:{port}/login", timeout=5).read().decode()
    match = CSRF_FIELD.search(page)
    assert match
    form = {"username": "admin", "password": PASSWORD, "csrf_token": match.group(1)}
    opener.open(f"http://127.0.0.1:{port}/login", urllib.parse.urlencode(form).encode(), timeout=5)
    return opener


def test_sigkill_of_the_active_hub_mid_burst_loses_nothing_and_the_old_hub_returns_as_standby(pair) -> None:
    url, exchange, workdir = pair
    with TelegramStandIn(TOKEN) as telegram:
        extra = dict(
            FAST, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_CHAT_ROOM=CHAT, TELEGRAM_API_BASE_URL=telegram.base_url
        )
        a = hapair.HubProcess("pi-a", url, exchange, workdir, extra=extra)
        b = hapair.HubProcess("pi-b", url, exchange, workdir, extra=extra)
        collector = hapair.Collector(exchange)
        collector.start()
        assert collector.ready.wait(10) and collector.error is None
        try:
            a.start()
            a.wait_role("active")
            b.start()
            b.wait_role("standby")
            # the standby runs no Telegram poller, no scheduler, no pinger: only the active does
            standby_health = b.health(token=hapair.read_token(url))
            assert standby_health is not None
            assert "telegram" not in standby_health["components"]
            assert "health_pinger" not in standby_health["components"]
            assert standby_health["ha"]["active"]["node"] == "pi-a"
            # a latch set by the active hub
            hapair.publish_now(exchange, hapair.LATCHED, "Open")
            wait_for(lambda: len(hapair.decisions(url, hapair.LATCHED["device_key"])) == 1, timeout=10)
            assert hapair.decisions(url, hapair.LATCHED["device_key"])[0][1:] == (True, None)

            firing = hapair.Firing(exchange, rate=25)
            firing.start()
            time.sleep(2.0)
            a.kill()
            took = b.wait_role("active", timeout=10)
            time.sleep(2.0)
            firing.stop_event.set()
            firing.join(10)
            assert firing.error is None
            sent = [d for d, _ in firing.sent]
            wait_for(lambda: sum(1 for d, _ in collector.received if d in sent) >= len(sent), timeout=15)
            collector_quiet = len(collector.received)
            time.sleep(1.0)
            assert len(collector.received) == collector_quiet  # nothing more trickles in
            burst = [d for d, _ in collector.received if d != "Open"]  # "Open": the latched input's
            result = hapair.account(sent, burst, hapair.decisions(url))
            assert result["missing"] == [] and result["stale"] == [] and result["unexpected"] == []
            # at-least-once: only deliveries the killed hub had not acked can fire twice (README)
            assert len(result["fired_more"]) <= 25, result["fired_more"]
            assert result["fired_once"] + len(result["fired_more"]) == len(sent) > 60
            assert took < 10

            # the new active hub loaded the latch from the database
            hapair.publish_now(exchange, hapair.LATCHED, "Open")
            wait_for(lambda: len(hapair.decisions(url, hapair.LATCHED["device_key"])) == 2, timeout=10)
            assert hapair.decisions(url, hapair.LATCHED["device_key"])[1][1:] == (False, "latched")

            # the take-over alert went out through the new active hub's notifier
            wait_for(lambda: any("Take-over" in (c.text or "") for c in telegram.calls("sendMessage")), 15)
            alert = next(c.text for c in telegram.calls("sendMessage") if "Take-over" in (c.text or ""))
            assert "pi-b is now the active hub" in alert and "pi-a" in alert

            # the old hub comes back as the standby
            a.start()
            a.wait_role("standby")
            wait_for(
                lambda: (
                    {n["node"]: n["role"] for n in a.health()["ha"]["nodes"]}
                    == {  # type: ignore[index]
                        "pi-a": "standby",
                        "pi-b": "active",
                    }
                ),
                timeout=10,
            )
            body = a.health()
            assert body is not None and body["ha"]["active"]["node"] == "pi-b"
            assert body["ha"]["active"]["since"] is not None

            # its dashboard is read-only with a banner naming the active hub
            opener = login_opener(a.port)
            page = opener.open(f"http://127.0.0.1:{a.port}/", timeout=5).read().decode()
            assert "Standby hub pi-a" in page and "pi-b" in page and f"127.0.0.1:{b.port}" in page
            active_page = login_opener(b.port).open(f"http://127.0.0.1:{b.port}/", timeout=5).read().decode()
            assert "Standby hub" not in active_page and "pi-b active" in active_page
        finally:
            firing_obj = locals().get("firing")
            if firing_obj is not None:
                firing_obj.stop_event.set()
            collector.stop_event.set()
            stop_all(a, b)
            collector.join(5)


def test_standby_refuses_api_writes_naming_the_active_hub(pair) -> None:
    url, exchange, workdir = pair
    a = hapair.HubProcess("pi-a", url, exchange, workdir, extra=FAST)
    b = hapair.HubProcess("pi-b", url, exchange, workdir, extra=FAST)
    try:
        a.start()
        a.wait_role("active")
        b.start()
        b.wait_role("standby")
        wait_for(lambda: b.health()["ha"]["active"] is not None, timeout=10)  # type: ignore[index]
        opener = login_opener(b.port)
        page = opener.open(f"http://127.0.0.1:{b.port}/", timeout=5).read().decode()
        token = CSRF_FIELD.search(page)
        assert token
        request = urllib.request.Request(
            f"http://127.0.0.1:{b.port}/api/outputs-enabled",
            data=b'{"enabled": false}',
            method="PUT",
            headers={"Content-Type": "application/json", "X-CSRFToken": token.group(1)},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(request, timeout=5)
        assert err.value.code == 503
        assert "active hub pi-a" in err.value.read().decode()
    finally:
        stop_all(a, b)


def test_activations_sent_while_no_hub_runs_wait_and_are_recorded_stale_when_too_old(pair) -> None:
    url, exchange, workdir = pair
    extra = dict(FAST, MAX_MESSAGE_VALIDITY_SECONDS="2")
    a = hapair.HubProcess("pi-a", url, exchange, workdir, extra=extra)
    try:
        a.start()
        a.wait_role("active")
        a.kill()
        for i in range(5):
            hapair.publish_now(exchange, hapair.INPUT, f"gap{i}")
        time.sleep(3.0)  # older than the validity window by the time a hub consumes them
        a.start()
        a.wait_role("active")
        wait_for(lambda: len(hapair.decisions(url)) == 5, timeout=15)
        assert hapair.decisions(url) == [(f"gap{i}", False, "stale") for i in range(5)]
    finally:
        stop_all(a)


def test_a_hung_active_hub_is_fenced_and_the_standby_takes_over(pair) -> None:
    """SIGSTOP stands in for a hub that stops answering (a hung Pi, a dead network link)."""
    url, exchange, workdir = pair
    a = hapair.HubProcess("pi-a", url, exchange, workdir, extra=FAST)
    b = hapair.HubProcess("pi-b", url, exchange, workdir, extra=FAST)
    collector = hapair.Collector(exchange)
    collector.start()
    assert collector.ready.wait(10)
    firing = hapair.Firing(exchange, rate=10)
    try:
        a.start()
        a.wait_role("active")
        b.start()
        b.wait_role("standby")
        firing.start()
        time.sleep(1.0)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        b.wait_role("active", timeout=15)
        assert time.monotonic() - stopped < 10
        time.sleep(1.5)
        a.proc.send_signal(signal.SIGCONT)  # it wakes up without its lease: it must not act
        assert a.proc.wait(15) == 1
        assert "lost the lease" in a.log_path.read_text()
        firing.stop_event.set()
        firing.join(10)
        sent = [d for d, _ in firing.sent]

        def outcome() -> dict:
            return hapair.account(sent, [d for d, _ in collector.received], hapair.decisions(url))

        # every activation fired or recorded stale; a redelivered backlog takes longer on a loaded machine
        wait_for(lambda: outcome()["missing"] == [], timeout=45)
        result = outcome()
        assert result["missing"] == [] and result["unexpected"] == []
    finally:
        firing.stop_event.set()
        collector.stop_event.set()
        if a.proc is not None and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        stop_all(a, b)
        collector.join(5)


def test_health_and_telegram_status_list_both_hubs(make_settings, pg_url: str) -> None:
    from datetime import UTC, datetime

    from app.engine.presence import presence
    from app.outputs.telegram.commands import CommandBot
    from app.store import db
    from app.store.models import HubNode
    from app.web import create_app

    settings = make_settings(
        HA_ENABLED="true", DATABASE_URL=pg_url, HA_NODE_NAME="pi-b", USER_TZ="Europe/London"
    )
    engine = db.make_engine(pg_url)
    try:
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        now = datetime.now(UTC).replace(tzinfo=None)
        since = datetime(2026, 12, 6, 21, 5, tzinfo=UTC).replace(tzinfo=None)
        with sessions() as session:
            session.add(HubNode(node_name="pi-a", role="standby", role_since=since, seen=now))
            session.add(HubNode(node_name="pi-b", role="active", role_since=since, seen=now, url="http://b/"))
            session.add(
                HubNode(node_name="pi-old", role="active", role_since=since, seen=datetime(2026, 1, 1))
            )
            session.commit()
        roles.configure("pi-b", settings.ha_fence_seconds)
        text = CommandBot(settings, sessions, presence)._status_text()
        hubs = text.split("<b>Hubs</b>\n", 1)[1].splitlines()
        assert hubs == [
            "pi-a: standby since 06 Dec 21:05",
            "pi-b (this hub): active since 06 Dec 21:05",
            "pi-old: unreachable since 06 Dec 21:05",
        ]
        flask_app = create_app(settings, sessions)
        body = flask_app.test_client().get("/api/health").get_json()
        assert body["ha"]["node"] == "pi-b" and body["ha"]["active"]["node"] == "pi-b"
        # the web server's answer without Flask (app.web.lazy) is Flask's, byte for byte, the URLs hidden
        light = call(LazyWebApp(lambda: flask_app, settings, sessions))
        full = call(flask_app)
        assert (light[0], sorted(light[1]), light[2]) == (full[0], sorted(full[1]), full[2])
        assert b'"ha":' in light[2] and b"http://b/" not in light[2]
        assert {n["node"]: n["role"] for n in body["ha"]["nodes"]} == {
            "pi-a": "standby",
            "pi-b": "active",
            "pi-old": "unreachable",
        }
        # Without login: which hub is active, not where each is reached (nor the brokers' details).
        assert all("url" not in n for n in body["ha"]["nodes"]) and "components" not in body
    finally:
        roles.reset()
        engine.dispose()


def test_a_delivery_is_acked_only_after_the_processor_and_the_publisher_are_past_it() -> None:
    from app.core import delivery, health

    delivery.reset()
    window = delivery.AckWindow()
    stamps = [window.stamp() for _ in range(3)]
    assert stamps == sorted(set(stamps))  # strictly increasing, so progress names one delivery
    for tag, stamp in enumerate(stamps, start=1):
        window.add(stamp, tag)
    assert window.ackable() is None  # the processor has not finished any
    health.count("processor.triggers", 2)  # deliveries 1 and 2 caused two control messages
    delivery.processed(stamps[1])
    assert window.ackable() is None  # not yet published
    health.count("control.published")
    assert window.ackable() is None  # one of two
    health.count("control.lost")  # given up (expired) counts as finished: it will never be published
    assert window.ackable() == 2
    assert window.ackable() is None and len(window) == 1
    delivery.processed(stamps[2])
    assert window.ackable() == 3
    delivery.reset()
