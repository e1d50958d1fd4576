"""Shared fixtures: unique broker names per test run, a clean thread/inproc state per test, settings."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core import health, limits, settings
from app.engine import clocks
from app.engine.presence import presence
from app.store import db_writes
from pylib import inproc, threads

RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """unique_name('x') -> 'x_<run>_<n>': isolates exchanges and topics on the shared brokers."""
    counter = iter(range(1_000_000))

    def make(prefix: str = "test") -> str:
        return f"{prefix}_{RUN_ID}_{uuid.uuid4().hex[:6]}_{next(counter)}"

    return make


@pytest.fixture(autouse=True)
def clean_process_state() -> Iterator[None]:
    """Each test starts with no tracked threads, no shutdown flag and a fresh ZeroMQ context."""
    threads.reset()
    health.reset()
    db_writes.reset()
    clocks.offsets.clear()
    presence.clear()
    limits.refusals.clear()
    yield
    threads.shutting_down.set()
    for t in threads.tracked():
        if t.is_alive():
            t.join(timeout=5)
    inproc.terminate()
    threads.reset()
    health.reset()


@pytest.fixture
def make_settings(tmp_path: Path, unique_name: Callable[[str], str]) -> Callable[..., settings.Settings]:
    """Settings with working defaults, a private SQLite file and a unique exchange; env overrides."""

    def make(**env: str) -> settings.Settings:
        base = {
            "RABBITMQ_EXCHANGE": unique_name("ep"),
            "TABLESPACE_PATH": str(tmp_path / "event_processor.db"),
            "APP_FLASK_HTTP_PORT": "0",
            "APP_FLASK_BIND_ADDRESS": "127.0.0.1",
        }
        base.update(env)
        return settings.load(env=base, dotenv_path=tmp_path / "no.env")

    return make
