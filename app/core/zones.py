"""Time zones, one model: the standard library's zoneinfo, taking the names and readings pytz took."""

from __future__ import annotations

import os
import zoneinfo
from datetime import UTC, datetime, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

# The zone data is the pinned tzdata package's, not the host's: pytz carried its own, so a stored
# schedule read the same on every host, and the Pi's (or the image's) OS tz database may be years old.
# PYTHONTZPATH, when an operator sets it, still points zoneinfo at a folder of their choice.
if not os.environ.get("PYTHONTZPATH"):
    zoneinfo.reset_tzpath(to=())

# In the tz database folder but not zones a person picks: the host's own zone link and tzdata's
# placeholder. pytz listed neither, so USER_TZ and schedule zones accept neither.
_NOT_ZONES = frozenset({"localtime", "Factory"})


@cache
def names() -> frozenset[str]:
    """Every zone name USER_TZ and a schedule's zone accept (the tz database's, spelt exactly)."""
    # available_timezones() reads the folder on each call; the set is fixed for the process's life.
    return frozenset(available_timezones()) - _NOT_ZONES


@cache
def _by_lower() -> dict[str, str]:
    return {name.lower(): name for name in names()}


def is_name(value: str) -> bool:
    """A tz database name as it is spelt there, e.g. Europe/London (checked where one is entered)."""
    return value in names()


def zone(name: str) -> ZoneInfo:
    """The zone a name stands for; KeyError when it stands for none.

    As pytz.timezone did for names already stored: any letter case, and _plus_/_minus_ for + and -
    (Etc/GMT_plus_5).
    """
    spelt = _by_lower().get(name.replace("_plus_", "+").replace("_minus_", "-").lower())
    if spelt is None:
        raise KeyError(name)
    return ZoneInfo(spelt)


def localize(naive: datetime, tz: tzinfo, dst: bool = False) -> datetime:
    """The instant a wall-clock reading in tz names, read as pytz's localize(naive, is_dst=dst) read it.

    A reading the clocks show twice is the one whose daylight-saving flag is `dst` (when the flags
    cannot tell: the later reading, or with dst the earlier); one the clocks skip takes the offset
    before the change, the first real instant after the jump.
    """
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset() or _skipped(first):
        return first  # PEP 495: in a gap, fold=0 reads with the offset before the change
    flagged = [reading for reading in (first, second) if bool(reading.dst()) == dst]
    if len(flagged) == 1:
        return flagged[0]
    return first if dst else second


def _skipped(aware: datetime) -> bool:
    """A wall time the clocks jump over: it does not survive a round trip through UTC."""
    back = aware.astimezone(UTC).astimezone(aware.tzinfo)
    return back.replace(tzinfo=None) != aware.replace(tzinfo=None)
