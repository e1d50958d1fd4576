"""Retry bookkeeping shared by the broker connectors: backoff, attempt count, state reports, quiet logs."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pylib import threads

StateCallback = Callable[[str, str | None], None]
# A repeated identical failure is logged at WARNING at most this often, so a broker that stays down
# for a week does not fill the disk; every attempt is still logged at DEBUG.
REPEAT_WARNING_SECONDS = 300.0


class Reconnects:
    """When the next connection attempt is due, and what to report and log about each outcome.

    broker names the kind in log lines ("RabbitMQ", "MQTT"); where describes the servers.
    """

    def __init__(
        self,
        component: str,
        broker: str,
        where: str,
        log: logging.Logger,
        on_state: StateCallback | None = None,
        backoff: threads.Backoff | None = None,
    ) -> None:
        self.component = component
        self.broker = broker
        self.where = where
        self._log = log
        self._on_state = on_state
        self._backoff = backoff or threads.Backoff(initial=0.5, maximum=30.0)
        self._next_attempt = 0.0
        self._failures = 0
        self._warnings = threads.QuietRepeats(REPEAT_WARNING_SECONDS)

    def state(self, state: str, detail: str | None = None) -> None:
        if self._on_state is not None:
            self._on_state(state, detail)

    def due(self) -> bool:
        """True when the backoff delay since the last failure has passed."""
        return threads.monotonic() >= self._next_attempt

    def seconds_until_due(self) -> float:
        return max(0.0, self._next_attempt - threads.monotonic())

    def ready(self) -> None:
        """The connection is really up (set-up done): backoff and the warning throttle start over.

        Only here, not on TCP connect, so a broker that accepts connections and then refuses us is
        retried with growing delays instead of in a tight loop.
        """
        self._failures = 0
        self._warnings.reset()
        self._backoff.reset()
        self.state("connected", self.where)

    def failed(self, detail: str) -> None:
        """An attempt did not get a usable connection; the next one waits for the backoff."""
        self._failures += 1
        delay = self._schedule()
        self.state("down", detail)
        if self._warnings.should_log(detail):
            self._log.warning(
                "%s cannot connect to %s %s (attempt %d): %s; retrying in %.1fs",
                self.component,
                self.broker,
                self.where,
                self._failures,
                detail,
                delay,
            )
        else:
            self._log.debug(
                "%s still cannot connect (attempt %d): %s", self.component, self._failures, detail
            )

    def lost(self, detail: str) -> None:
        """A working connection broke; the next attempt waits for the backoff."""
        delay = self._schedule()
        self._log.warning(
            "%s lost its %s connection: %s; reconnecting in %.1fs", self.component, self.broker, detail, delay
        )
        self.state("connecting", detail)

    def _schedule(self) -> float:
        delay = self._backoff.next_delay()
        self._next_attempt = threads.monotonic() + delay
        return delay
