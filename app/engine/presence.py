"""Last-seen times per device key and per origin, kept in memory; the HeartbeatFilter hands them on."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.core import health

if TYPE_CHECKING:
    from app.core.settings import Settings
    from app.store.models import DeviceView

# Gaps shorter than this are one burst (a device reporting several inputs at once, a retry), not
# its heartbeat rhythm; counting them would shrink the learned interval and cause false alarms.
MIN_GAP_SECONDS = 0.5
# Weight of the newest gap in the running mean: steady enough to ride out one late heartbeat,
# quick enough to follow a device whose firmware changed its interval.
GAP_WEIGHT = 0.2
# Gaps needed before the learned interval is trusted over MAX_HEARTBEAT_DELAY.
MIN_GAPS = 3
# A gap this many times the learned interval is an outage, not the rhythm: learning it would make
# the next outage take hours to notice. Several such gaps in a row mean the rhythm really changed.
OUTAGE_GAP_FACTOR = 5.0
OUTAGE_GAPS_TO_RELEARN = 3
# Only registered keys reach presence (at most MAX_INPUTS + MAX_OUTPUTS), so these bounds are a
# second line: past them the key or origin heard longest ago is forgotten, and counted.
MAX_KEYS = 20_000
MAX_ORIGINS = 4096


@dataclass(frozen=True)
class Timing:
    """What presence knows of one device key: when last heard, its usual interval, how many gaps."""

    last_seen: float
    gaps: int
    mean_gap: float | None

    @property
    def interval(self) -> float | None:
        """The learned interval, or None while too few gaps have been seen to trust it."""
        return self.mean_gap if self.gaps >= MIN_GAPS else None

    @property
    def heartbeating(self) -> bool:
        """Heard at least twice, apart, since the start: only such a device can go offline."""
        return self.gaps >= 1


class Presence:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # least recently heard first, so the bound evicts the one heard longest ago
        self._devices: OrderedDict[str, float] = OrderedDict()
        self._origins: OrderedDict[str, float] = OrderedDict()
        self._dirty: set[str] = set()
        # key -> (gaps counted, exponentially weighted mean gap, outage-sized gaps in a row)
        self._gaps: dict[str, tuple[int, float, int]] = {}
        # origin -> (online, last_seen) as an outside directory (mDash) reports it
        self._reported: dict[str, tuple[bool, float | None]] = {}

    def seen(self, origin: str, keys: list[str], when: float | None = None) -> None:
        when = time.time() if when is None else when
        with self._lock:
            self._origins[origin] = when
            self._origins.move_to_end(origin)
            while len(self._origins) > MAX_ORIGINS:
                self._origins.popitem(last=False)
                health.count("presence.evicted")
            for key in keys:
                previous = self._devices.get(key)
                if previous is not None:
                    self._learn(key, when - previous)
                    # A late-arriving older message must not move last-seen backwards.
                    when_for_key = max(previous, when)
                else:
                    when_for_key = when
                self._devices[key] = when_for_key
                self._devices.move_to_end(key)
                self._dirty.add(key)
            while len(self._devices) > MAX_KEYS:
                old, _ = self._devices.popitem(last=False)
                self._gaps.pop(old, None)
                self._dirty.discard(old)
                health.count("presence.evicted")

    def _learn(self, key: str, gap: float) -> None:
        if gap < MIN_GAP_SECONDS:
            return
        count, mean, outages = self._gaps.get(key, (0, gap, 0))
        if count >= MIN_GAPS and gap > OUTAGE_GAP_FACTOR * mean:
            outages += 1
            if outages < OUTAGE_GAPS_TO_RELEARN:
                self._gaps[key] = (count + 1, mean, outages)
            else:
                self._gaps[key] = (count + 1, gap, 0)  # the device now beats this slowly
            return
        self._gaps[key] = (count + 1, mean + GAP_WEIGHT * (gap - mean) if count else gap, 0)

    def timing(self, key: str) -> Timing | None:
        with self._lock:
            return self._timing(key)

    def timings(self) -> dict[str, Timing]:
        """Every device key heard since the start, in one consistent read."""
        with self._lock:
            return {key: t for key in self._devices if (t := self._timing(key)) is not None}

    def _timing(self, key: str) -> Timing | None:
        last = self._devices.get(key)
        if last is None:
            return None
        count, mean, _ = self._gaps.get(key, (0, 0.0, 0))
        return Timing(last_seen=last, gaps=count, mean_gap=mean if count else None)

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
            while len(self._reported) > MAX_ORIGINS:
                self._reported.pop(next(iter(self._reported)))

    def reported(self, origin: str) -> tuple[bool, float | None] | None:
        with self._lock:
            return self._reported.get(origin)

    def clear(self) -> None:
        with self._lock:
            self._reported.clear()
            self._devices.clear()
            self._gaps.clear()
            self._origins.clear()
            self._dirty.clear()

    def take_dirty(self) -> dict[str, float]:
        """Keys seen since the last call, with their times (for the periodic database flush)."""
        with self._lock:
            out = {k: self._devices[k] for k in self._dirty}
            self._dirty.clear()
            return out


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def seen_online(
    presence: Presence, settings: Settings, row: DeviceView, now: float
) -> tuple[float | None, bool]:
    """(last seen, online) of a device row: the newer of in-memory presence and the flushed column.

    The dashboard, the API and the bot's /status all judge a device this way.
    """
    times = [t for t in (presence.last_seen(row.device_key), _epoch(row.last_seen)) if t is not None]
    reported = presence.reported(row.origin) if row.origin else None
    if reported is not None and reported[1] is not None:
        times.append(reported[1])
    last = max(times, default=None)
    # Built-in devices (panic button and the like) live in this process, so they are always there.
    builtin = row.origin is not None and row.origin == settings.device_name
    online = builtin or (last is not None and now - last <= settings.max_heartbeat_delay)
    if reported is not None and not reported[0]:
        online = False  # the device directory (mDash) says it is offline, whatever we last heard
    return last, online


presence = Presence()
