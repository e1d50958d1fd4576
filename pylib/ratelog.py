"""Log lines about bad input that stay short and few, whatever a device sends."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

MAX_LINE_CHARS = 500  # one line of a log about a message never quotes more of it than this
BURST = 10  # lines let through per interval for one kind of problem
INTERVAL = 60.0


def clip(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """text cut to at most limit characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class RateLimitedLog:
    """At most `burst` lines per `interval` for one kind of problem; the rest are counted and summed up.

    A flood of bad messages is then a few lines a minute plus "N more suppressed", not a line per
    message (one 2 MiB body of bad entries once wrote millions).
    """

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = BURST,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._sent = 0
        self._suppressed = 0

    def log(self, level: int, message: str, *args: object) -> bool:
        """Log one clipped line if the budget allows; returns whether it was written."""
        with self._lock:
            now = self.clock()
            suppressed = 0
            if now - self._window_start >= self.interval:
                suppressed, self._suppressed = self._suppressed, 0
                self._window_start, self._sent = now, 0
            if self._sent >= self.burst:
                self._suppressed += 1
                return False
            self._sent += 1
        if suppressed:
            self.logger.log(level, "%d similar lines suppressed in %.0f s", suppressed, self.interval)
        try:
            text = message % args if args else message
        except (TypeError, ValueError):
            text = f"{message} {args!r}"
        self.logger.log(level, "%s", clip(text))
        return True

    def warning(self, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, message, *args)

    def info(self, message: str, *args: object) -> bool:
        return self.log(logging.INFO, message, *args)
