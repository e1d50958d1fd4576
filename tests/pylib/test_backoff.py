"""threads.Backoff, the hub's one retry pacing: its delays, reset, and the pause that stops early."""

from __future__ import annotations

import threading

from pylib import threads


def delays(backoff: threads.Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_delays_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    backoff = threads.Backoff(initial=1.0, maximum=30.0)
    # What the 1Password start-up loop computed by hand before: min(30, 2 ** (attempt - 1))
    assert delays(backoff, 7) == [min(30.0, 2.0 ** (n - 1)) for n in range(1, 8)]
    backoff.reset()
    assert delays(backoff, 2) == [1.0, 2.0]


def test_pause_ends_at_once_when_its_event_is_set_and_still_advances() -> None:
    stop = threading.Event()
    stop.set()
    backoff = threads.Backoff(initial=60.0, maximum=600.0)
    assert backoff.pause(stop) is True
    assert backoff.next_delay() == 120.0


def test_pause_waits_the_delay_when_nothing_stops_it() -> None:
    backoff = threads.Backoff(initial=0.01, maximum=0.02)
    assert backoff.pause(threading.Event()) is False
    assert backoff.pause() is False  # the default event: shutdown, which has not started
    assert backoff.next_delay() == 0.02
