"""Process-wide component states and readiness, read by /api/health and set by each thread."""

from __future__ import annotations

import threading
import time
from typing import Any

_lock = threading.Lock()
_components: dict[str, dict[str, Any]] = {}
_counters: dict[str, int] = {}
_ready = threading.Event()


def set_state(component: str, state: str, detail: str | None = None) -> None:
    """Record a component's state, e.g. set_state('rabbitmq_source', 'connected')."""
    with _lock:
        _components[component] = {"state": state, "detail": detail, "since": time.time()}


def components() -> dict[str, dict[str, Any]]:
    with _lock:
        return {k: dict(v) for k, v in _components.items()}


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
    _ready.clear()


def counter(name: str) -> int:
    """One counter's value (0 when never counted), without copying them all."""
    with _lock:
        return _counters.get(name, 0)
