"""Process-wide component states and readiness, read by /api/health and set by each thread."""

from __future__ import annotations

import threading
import time
from typing import TypedDict


class Component(TypedDict):
    """A component's last reported state (served as JSON by /api/health)."""

    state: str
    detail: str | None
    since: float  # unix time of the report


_lock = threading.Lock()
_components: dict[str, Component] = {}
_counters: dict[str, int] = {}
_ready = threading.Event()
# The components without which the hub is no use: the brokers the devices talk through. One that has
# been other than "connected" for longer than the grace period turns /api/health (and so the
# container's health check) unhealthy; a short outage (a broker restart) does not.
CRITICAL = ("rabbitmq_source", "mqtt")
UP = "connected"
_down_since: dict[str, float] = {}


def set_state(component: str, state: str, detail: str | None = None) -> None:
    """Record a component's state, e.g. set_state('rabbitmq_source', 'connected')."""
    now = time.time()
    with _lock:
        _components[component] = {"state": state, "detail": detail, "since": now}
        if state == UP:
            _down_since.pop(component, None)
        else:
            _down_since.setdefault(component, now)


def components() -> dict[str, Component]:
    with _lock:
        return {k: v.copy() for k, v in _components.items()}


def state_of(states: dict[str, Component], name: str) -> str | None:
    """A component's state in a components() snapshot; None when it never reported."""
    component = states.get(name)
    return component["state"] if component is not None else None


def critical_down(grace_seconds: float, now: float | None = None) -> dict[str, str]:
    """Critical components down (not connected) for longer than grace_seconds: name -> why."""
    now = time.time() if now is None else now
    with _lock:
        return {
            name: f"not connected for {now - _down_since[name]:.0f} s (grace {grace_seconds:g} s)"
            for name in CRITICAL
            if name in _down_since and now - _down_since[name] > grace_seconds
        }


def count(name: str, n: int = 1) -> None:
    """Bump a counter, e.g. count('rabbitmq_source.malformed')."""
    with _lock:
        _counters[name] = _counters.get(name, 0) + n


def counters() -> dict[str, int]:
    with _lock:
        return dict(_counters)


def mark_ready() -> None:
    _ready.set()


def is_ready() -> bool:
    return _ready.is_set()


def reset() -> None:
    """Forget everything (tests run several hubs in one process)."""
    with _lock:
        _components.clear()
        _counters.clear()
        _down_since.clear()
    _ready.clear()


def counter(name: str) -> int:
    """One counter's value (0 when never counted), without copying them all."""
    with _lock:
        return _counters.get(name, 0)
