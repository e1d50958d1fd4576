"""Each device's clock offset, learned from its heartbeats, so staleness is judged on the hub's time.

A Raspberry Pi without a real-time clock boots with the time it last saved and runs behind until
NTP syncs; its messages then look minutes old. For every heartbeat the hub notes the delay
(arrival on the hub's clock minus the device's timestamp). Queueing only ever adds delay, so the
smallest delay over the recent heartbeats is the device's offset (plus the network's least
latency); a clock that runs ahead gives negative delays. A heartbeat counts only when it is
steady: the time between it and the device's previous heartbeat is the same on both clocks. A
backlog being drained (heartbeats arriving together) or a stall (one arriving late) fails that
test, so a message that waited in a queue never teaches the hub a false offset, and staleness,
judged as now - (timestamp + offset), still counts its wait. A clock that steps forward (NTP
syncs) lowers the smallest delay at once; one that steps back is seen by its timestamps going
backwards, and its old delays are forgotten.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from app.core import health

log = logging.getLogger(__name__)

# Steady heartbeats whose smallest delay is the offset: about 2.5 minutes of remote-monitor's
# 5 s heartbeats, so a clock that jumps back (a reboot without a real-time clock) is followed soon.
WINDOW = 32
# Steady heartbeats needed before the offset is used (three heartbeats make two steady pairs).
MIN_SAMPLES = 2
# How much the gap between two heartbeats may differ between the device's clock and the hub's for
# the pair to count as steady: network jitter, and the whole seconds of clients that send unix ints.
STEADY_SECONDS = 1.5
STEADY_FRACTION = 0.01
# Device keys tracked; the least recently heard is forgotten first (counted as clocks.evicted).
MAX_DEVICES = 2000
# Offsets smaller than this are network latency, not a wrong clock: not shown per device.
SHOWN_SECONDS = 1.0
HEALTH_MAX = 50


@dataclass
class _Track:
    last_device: float
    last_arrival: float
    delays: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    warned: bool = False

    def offset(self) -> float | None:
        return min(self.delays) if len(self.delays) >= MIN_SAMPLES else None


def describe(offset: float) -> str:
    """'10 min behind', '3 s ahead': an offset as a person reads it."""
    size = abs(offset)
    if size < 90:
        amount = f"{size:.0f} s"
    elif size < 5400:
        amount = f"{size / 60:.0f} min"
    else:
        amount = f"{size / 3600:.1f} h"
    return f"{amount} {'behind' if offset > 0 else 'ahead'}"


class ClockOffsets:
    def __init__(self, max_devices: int = MAX_DEVICES, warning_seconds: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._max = max_devices
        self.warning_seconds = warning_seconds

    def configure(self, warning_seconds: float, max_devices: int = MAX_DEVICES) -> None:
        with self._lock:
            self.warning_seconds = warning_seconds
            self._max = max_devices

    def observe(self, keys: list[str], device_time: float, arrival: float, sender: str = "") -> None:
        """One heartbeat describing `keys`, stamped device_time by the device, arrived at `arrival`."""
        passed: list[tuple[str, float]] = []
        back: list[tuple[str, float]] = []
        with self._lock:
            for key in dict.fromkeys(keys):
                track = self._tracks.get(key)
                if track is None:
                    self._tracks[key] = _Track(device_time, arrival)
                    while len(self._tracks) > self._max:
                        self._tracks.popitem(last=False)
                        health.count("clocks.evicted")
                    continue
                self._tracks.move_to_end(key)
                device_gap = device_time - track.last_device
                arrival_gap = arrival - track.last_arrival
                if device_gap <= 0 and arrival_gap <= 0:
                    continue  # a duplicate or an older message overtaken: nothing to learn
                track.last_device, track.last_arrival = device_time, arrival
                if device_gap < 0:
                    # Time went backwards on the device (a queue keeps a sender's order, so this is
                    # its clock, e.g. a reboot without a real-time clock): forget the old delays.
                    track.delays.clear()
                    health.count("clocks.stepped_back")
                    continue
                if abs(arrival_gap - device_gap) > STEADY_SECONDS + STEADY_FRACTION * abs(arrival_gap):
                    health.count("clocks.unsteady")
                    continue
                track.delays.append(arrival - device_time)
                offset = track.offset()
                if offset is None:
                    continue
                if not track.warned and abs(offset) > self.warning_seconds:
                    track.warned = True
                    passed.append((key, offset))
                elif track.warned and abs(offset) <= self.warning_seconds / 2:
                    track.warned = False  # half the threshold: a clock hovering at it logs once
                    back.append((key, offset))
        if passed:
            offset = passed[0][1]
            log.warning(
                "clock of %s is %s the hub's (%.0f s, more than CLOCK_OFFSET_WARNING_SECONDS=%s): %s; "
                "its messages are judged on the corrected time",
                sender or "a device",
                describe(offset).rsplit(" ", 1)[1],
                offset,
                f"{self.warning_seconds:g}",
                ", ".join(key for key, _ in passed),
            )
        if back:
            log.info(
                "clock of %s is back in step (%.1f s): %s",
                sender or "a device",
                back[0][1],
                ", ".join(key for key, _ in back),
            )

    def offset(self, key: str) -> float | None:
        """Seconds the device's clock is behind the hub's (negative: ahead), or None while unknown."""
        with self._lock:
            track = self._tracks.get(key)
            return None if track is None else track.offset()

    def offsets(self) -> dict[str, float]:
        """Every learned offset, by device key."""
        with self._lock:
            return {k: o for k, t in self._tracks.items() if (o := t.offset()) is not None}

    def summary(self) -> dict[str, object]:
        """For /api/health: the offsets worth showing, largest first, at most HEALTH_MAX of them."""
        learned = self.offsets()
        shown = sorted(
            ((k, o) for k, o in learned.items() if abs(o) >= SHOWN_SECONDS), key=lambda ko: -abs(ko[1])
        )
        return {
            "learned": len(learned),
            "warning_seconds": self.warning_seconds,
            "offsets": {k: round(o, 1) for k, o in shown[:HEALTH_MAX]},
            "more": max(0, len(shown) - HEALTH_MAX),
        }

    def clear(self) -> None:
        with self._lock:
            self._tracks.clear()


offsets = ClockOffsets()
