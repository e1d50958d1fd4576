"""Device clock offsets learned from heartbeats (app.engine.clocks), staleness judged on corrected time."""

from __future__ import annotations

import logging

import pytest

from app.core import health
from app.engine import clocks, rules
from app.engine.clocks import ClockOffsets

T0 = 1_800_000_000.0
KEYS = ["Front Door Motion (Hallway)", "Hallway Buzzer"]


def beats(
    offsets: ClockOffsets,
    count: int,
    behind: float,
    start: float = T0,
    every: float = 5.0,
    keys: list[str] | None = None,
) -> float:
    """Steady heartbeats from a device `behind` seconds behind the hub; returns the last arrival."""
    arrival = start
    for n in range(count):
        arrival = start + n * every
        offsets.observe(keys or KEYS, arrival - behind - 0.004, arrival, "ioboard.pi-hallway")
    return arrival


def test_a_clock_ten_minutes_behind_is_learned_from_steady_heartbeats() -> None:
    offsets = ClockOffsets()
    beats(offsets, 2, 600)
    assert offsets.offset(KEYS[0]) is None  # one steady pair is not enough to act on
    beats(offsets, 4, 600)
    assert offsets.offset(KEYS[0]) == pytest.approx(600.004, abs=1e-5)
    assert offsets.offsets() == {k: pytest.approx(600.004, abs=1e-5) for k in KEYS}
    assert clocks.describe(600) == "10 min behind"


def test_a_clock_ahead_gives_a_negative_offset() -> None:
    offsets = ClockOffsets()
    beats(offsets, 5, -42)
    assert offsets.offset(KEYS[0]) == pytest.approx(-41.996, abs=1e-5)
    assert clocks.describe(-42) == "42 s ahead"


def test_the_smallest_delay_wins_so_a_late_heartbeat_is_not_skew() -> None:
    offsets = ClockOffsets()
    last = beats(offsets, 6, 0)
    # One heartbeat waits 200 s in a queue, then the next arrives on time.
    offsets.observe(KEYS, last + 5 - 0.004, last + 205)
    offsets.observe(KEYS, last + 210 - 0.004, last + 210)
    assert offsets.offset(KEYS[0]) == pytest.approx(0.004, abs=1e-5)
    # the late one and the next one after it, for each of the heartbeat's keys
    assert health.counters()["clocks.unsteady"] == 2 * len(KEYS)


def test_a_drained_backlog_teaches_nothing() -> None:
    """Heartbeats that queued while the hub was away arrive together: their gaps differ on the two clocks."""
    offsets = ClockOffsets()
    arrival = T0 + 1000
    for n in range(11):  # stamped 200 s .. 150 s ago, delivered within half a second
        offsets.observe(KEYS, arrival - 200 + 5 * n, arrival + 0.05 * n)
    assert offsets.offset(KEYS[0]) is None
    # A message from this queue is still stale: without an offset its own timestamp counts.
    verdict = rules.check_stale(arrival - 150, arrival + 1, rules.Defaults(), offsets.offset(KEYS[0]))
    assert verdict.reason == rules.STALE


def test_a_clock_that_syncs_forward_is_followed_at_once() -> None:
    offsets = ClockOffsets()
    last = beats(offsets, 5, 600)
    offsets.observe(KEYS, last + 5 - 0.004, last + 5)  # NTP synced: 600 s forward in one step
    offsets.observe(KEYS, last + 10 - 0.004, last + 10)
    assert offsets.offset(KEYS[0]) == pytest.approx(0.004, abs=1e-5)


def test_a_clock_that_steps_back_is_relearned() -> None:
    offsets = ClockOffsets()
    last = beats(offsets, 8, 0)
    # The device reboots without a real-time clock: its time goes back to an hour ago.
    last = beats(offsets, 4, 3600, start=last + 30)
    assert health.counters()["clocks.stepped_back"] == len(KEYS)  # counted per device key
    assert offsets.offset(KEYS[0]) == pytest.approx(3600.004, abs=1e-5)


def test_staleness_uses_the_corrected_time_and_a_queued_message_is_still_stale() -> None:
    defaults = rules.Defaults(message_validity=120)
    now = T0 + 10_000
    behind = 600.0
    # Sent just now by a device 10 minutes behind: fresh once corrected.
    assert rules.check_stale(now - behind - 1, now, defaults, behind).fire
    # Without the correction it is the "600 s old" the hub used to drop.
    assert rules.check_stale(now - behind - 1, now, defaults).reason == rules.STALE
    # It really waited 300 s in a queue: stale on the corrected time too, and the detail says so.
    queued = rules.check_stale(now - behind - 300, now, defaults, behind)
    assert queued.reason == rules.STALE
    assert queued.detail == (
        "message is 300 s old (limit 120 s) after correcting the device clock, 600 s behind"
    )
    # A clock ahead: a message stamped 'now' by it really is old.
    assert rules.check_stale(now, now, defaults, -200).reason == rules.STALE


def test_a_warning_is_logged_once_when_the_offset_passes_the_threshold(caplog) -> None:
    offsets = ClockOffsets(warning_seconds=30)
    with caplog.at_level(logging.INFO, "app.engine.clocks"):
        last = beats(offsets, 20, 600)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        text = warnings[0].getMessage()
        assert "ioboard.pi-hallway" in text and "behind" in text and "CLOCK_OFFSET_WARNING_SECONDS=30" in text
        assert all(key in text for key in KEYS)
        beats(offsets, 3, 0, start=last + 5)  # NTP synced
        assert any("back in step" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
        beats(offsets, 3, 0, start=last + 100)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_small_offsets_do_not_warn(caplog) -> None:
    offsets = ClockOffsets(warning_seconds=30)
    with caplog.at_level(logging.INFO, "app.engine.clocks"):
        beats(offsets, 10, 12)
    assert offsets.offset(KEYS[0]) == pytest.approx(12.004, abs=1e-5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_map_is_bounded_and_evictions_are_counted() -> None:
    offsets = ClockOffsets(max_devices=50)
    for n in range(80):
        beats(offsets, 3, 7, keys=[f"device {n}"])
    learned = offsets.offsets()
    assert len(learned) == 50
    assert "device 0" not in learned and "device 79" in learned  # the least recently heard went first
    assert health.counters()["clocks.evicted"] == 30


def test_the_health_summary_lists_the_largest_offsets_and_is_bounded() -> None:
    offsets = ClockOffsets(warning_seconds=30)
    beats(offsets, 3, 0, keys=["on time"])
    for n in range(clocks.HEALTH_MAX + 5):
        beats(offsets, 3, 10 + n, keys=[f"late {n}"])
    summary = offsets.summary()
    assert summary["learned"] == clocks.HEALTH_MAX + 6
    shown = summary["offsets"]
    assert isinstance(shown, dict) and len(shown) == clocks.HEALTH_MAX
    assert "on time" not in shown and list(shown)[0] == f"late {clocks.HEALTH_MAX + 4}"
    assert summary["more"] == 5 and summary["warning_seconds"] == 30
