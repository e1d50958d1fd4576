"""Unit tests of the meter arithmetic and limit crossings."""

from __future__ import annotations

from app.engine import meters
from app.engine.meters import ABOVE, BELOW, INSIDE, MeterRule


def test_reading_with_factor_precision_and_unit() -> None:
    rule = MeterRule(1, unit="kWh", factor=1000, precision=2)
    assert meters.reading_text(meters.normalise(123456, rule), rule) == "123.46 kWh"
    one = MeterRule(1, unit="Wh", factor=1, precision=0)  # factor 1 is allowed (the original refused it)
    assert meters.reading_text(meters.normalise(42, one), one) == "42 Wh"
    assert (
        meters.reading_text(
            meters.normalise(7, MeterRule(1, factor=3, precision=3)), MeterRule(1, precision=3)
        )
        == "2.333"
    )
    assert meters.reading_text(meters.normalise(5, MeterRule(1)), MeterRule(1)) == "5"  # NULL unit: no suffix


def test_unset_register() -> None:
    rule = MeterRule(1, unit="kWh", factor=1000)
    assert meters.normalise(-1, rule) is None
    assert meters.reading_text(None, rule) == "unset"
    assert meters.zone(None, MeterRule(1, low_limit=0)) is None


def test_zero_is_a_real_limit_and_limits_use_the_displayed_value() -> None:
    rule = MeterRule(1, factor=1000, low_limit=0, high_limit=5)
    assert meters.zone(meters.normalise(0, rule), rule) == INSIDE
    assert meters.zone(meters.normalise(5000, rule), rule) == INSIDE
    assert meters.zone(meters.normalise(5001, rule), rule) == ABOVE
    below = MeterRule(1, low_limit=0)
    assert meters.zone(-0.5, below) == BELOW
    assert meters.zone(10.0, MeterRule(1)) == INSIDE  # no limits


def test_crossing_fires_once_per_excursion() -> None:
    zones = [INSIDE, ABOVE, ABOVE, ABOVE, INSIDE, ABOVE, BELOW, None, BELOW]
    fired = []
    previous = None
    for z in zones:
        fired.append(meters.crossing(previous, z))
        if z is not None:
            previous = z
    assert fired == [None, ABOVE, None, None, None, ABOVE, BELOW, None, None]
    assert meters.crossing(None, ABOVE) == ABOVE  # already out of range at start: reported once


def test_crossing_detail() -> None:
    rule = MeterRule(1, unit="kWh", factor=1000, precision=1, high_limit=5, low_limit=1)
    assert meters.crossing_detail(ABOVE, rule) == "above 5 kWh"
    assert meters.crossing_detail(BELOW, rule) == "below 1 kWh"
    assert meters.crossing_detail(ABOVE, MeterRule(1, high_limit=0)) == "above 0"


def test_reset_modes() -> None:
    rule = MeterRule(1, reset_value=5000)
    assert meters.reset(rule, 100, None, None) == ("set", 5000, 5000)
    assert meters.reset(rule, 100, 7, "set") == ("set", 7, 7)
    assert meters.reset(rule, 100, 0, "set") == ("set", 0, 0)
    additive = MeterRule(1, reset_value=250, reset_additive=True)
    assert meters.reset(additive, 100, None, None) == ("adjust", 250, 350)
    assert meters.reset(additive, 100, -500, None) == ("adjust", -500, 0)
    assert meters.reset(additive, -1, 10, "adjust") == ("adjust", 10, 10)
