"""Meter readings on the event path: stored beside it, charted, and checked against the meter's limits.

A reading (an active meter input with sample_values) is normalised with the meter's settings,
handed to the AuditWriter (meter_config's current reading and a meter_history row) and, when
InfluxDB is configured, to the MeterWriter. Leaving the allowed range is an event: the crossing's
detail ("above 5") goes through the input rules like any activation; a routine reading does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeGuard

from app.core import health
from app.core.channels import MeterPoint, MeterReading
from app.engine import meters, rules
from app.engine.config_snapshot import meters_rule
from app.store import registry

log = logging.getLogger(__name__)
# Any here: a device's decoded payload (wire data, checked where read) and the stored fields.

MeterRules = dict[int, meters.MeterRule]  # input id -> its meter's settings


class MeterHandling:
    def __init__(
        self,
        zones: dict[int, str],
        mark: Callable[[str, int], None],
        store: Callable[[MeterReading], None],
        chart: Callable[[MeterPoint], None],
    ) -> None:
        self._zones = zones  # input id -> the zone of its last reading (rule state)
        self._mark = mark  # marks a piece of rule state changed
        self._store = store
        self._chart = chart

    def reading(
        self, rule: rules.InputRule, device: dict[str, Any], now: float, meter_rules: MeterRules
    ) -> str | None:
        """Store a meter reading; returns the crossing detail when it leaves the allowed range."""
        values = device.get("sample_values")
        if not isinstance(values, dict):
            health.count("processor.malformed")
            log.warning("meter %r sent sample_values of type %s", rule.device_key, type(values).__name__)
            return None
        register, metered = values.get("register"), values.get("meter")
        if not (_number_or_none(register) and _number_or_none(metered)):
            health.count("processor.malformed")
            log.warning("meter %r sent non-numeric values", rule.device_key)
            return None
        meter = meter_rules.get(rule.id)
        if meter is None:
            meter = meter_rules[rule.id] = default_meter(rule)
        value = meters.normalise(register, meter)
        stored: dict[str, Any] = {"meter_reading": meters.reading_text(value, meter)}
        if value is not None and register is not None:  # (value is None whenever register is)
            stored["register_value"] = int(register)
        if metered is not None:
            stored["meter_value"] = int(metered)
        # Stored by the AuditWriter; the limits below decide from memory.
        self._store(MeterReading(rule.id, rule.device_key, now, stored, value))
        health.count("processor.meter_readings")
        location = device.get("location")
        self._chart(
            MeterPoint(
                device_key=rule.device_key,
                location=location if isinstance(location, str) else None,
                metered=None if metered is None else float(metered),
                register=None if value is None or register is None else float(register),
                reading=value,
                timestamp=now,
                divisor=meter.divisor,
            )
        )
        zone = meters.zone(value, meter)
        entered = meters.crossing(self._zones.get(rule.id), zone)
        if zone is not None and zone != self._zones.get(rule.id):
            self._zones[rule.id] = zone
            self._mark("meter_zone", rule.id)
        if entered is None or value is None:
            return None
        detail = meters.crossing_detail(entered, meter)
        log.info("meter %r is %s: %s", rule.device_key, detail, meters.reading_text(value, meter))
        return detail


def default_meter(rule: rules.InputRule) -> meters.MeterRule:
    """A meter input without a meter_config row (e.g. from an original database, or registered a moment
    ago) decides with the default settings; the AuditWriter creates the row with its reading."""
    row = registry.new_meter_config()
    row.input_device_id = rule.id
    return meters_rule(row)


def _number_or_none(value: object) -> TypeGuard[int | float | None]:
    """A JSON number (not a bool), or absent."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
