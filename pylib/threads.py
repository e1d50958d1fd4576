"""Tracked threads, a shutdown flag they all watch, and a nanny that stops the process when one dies."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

shutting_down = threading.Event()
_tracked: dict[str, AppThread] = {}
_tracked_lock = threading.Lock()
_failures: list[str] = []


class AppThread(threading.Thread):
    """A daemon thread the nanny watches: if run() returns or raises before shutdown, the process exits 1."""

    # Seconds this thread may need after shutdown starts (beyond the hub's common deadline), e.g. a
    # long poll that cannot be interrupted.
    stop_grace: float = 0.0

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        with _tracked_lock:
            _tracked[name] = self

    def run(self) -> None:
        try:
            self.work()
        except BaseException:
            if not shutting_down.is_set():
                log.exception("thread %s failed", self.name)
                _failures.append(self.name)
            raise
        finally:
            if not shutting_down.is_set() and self.name in _tracked:
                log.error("thread %s stopped unexpectedly", self.name)
                _failures.append(self.name)

    def work(self) -> None:
        raise NotImplementedError

    def untrack(self) -> None:
        """A one-shot thread calls this before it ends on purpose."""
        with _tracked_lock:
            _tracked.pop(self.name, None)


def tracked() -> list[AppThread]:
    with _tracked_lock:
        return list(_tracked.values())


def reset() -> None:
    """Forget every tracked thread and clear the shutdown flag (tests start several hubs in one process)."""
    with _tracked_lock:
        _tracked.clear()
    _failures.clear()
    shutting_down.clear()


def failures() -> list[str]:
    return list(_failures)


class Nanny(threading.Thread):
    """Watches the tracked threads; calls on_death with the dead thread names when one stops early."""

    def __init__(self, on_death: Callable[[list[str]], None], interval: float = 0.5) -> None:
        super().__init__(name="ThreadNanny", daemon=True)
        self._on_death = on_death
        self._interval = interval

    def run(self) -> None:
        while not shutting_down.wait(self._interval):
            dead = [t.name for t in tracked() if t.ident is not None and not t.is_alive()]
            if dead or _failures:
                self._on_death(sorted(set(dead) | set(_failures)))
                return


def sleep(seconds: float) -> bool:
    """Sleep unless shutdown starts first; returns True when shutting down."""
    return shutting_down.wait(seconds)


class Backoff:
    """Exponential backoff with a cap, reset after a success: the one retry pacing of the hub's loops.

    A loop that retries a failing call calls next_delay() (or pause()) after each failure and
    reset() after a success; the broker connectors use it through pylib.reconnect.Reconnects.
    """

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial

    def pause(self, stop: threading.Event | None = None) -> bool:
        """Wait the next delay unless `stop` (default: shutdown) is set first; True when it was."""
        return (shutting_down if stop is None else stop).wait(self.next_delay())


def monotonic() -> float:
    return time.monotonic()


class QuietRepeats:
    """Lets the same message through once per interval: a long outage must not fill the disk."""

    def __init__(self, interval: float = 300.0) -> None:
        self.interval = interval
        self._last: tuple[str, float] | None = None

    def should_log(self, message: str) -> bool:
        now = time.monotonic()
        if self._last is None or self._last[0] != message or now - self._last[1] >= self.interval:
            self._last = (message, now)
            return True
        return False

    def reset(self) -> None:
        self._last = None
