"""Pure meter arithmetic: register to reading, display text, and limit crossings (original §6, bugs fixed).

Limits compare the same quantity the page shows: the register divided by the unit factor (so with
factor 1000 and unit kWh, a high limit of 5 means 5 kWh). A limit of 0 is a real limit; NULL is
none. A register of -1 (or any negative value) is the meter's "unset" and is never compared.
"""

from __future__ import annotations

from dataclasses import dataclass

INSIDE = "inside"
BELOW = "below"
ABOVE = "above"


@dataclass(frozen=True)
class MeterRule:
    input_id: int
    unit: str | None = None
    factor: int | None = None
    precision: int | None = None
    low_limit: float | None = None
    high_limit: float | None = None
    iot_topic: str | None = None
    reset_value: int | None = None
    reset_additive: bool = False

    @property
    def divisor(self) -> int:
        return self.factor if self.factor and self.factor > 0 else 1

    @property
    def places(self) -> int:
        return self.precision if self.precision is not None and 0 <= self.precision <= 9 else 0


def normalise(register: float | None, rule: MeterRule) -> float | None:
    """The displayed quantity, or None when the meter's register is unset (negative)."""
    if register is None or register < 0:
        return None
    return register / rule.divisor


def reading_text(value: float | None, rule: MeterRule) -> str:
    if value is None:
        return "unset"
    text = format(value, f".{rule.places}f")
    return f"{text} {rule.unit}" if rule.unit else text


def zone(value: float | None, rule: MeterRule) -> str | None:
    if value is None:
        return None
    if rule.low_limit is not None and value < rule.low_limit:
        return BELOW
    if rule.high_limit is not None and value > rule.high_limit:
        return ABOVE
    return INSIDE


def crossing(previous: str | None, current: str | None) -> str | None:
    """The zone entered when a reading leaves the allowed range; None while it stays where it was.

    An unknown previous zone (first reading since start) counts as inside, so a meter already out of
    range is reported once.
    """
    if current is None or current in (INSIDE, previous):
        return None
    return current


def limit_text(limit: float | None) -> str:
    """A limit as a person typed it: 5 (not 5.0), 4.5, 999.99."""
    if limit is None:
        return "none"
    if float(limit).is_integer():
        return str(int(limit))
    return f"{limit:.9f}".rstrip("0").rstrip(".")


def crossing_detail(entered: str, rule: MeterRule) -> str:
    """The event detail of a crossing; stable per limit so the latch treats repeats as one event."""
    unit = f" {rule.unit}" if rule.unit else ""
    if entered == BELOW:
        return f"below {limit_text(rule.low_limit)}{unit}"
    return f"above {limit_text(rule.high_limit)}{unit}"


def reset(rule: MeterRule, register: int, value: int | None, mode: str | None) -> tuple[str, int, int]:
    """(mode, value sent, register kept locally) for a reset; mirrors meter-app's own arithmetic."""
    mode = mode or ("adjust" if rule.reset_additive else "set")
    amount = value if value is not None else (rule.reset_value or 0)
    if mode == "adjust":
        return mode, amount, max(max(register, 0) + amount, 0)
    return mode, amount, max(amount, 0)
