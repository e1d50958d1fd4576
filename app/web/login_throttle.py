"""Failed-login throttling: growing delays, and failures per client address in a bounded window."""

from __future__ import annotations

import threading
from collections import deque

from app.core import health

# One address may fail this many times the per-user limit before its own delays start: enough
# for a household sharing one address, too few to walk through a list of usernames.
IP_FAILURE_FACTOR = 4
MAX_TRACKED_ADDRESSES = 10_000


def growing_delay(failures: int, free: int, cap: float) -> float:
    """Seconds before the next try after `failures` in a row: none for the first `free` ones, then 1, 2,
    4, … up to `cap`. A delay, never a lock: whoever keeps guessing slows the owner down, never shuts
    them out, and the unlock code (Telegram or console) skips it."""
    if failures < free:
        return 0.0
    return float(min(cap, 2 ** min(failures - free, 30)))


class FailureWindow:
    """Failed logins per client address within a sliding window, in memory, thread-safe, bounded."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit  # failures before the address's own delays start
        self.window = window  # failures older than this are forgotten; also the longest delay
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.evicted = 0

    def _prune(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def wait(self, address: str, now: float) -> float:
        """Seconds this address must wait before its next try (0: go ahead)."""
        with self._lock:
            times = self._prune(address, now)
            if times is None:
                return 0.0
            delay = growing_delay(len(times), self.limit, self.window)
            return max(0.0, times[-1] + delay - now) if delay else 0.0

    def blocked(self, address: str, now: float) -> bool:
        return self.wait(address, now) > 0

    def record(self, address: str, now: float) -> None:
        with self._lock:
            times = self._prune(address, now)
            if times is None:
                if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                    # Bounded memory: forget the address that failed longest ago.
                    del self._failures[next(iter(self._failures))]
                    self.evicted += 1
                    health.count("web.login_addresses_dropped")
                times = self._failures[address] = deque()
            times.append(now)
            if len(times) > self.limit + 64:
                times.popleft()  # enough to reach the longest delay; an address cannot grow it further
