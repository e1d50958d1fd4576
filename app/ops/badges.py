"""Healthchecks badges for the dashboard: each badge's state, fetched in JSON form by a thread of its own.

The original put <img src="https://healthchecks.io/badge/<id>"> on the page; the hub asks for the same
badge as JSON instead, so the page needs no third-party image (it works on a LAN without internet and
under a strict Content-Security-Policy) and shows the state in its own health strip.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

from app.core.settings import Settings
from pylib import threads

log = logging.getLogger(__name__)

POLL_SECONDS = 60.0
REQUEST_TIMEOUT = 10.0
MAX_BODY = 64 * 1024
# Healthchecks' badge states; anything else shows as unknown.
STATES = frozenset({"up", "down", "grace", "new", "started", "paused"})
_SUFFIXES = (".svg", ".json", ".shields")

_lock = threading.Lock()
_states: dict[str, Badge] = {}


@dataclass(frozen=True)
class Badge:
    label: str
    state: str  # one of STATES, or "unknown" before the first answer or after a bad one
    checked_at: float | None = None


def label_of(badge_id: str) -> str:
    """The tag a badge shows (<key>/<signature>/<tag>.svg), or "all checks" for a project-wide one."""
    parts = badge_id.split("/")
    last = parts[-1]
    for suffix in _SUFFIXES:
        last = last.removesuffix(suffix)
    return last if len(parts) >= 3 and last else "all checks"


def json_url(base: str, badge_id: str) -> str:
    path = badge_id
    for suffix in _SUFFIXES:
        path = path.removesuffix(suffix)
    return f"{base}/{quote(path, safe='/-_.~')}.json"


def states(settings: Settings) -> list[tuple[str, Badge]]:
    """Each configured badge with its last known state, in the order of HEALTHCHECKS_BADGE_CSV."""
    with _lock:
        known = dict(_states)
    return [(b, known.get(b) or Badge(label_of(b), "unknown")) for b in settings.healthchecks_badges]


def _store(badge_id: str, badge: Badge) -> None:
    with _lock:
        _states[badge_id] = badge


def clear() -> None:
    with _lock:
        _states.clear()


def parse(body: bytes) -> str:
    """The state in a badge's JSON ({"status": "up", "total": 3, ...}); ValueError when it has none."""
    answer = json.loads(body)
    status = answer.get("status") if isinstance(answer, dict) else None
    if status not in STATES:
        raise ValueError(f"no known status in {body[:100]!r}")
    return str(status)


class BadgePoller(threads.AppThread):
    """Fetches every badge every POLL_SECONDS; a failure marks it unknown and is logged (throttled)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("HealthchecksBadges")
        self._settings = settings
        self._quiet = threads.QuietRepeats()

    def poll_once(self) -> None:
        for badge_id in self._settings.healthchecks_badges:
            label = label_of(badge_id)
            url = json_url(self._settings.healthchecks_badge_base_url, badge_id)
            try:
                request = urllib.request.Request(url, headers={"Accept": "application/json"})
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310
                    state = parse(response.read(MAX_BODY))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                _store(badge_id, Badge(label, "unknown", time.time()))
                # the badge id is part of the URL and not a secret (it is made to be shown on pages)
                if self._quiet.should_log(f"{badge_id} {type(exc).__name__}"):
                    log.warning("Healthchecks badge %s: %s", label, exc)
                continue
            _store(badge_id, Badge(label, state, time.time()))

    def work(self) -> None:
        # Not threads.Backoff: a failed badge shows "unknown" and is simply asked again at the next
        # poll, which is already minutes apart; backing off would only keep the page stale longer.
        while not threads.shutting_down.is_set():
            self.poll_once()
            if threads.sleep(POLL_SECONDS):
                break
