"""Time zones on zoneinfo: the names the hub accepts and how a wall-clock reading becomes an instant."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from app.core import settings as settings_module
from app.core import zones
from app.engine.config_changes import ChangeError, validate_zone

LONDON = ZoneInfo("Europe/London")
DUBLIN = ZoneInfo("Europe/Dublin")  # the tz database flags Irish winter time as the shifted one
SYDNEY = ZoneInfo("Australia/Sydney")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def instant(naive: datetime, tz: ZoneInfo, dst: bool = False) -> datetime:
    # In UTC: PEP 495 makes a repeated or skipped reading unequal to every time in another zone.
    return zones.localize(naive, tz, dst=dst).astimezone(UTC)


def test_entered_names_must_be_spelt_as_in_the_tz_database() -> None:
    assert zones.is_name("Europe/London") and zones.is_name("UTC") and zones.is_name("Etc/GMT+5")
    assert not zones.is_name("europe/london")
    assert not zones.is_name("Mars/Olympus")
    # In the zoneinfo folder but not zones: the host's own link and the placeholder
    assert not zones.is_name("localtime") and not zones.is_name("Factory")
    assert validate_zone("Europe/London", "timezone") == "Europe/London"
    with pytest.raises(ChangeError):
        validate_zone("europe/london", "timezone")


def test_a_stored_name_is_found_in_any_letter_case_as_pytz_found_it() -> None:
    assert zones.zone("europe/LONDON") is LONDON
    assert zones.zone("utc").key == "UTC"
    assert zones.zone("Etc/GMT_plus_5").key == "Etc/GMT+5"
    with pytest.raises(KeyError):
        zones.zone("Mars/Olympus")


def test_a_bad_user_tz_stops_start_up_naming_the_setting(tmp_path) -> None:
    with pytest.raises(settings_module.SettingsError, match="USER_TZ"):
        settings_module.load({"USER_TZ": "Europe/Londn"}, dotenv_path=tmp_path / "none.env")
    loaded = settings_module.load({"USER_TZ": "Australia/Sydney"}, dotenv_path=tmp_path / "none.env")
    assert loaded.user_tz == "Australia/Sydney"


def test_an_ordinary_reading_is_that_wall_time() -> None:
    assert instant(datetime(2026, 5, 1, 12), LONDON) == utc(2026, 5, 1, 11)
    assert instant(datetime(2026, 1, 1, 12), LONDON, dst=True) == utc(2026, 1, 1, 12)


def test_a_reading_the_autumn_change_repeats_is_standard_time_unless_dst_is_asked() -> None:
    # 27 Oct 2024: London shows 01:30 at 00:30 UTC (BST) and again at 01:30 UTC (GMT)
    assert instant(datetime(2024, 10, 27, 1, 30), LONDON) == utc(2024, 10, 27, 1, 30)
    assert instant(datetime(2024, 10, 27, 1, 30), LONDON, dst=True) == utc(2024, 10, 27, 0, 30)
    # Sydney's autumn is April: 02:30 at 15:30 UTC (AEDT) and at 16:30 UTC (AEST)
    assert instant(datetime(2024, 4, 7, 2, 30), SYDNEY) == utc(2024, 4, 6, 16, 30)
    assert instant(datetime(2024, 4, 7, 2, 30), SYDNEY, dst=True) == utc(2024, 4, 6, 15, 30)


def test_in_dublin_the_summer_reading_is_the_one_not_flagged_as_shifted() -> None:
    # zoneinfo marks Irish winter time (GMT) as the shifted one, as pytz did; is_dst=False meant IST there
    first = datetime(2024, 10, 27, 1, 30, tzinfo=DUBLIN, fold=0)
    second = datetime(2024, 10, 27, 1, 30, tzinfo=DUBLIN, fold=1)
    wanted = {bool(first.dst()): first, bool(second.dst()): second}
    assert instant(datetime(2024, 10, 27, 1, 30), DUBLIN) == wanted[False].astimezone(UTC)
    assert instant(datetime(2024, 10, 27, 1, 30), DUBLIN, dst=True) == wanted[True].astimezone(UTC)
    assert wanted[False].astimezone(UTC) == utc(2024, 10, 27, 0, 30)  # 01:30 IST


def test_a_reading_the_spring_change_skips_takes_the_offset_before_the_jump() -> None:
    # 31 Mar 2024: London jumps from 01:00 GMT to 02:00 BST; 01:30 read in GMT is 02:30 BST
    for dst in (False, True):
        assert instant(datetime(2024, 3, 31, 1, 30), LONDON, dst=dst) == utc(2024, 3, 31, 1, 30)


def test_zone_data_comes_from_the_pinned_tzdata_package_not_the_host() -> None:
    import importlib.metadata
    import zoneinfo

    # The host's tz folder is off the search path, so every host reads a schedule the same way.
    assert zoneinfo.TZPATH == ()
    assert zones.names(), "tzdata's zone list is empty"
    london = zones.zone("Europe/London")
    assert london.key == "Europe/London"
    assert importlib.metadata.version("tzdata")
