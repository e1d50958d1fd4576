"""The web server's app (app.web.lazy): anonymous health answered without Flask, exactly as Flask answers it;
everything else to the Flask app, built once on the first request that needs it."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import EnvironBuilder

from app.core import health
from app.core.settings import Settings
from app.engine.presence import Presence
from app.store import db
from app.web import create_app, lazy

ROOT = Path(__file__).resolve().parents[2]
Answer = tuple[str, list[tuple[str, str]], bytes]


# With a standby pair (PostgreSQL): tests/ops/test_standby.py compares the two answers too.


def call(app: Callable[..., Iterable[bytes]], path: str = "/api/health", **kwargs: Any) -> Answer:
    """One WSGI call, as waitress makes it: (status line, headers in order given, body)."""
    environ = EnvironBuilder(path=path, **kwargs).get_environ()
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got.update(status=status, headers=list(headers))

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'lazy.db'}")
    db.upgrade(engine)
    yield db.session_factory(engine)
    engine.dispose()


class Factory:
    """A stand-in for create_app: counts the builds, answers every request with a marker."""

    def __init__(self, delay: float = 0.0) -> None:
        self.builds = 0
        self.delay = delay
        self.seen: list[str] = []

    def __call__(self) -> Callable[..., Iterable[bytes]]:
        self.builds += 1
        time.sleep(self.delay)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.seen.append(environ["PATH_INFO"])
            start_response("299 FULL APP", [("Content-Type", "text/plain")])
            return [b"full"]

        return app


def test_anonymous_health_never_builds_the_app(make_settings: Callable[..., Settings], sessions: Any) -> None:
    factory = Factory()
    app = lazy.LazyWebApp(factory, make_settings(), sessions)
    health.mark_ready()
    for _ in range(3):
        status, headers, body = call(app)
        assert status.split()[0] in ("200", "503") and b'"ready":true' in body
    assert factory.builds == 0 and not app.built


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"path": "/"},
        {"path": "/api/devices"},
        {"path": "/api/health", "headers": {"Authorization": "Bearer ep_x"}},
        {"path": "/api/health", "headers": {"Cookie": "session=abc"}},
        {"path": "/api/health", "method": "HEAD"},
        {"path": "/api/health", "method": "POST"},
        {"path": "/api/health/"},
        {"path": "/api/healthz"},
    ],
)
def test_everything_else_goes_to_the_full_app(
    make_settings: Callable[..., Settings], sessions: Any, request_kwargs: dict[str, Any]
) -> None:
    factory = Factory()
    app = lazy.LazyWebApp(factory, make_settings(), sessions)
    assert call(app, **request_kwargs) == ("299 FULL APP", [("Content-Type", "text/plain")], b"full")
    assert factory.builds == 1 and app.built


def test_the_full_app_and_what_it_imported_are_frozen_out_of_the_collector_once_built(
    make_settings: Callable[..., Settings], sessions: Any
) -> None:
    # as start-up's objects are (app.__main__.tune_gc): full collections then never walk them again
    factory = Factory()
    app = lazy.LazyWebApp(factory, make_settings(), sessions)
    gc.unfreeze()
    try:
        call(app, path="/")
        frozen = gc.get_freeze_count()
        assert frozen > 0 and app.built
        call(app, path="/")  # built once, frozen once
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_the_full_app_is_built_once_when_requests_race_for_it(
    make_settings: Callable[..., Settings], sessions: Any
) -> None:
    factory = Factory(delay=0.2)
    app = lazy.LazyWebApp(factory, make_settings(), sessions)
    answers: list[Answer] = []
    threads = [threading.Thread(target=lambda: answers.append(call(app, path="/"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert factory.builds == 1 and len(answers) == 8 and len(factory.seen) == 8


def test_a_failing_light_answer_is_left_to_the_full_app(
    make_settings: Callable[..., Settings], sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(lazy.health_status, "answer", broken)
    factory = Factory()
    assert call(lazy.LazyWebApp(factory, make_settings(), sessions))[2] == b"full"
    assert factory.builds == 1


def _states() -> Iterator[str]:
    """Walk health through starting, degraded, ok and unhealthy; yields each state's name."""
    health.set_state("rabbitmq_source", "connecting")
    yield "starting"
    health.mark_ready()
    health.set_state("rabbitmq_source", "connected", "guest@127.0.0.1:5672")
    health.set_state("control_publisher", "connected", "127.0.0.1:5672")
    yield "degraded"
    health.set_state("mqtt", "connected", "127.0.0.1:1883")
    health.set_state("event_processor", "running")
    health.set_state("database", "ok", "0011")
    health.count("processor.activations", 5)
    yield "ok"
    health.set_state("mqtt", "down", "connection refused")
    yield "unhealthy"


def test_the_light_answer_is_byte_for_byte_the_flask_answer(
    make_settings: Callable[..., Settings], sessions: Any
) -> None:
    settings = make_settings(HEALTH_DOWN_GRACE_SECONDS="0")
    flask_app = create_app(settings, sessions, Presence())
    app = lazy.LazyWebApp(lambda: flask_app, settings, sessions)
    seen = []
    for state in _states():
        if state == "unhealthy":
            time.sleep(0.01)  # down for longer than the grace of 0 s
        light = call(app)
        assert not app.built
        full = call(flask_app)  # Flask itself, for the same anonymous request
        assert light[0] == full[0]
        assert sorted(light[1]) == sorted(full[1])
        assert light[2] == full[2]
        seen.append((state, light[0]))
    assert [status for _, status in seen] == [
        "503 SERVICE UNAVAILABLE",
        "200 OK",
        "200 OK",
        "503 SERVICE UNAVAILABLE",
    ]
    assert b'"status":"unhealthy"' in call(app)[2]


def test_importing_the_hub_imports_no_flask() -> None:
    # What `python -m app` loads before anyone opens the dashboard (a fresh interpreter: tests import Flask).
    code = (
        "import sys, app.__main__, app.hub, app.web.lazy\n"
        "heavy = {'flask', 'werkzeug', 'jinja2', 'wtforms', 'flask_login', 'flask_wtf', 'click'}\n"
        "heavy |= {'markupsafe', 'itsdangerous', 'blinker'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
