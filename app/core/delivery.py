"""At-least-once on the shared HA queue: a device message is acked once everything it caused is published.

With one hub the queue is exclusive and acks are only flow control. On the standby pair's shared
queue an unacked message goes to the other hub when this one dies, so the ack must come after the
work: the EventProcessor reports each RabbitMQ envelope it finished (by its receive time, which
the RabbitSource makes strictly increasing) together with how many control messages it had sent by
then (`processor.triggers`); the ControlPublisher counts every control message it finished
(`control.published` or `control.lost`). A delivery is acked when the processor is past it and the
publisher has caught up with the triggers sent up to it. Envelopes the filter drops are acked with
the next one the processor finishes.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from app.core import health

_lock = threading.Lock()
_progress: tuple[float, int] = (0.0, 0)  # (receive time of the last envelope finished, triggers sent by then)


def processed(received_at: float) -> None:
    """Processor side: the envelope received at received_at is finished (its triggers handed on)."""
    global _progress
    sent = health.counter("processor.triggers")
    with _lock:
        if received_at > _progress[0]:
            _progress = (received_at, sent)


def progress() -> tuple[float, int]:
    with _lock:
        return _progress


def published() -> int:
    """Control messages the ControlPublisher has finished with (published, or given up and counted lost)."""
    return health.counter("control.published") + health.counter("control.lost")


def reset() -> None:
    global _progress
    with _lock:
        _progress = (0.0, 0)


class AckWindow:
    """The RabbitSource's deliveries not yet acked, oldest first: (receive time, delivery tag)."""

    def __init__(self) -> None:
        self._pending: deque[tuple[float, int]] = deque()
        self._last = 0.0

    def stamp(self) -> float:
        """A receive time later than any before it, so the processor's progress names one delivery."""
        self._last = max(time.time(), self._last + 1e-6)
        return self._last

    def add(self, received_at: float, tag: int) -> None:
        self._pending.append((received_at, tag))

    def __len__(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        self._pending.clear()

    def ackable(self) -> int | None:
        """The newest delivery tag that may be acked (with multiple=True), or None."""
        done_at, needed = progress()
        if not self._pending or self._pending[0][0] > done_at or published() < needed:
            return None
        tag = None
        while self._pending and self._pending[0][0] <= done_at:
            tag = self._pending.popleft()[1]
        return tag
