"""Registration caps and the record of what they refused: for the log, /metrics and the dashboard banner."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from app.core import health
from app.core.settings import Settings
from pylib import ratelog

log = logging.getLogger(__name__)

# The caps, by the setting that sets each one (also the label of the refusal metric).
PER_DEVICE = {"input": "MAX_INPUTS_PER_DEVICE", "output": "MAX_OUTPUTS_PER_DEVICE"}
TOTAL = {"input": "MAX_INPUTS", "output": "MAX_OUTPUTS"}
CAPS = (*PER_DEVICE.values(), *TOTAL.values())
COUNTER = "heartbeat_filter.refused"  # every refused key; ends in a drop reason, so /metrics shows it
CAP_COUNTER = "limits.refused."  # + cap name: one series per cap, never per device
LOG_SECONDS = 3600.0  # a device's refusals are logged at most once per this
BANNER_SECONDS = 24 * 3600.0  # a refusal stays on the dashboard this long after the last one
MAX_ENTRIES = 20  # (device, cap) pairs kept for the banner; the oldest go first
MAX_LOGGED = 1024  # devices whose last refusal log time is remembered


@dataclass(frozen=True)
class Caps:
    """The four registration caps (the settings' defaults unless given)."""

    inputs_per_device: int = 64
    outputs_per_device: int = 16
    inputs: int = 2000
    outputs: int = 500

    @classmethod
    def from_settings(cls, settings: Settings) -> Caps:
        return cls(
            settings.max_inputs_per_device,
            settings.max_outputs_per_device,
            settings.max_inputs,
            settings.max_outputs,
        )

    def per_device(self, kind: str) -> int:
        return self.inputs_per_device if kind == "input" else self.outputs_per_device

    def total(self, kind: str) -> int:
        return self.inputs if kind == "input" else self.outputs


@dataclass
class Refusal:
    """A device that tried to register past a cap: how many keys, first and last time (updated in place)."""

    device: str
    cap: str
    limit: int
    count: int
    first: float
    last: float
    example: str  # one refused device key, so the person can recognise the device


class Refusals:
    """What the caps refused lately, bounded: a flood of device names cannot grow it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], Refusal] = OrderedDict()
        self._logged: OrderedDict[str, float] = OrderedDict()
        # Once per device per hour is not enough when every flood message names a new device (an
        # MQTT board per message): across devices, at most ratelog.BURST lines a minute.
        self._log = ratelog.RateLimitedLog(log)

    def refuse(self, device: str, cap: str, limit: int, keys: list[str], now: float | None = None) -> None:
        """Count, remember and (once per device per LOG_SECONDS) log keys refused by one cap."""
        if not keys:
            return
        now = time.time() if now is None else now
        health.count(COUNTER, len(keys))
        health.count(CAP_COUNTER + cap, len(keys))
        device = device[:200]
        with self._lock:
            entry = self._entries.get((device, cap))
            if entry is None:
                entry = self._entries[(device, cap)] = Refusal(device, cap, limit, 0, now, now, keys[0][:100])
                while len(self._entries) > MAX_ENTRIES:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end((device, cap))
            entry.limit, entry.count, entry.last = limit, entry.count + len(keys), now
            last_logged = self._logged.get(device)
            should_log = last_logged is None or now - last_logged >= LOG_SECONDS
            if should_log:
                self._logged[device] = now
                self._logged.move_to_end(device)
                while len(self._logged) > MAX_LOGGED:
                    self._logged.popitem(last=False)
        if should_log:
            self._log.warning(
                "device %r reached %s (%d): %d new key(s) not registered, e.g. %r; "
                "its known devices still work (further refusals are counted, logged again in an hour)",
                device,
                cap,
                limit,
                len(keys),
                keys[0][:100],
            )

    def recent(self, now: float | None = None, within: float = BANNER_SECONDS) -> list[Refusal]:
        """Refusals whose last attempt is within `within` seconds, newest first."""
        now = time.time() if now is None else now
        with self._lock:
            entries = [replace(e) for e in self._entries.values()]  # copies: the page reads them later
        return sorted((e for e in entries if now - e.last <= within), key=lambda e: e.last, reverse=True)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._logged.clear()


refusals = Refusals()
