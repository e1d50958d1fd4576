"""Last-seen times per device key and per origin, kept in memory and flushed to the database."""

from __future__ import annotations

import threading
import time


class Presence:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, float] = {}
        self._origins: dict[str, float] = {}
        self._dirty: set[str] = set()
        # origin -> (online, last_seen) as an outside directory (mDash) reports it
        self._reported: dict[str, tuple[bool, float | None]] = {}

    def seen(self, origin: str, keys: list[str], when: float | None = None) -> None:
        when = time.time() if when is None else when
        with self._lock:
            self._origins[origin] = when
            for key in keys:
                self._devices[key] = when
                self._dirty.add(key)

    def last_seen(self, key: str) -> float | None:
        with self._lock:
            return self._devices.get(key)

    def origin_last_seen(self, origin: str) -> float | None:
        with self._lock:
            return self._origins.get(origin)

    def origins(self) -> dict[str, float]:
        with self._lock:
            return dict(self._origins)

    def report(self, origin: str, online: bool, last_seen: float | None) -> None:
        """An outside directory's word on an origin's devices (e.g. mDash's online flag)."""
        with self._lock:
            self._reported[origin] = (online, last_seen)

    def reported(self, origin: str) -> tuple[bool, float | None] | None:
        with self._lock:
            return self._reported.get(origin)

    def clear(self) -> None:
        with self._lock:
            self._reported.clear()
            self._devices.clear()
            self._origins.clear()
            self._dirty.clear()

    def take_dirty(self) -> dict[str, float]:
        """Keys seen since the last call, with their times (for the periodic database flush)."""
        with self._lock:
            out = {k: self._devices[k] for k in self._dirty}
            self._dirty.clear()
            return out


presence = Presence()
