"""Quiet hours: the pure window arithmetic, the set_quiet_hours change, settings validation."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from datetime import time as dtime
from zoneinfo import ZoneInfo

import pytest

from app.core import settings as settings_module
from app.core import zones
from app.core.settings import parse_hhmm
from app.engine.rules import QuietHours, quiet_until

LONDON = ZoneInfo("Europe/London")
DAY = QuietHours(dtime(7, 0), dtime(21, 0))


def at(tz: tzinfo, *args: int) -> float:
    return zones.localize(datetime(*args), tz).timestamp()


def test_inside_the_allowed_window_is_not_quiet() -> None:
    assert quiet_until(at(LONDON, 2024, 6, 1, 12, 0), DAY, LONDON) is None
    assert quiet_until(at(LONDON, 2024, 6, 1, 7, 0), DAY, LONDON) is None  # not_before is allowed


def test_before_the_window_waits_for_today_after_it_for_tomorrow() -> None:
    assert quiet_until(at(LONDON, 2024, 6, 1, 3, 0), DAY, LONDON) == at(LONDON, 2024, 6, 1, 7, 0)
    assert quiet_until(at(LONDON, 2024, 6, 1, 21, 0), DAY, LONDON) == at(LONDON, 2024, 6, 2, 7, 0)
    assert quiet_until(at(LONDON, 2024, 6, 1, 23, 59), DAY, LONDON) == at(LONDON, 2024, 6, 2, 7, 0)


def test_a_window_crossing_midnight() -> None:
    night = QuietHours(dtime(22, 0), dtime(6, 0))  # allowed 22:00 to 06:00
    assert quiet_until(at(LONDON, 2024, 6, 1, 23, 0), night, LONDON) is None
    assert quiet_until(at(LONDON, 2024, 6, 2, 5, 59), night, LONDON) is None
    assert quiet_until(at(LONDON, 2024, 6, 2, 6, 0), night, LONDON) == at(LONDON, 2024, 6, 2, 22, 0)
    assert quiet_until(at(LONDON, 2024, 6, 2, 12, 0), night, LONDON) == at(LONDON, 2024, 6, 2, 22, 0)


def test_equal_bounds_mean_no_quiet_hours() -> None:
    assert quiet_until(at(LONDON, 2024, 6, 1, 3, 0), QuietHours(dtime(7, 0), dtime(7, 0)), LONDON) is None


def test_dst_days_in_london_use_the_wall_clock() -> None:
    # 31 March 2024: clocks go 01:00 GMT -> 02:00 BST. 07:00 that day is 06:00 UTC.
    opens = quiet_until(at(LONDON, 2024, 3, 31, 0, 30), DAY, LONDON)
    assert opens == datetime(2024, 3, 31, 6, 0, tzinfo=UTC).timestamp()
    # 27 October 2024: back to GMT; 07:00 is 07:00 UTC, after a 25-hour night.
    opens = quiet_until(datetime(2024, 10, 26, 20, 30, tzinfo=UTC).timestamp(), DAY, LONDON)  # 21:30 BST
    assert opens == datetime(2024, 10, 27, 7, 0, tzinfo=UTC).timestamp()


def test_window_opening_inside_the_skipped_or_repeated_hour() -> None:
    odd = QuietHours(dtime(1, 30), dtime(12, 0))
    # 01:30 does not exist on 31 March: the window opens at the first instant after the jump.
    opens = quiet_until(at(LONDON, 2024, 3, 31, 0, 10), odd, LONDON)
    assert opens == datetime(2024, 3, 31, 1, 30, tzinfo=UTC).timestamp()  # 02:30 BST
    # 01:30 happens twice on 27 October: the window opens at the first.
    opens = quiet_until(datetime(2024, 10, 26, 23, 10, tzinfo=UTC).timestamp(), odd, LONDON)
    assert opens == datetime(2024, 10, 27, 0, 30, tzinfo=UTC).timestamp()  # 01:30 BST


def test_parse_hhmm() -> None:
    assert parse_hhmm("7:05") == dtime(7, 5) and parse_hhmm(" 21:00 ") == dtime(21, 0)
    for bad in ("24:00", "7", "07:60", "7:5", "ab:cd", "", "-1:00", "07:00:00"):
        with pytest.raises(ValueError):
            parse_hhmm(bad)


def test_settings_default_and_refuse_bad_times(make_settings) -> None:
    s = make_settings()
    assert (s.quiet_hours_not_before, s.quiet_hours_not_after) == (dtime(7, 0), dtime(21, 0))
    assert make_settings(QUIET_HOURS_NOT_BEFORE="6:30").quiet_hours_not_before == dtime(6, 30)
    with pytest.raises(settings_module.SettingsError, match="QUIET_HOURS_NOT_AFTER"):
        make_settings(QUIET_HOURS_NOT_AFTER="9 PM")
