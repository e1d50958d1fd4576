"""InfluxDB lines for MeterPoints: the hub's `meter` measurement and the original's layout."""

from __future__ import annotations

import math
import re
import time
from typing import SupportsFloat, SupportsIndex

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from app.core import channels

MEASUREMENT = "meter"
FIELDS = ("metered", "register", "reading")


def to_line(point: channels.MeterPoint) -> str | None:
    """The InfluxDB line for a MeterPoint, or None when it carries no usable field."""
    fields: dict[str, float] = {}
    for name in FIELDS:
        value = getattr(point, name)
        if value is None or isinstance(value, str):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            fields[name] = number
    if not fields:
        return None
    p = Point(MEASUREMENT).tag("device_key", str(point.device_key))
    if point.location is not None:
        p.tag("location", str(point.location))
    for name, number in fields.items():
        p.field(name, number)
    p.time(_millis(point.timestamp), WritePrecision.MS)
    line: str = p.to_line_protocol()  # influxdb-client leaves Point untyped
    return line


# ---- the original's layout (original-behaviour.md §6.4), so existing dashboards keep working ---------

# The original wrote each field at most every 5 minutes; its "metered" is the pulses of that time.
ORIGINAL_INTERVAL = 300.0
# Meters remembered for that cadence; a hub has a handful, the cap only bounds a flood of device keys.
ORIGINAL_MAX_METERS = 1000


def device_name_base(device_name: str) -> str:
    """The original's `device` tag: the first two '-' parts of DEVICE_NAME when it has more."""
    parts = device_name.split("-")
    return "-".join(parts[:2]) if len(parts) > 2 else device_name


def original_measurement(device_key: str) -> str:
    """The original's measurement: the device key lower-cased, whitespace runs as '_'."""
    return re.sub(r"\s+", "_", device_key.strip().lower())


class OriginalLayout:
    """Turns MeterPoints into the original's points: per meter, `register` (the reading) and `metered`
    (the pulses since its last write, / the unit factor), each at most every ORIGINAL_INTERVAL seconds.

    The original shared one pair of timers among all meters and dropped the pulses of the message
    that triggered a write; here each meter has its own timers and every pulse is counted once.
    """

    def __init__(self, application: str, device_name: str) -> None:
        self.tags = {"application": application, "device": device_name_base(device_name)}
        # device_key -> [last register write, last metered write, pulses not yet written]
        self._meters: dict[str, list[float]] = {}
        self.refused = 0  # points of meters beyond ORIGINAL_MAX_METERS

    def lines(self, point: channels.MeterPoint) -> list[str]:
        key = str(point.device_key)
        when = _millis(point.timestamp) / 1000
        state = self._meters.get(key)
        if state is None:
            if len(self._meters) >= ORIGINAL_MAX_METERS:
                self.refused += 1
                return []
            state = self._meters[key] = [-math.inf, -math.inf, 0.0]
        fields: list[tuple[str, float]] = []
        metered = _finite(point.metered)
        if metered is not None:
            state[2] += metered
            if when - state[1] >= ORIGINAL_INTERVAL:
                divisor = point.divisor if isinstance(point.divisor, int) and point.divisor > 0 else 1
                fields.append(("metered", state[2] / divisor))
                state[1], state[2] = when, 0.0
        reading = _finite(point.reading)
        if reading is not None and when - state[0] >= ORIGINAL_INTERVAL:
            fields.append(("register", reading))
            state[0] = when
        out = []
        for name, value in fields:
            p = Point(original_measurement(key))
            for tag, text in self.tags.items():
                p.tag(tag, text)
            # One field per point, as the original wrote them.
            p.field(name, value).time(_millis(point.timestamp), WritePrecision.MS)
            out.append(p.to_line_protocol())
        return out


# What float() takes besides text (isinstance against SupportsFloat is a check for __float__).
_FLOATABLE = (SupportsFloat, SupportsIndex, bytes, bytearray)


def _finite(value: object) -> float | None:
    if not isinstance(value, _FLOATABLE) or isinstance(value, str | bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _millis(timestamp: object) -> int:
    try:
        seconds = float(timestamp) if isinstance(timestamp, (*_FLOATABLE, str)) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds):
        seconds = time.time()
    return round(seconds * 1000)
