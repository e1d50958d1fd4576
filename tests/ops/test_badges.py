"""Healthchecks badges on the dashboard, fetched as JSON from a stand-in of Healthchecks' badge API."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.settings import SettingsError
from app.engine.presence import Presence
from app.ops import badges
from app.store import db
from tests.serving import Serving
from tests.support import free_port, wait_for
from tests.web.test_pages import page_app

KEY = "8d3a5b1e-29b4-4c5f-9e2a-7a1f0c2b3d4e"


class HealthchecksBadges:
    """GET /badge/<key>/<signature>[/<tag>].<json|svg>, as healthchecks.io serves badges."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status: dict[str, Any] = {}
        self.paths: list[str] = []
        self.serving = Serving(self.port, self._handle, "HealthchecksBadges")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/badge"

    def _handle(self, req: Any) -> None:
        self.paths.append(req.path)
        match = re.fullmatch(rf"/badge/{KEY}/(\w{{8}}(?:-2)?)(?:/([\w-]+))?\.json", req.path)
        answer = self.status.get(match.group(2) or "*") if match else None
        if answer is None:
            req.send_response(404)
            req.end_headers()
            return
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


@pytest.fixture
def hc() -> Iterator[HealthchecksBadges]:
    badges.clear()
    standin = HealthchecksBadges()
    yield standin
    standin.serving.stop()
    badges.clear()


def strip(html: str) -> dict[str, tuple[str, str]]:
    found = re.findall(
        r'<span class="badge text-bg-(\w+)" data-component="([^"]+)">[^:]+: ([^<]+)</span>', html
    )
    return {name: (text, colour) for colour, name, text in found}


def test_badges_show_their_healthchecks_state_on_the_dashboard(hc, make_settings, tmp_path: Path) -> None:
    hc.status = {
        "backups": {"status": "up", "total": 2, "grace": 0, "down": 0},
        "power": {"status": "down", "total": 1, "grace": 0, "down": 1},
        "*": {"status": "grace", "total": 5, "grace": 1, "down": 0},
        "broken": b"<html>not json</html>",
    }
    settings = make_settings(
        TABLESPACE_PATH=str(tmp_path / "badges.db"),
        HEALTHCHECKS_BADGE_CSV=f"{KEY}/AbCd1234/backups.svg, {KEY}/AbCd1234-2/power.svg,{KEY}/AbCd1234,"
        f"{KEY}/AbCd1234/broken.svg,{KEY}/AbCd1234/gone.svg",
        HEALTHCHECKS_BADGE_BASE_URL=hc.base,
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    try:
        client = page_app(settings, db.session_factory(engine), Presence()).test_client()
        # before the first answer: shown, as unknown
        assert strip(client.get("/").get_data(as_text=True))["Healthchecks backups"] == (
            "unknown",
            "secondary",
        )
        poller = badges.BadgePoller(settings)
        poller.poll_once()
        assert sorted(hc.paths) == sorted(
            [
                f"/badge/{KEY}/AbCd1234/backups.json",
                f"/badge/{KEY}/AbCd1234-2/power.json",
                f"/badge/{KEY}/AbCd1234.json",
                f"/badge/{KEY}/AbCd1234/broken.json",
                f"/badge/{KEY}/AbCd1234/gone.json",
            ]
        )
        shown = strip(client.get("/").get_data(as_text=True))
        assert shown["Healthchecks backups"] == ("up", "success")
        assert shown["Healthchecks power"] == ("down", "danger")
        assert shown["Healthchecks all checks"] == ("grace", "warning")
        assert shown["Healthchecks broken"] == ("unknown", "secondary")  # not JSON: logged, not fatal
        assert shown["Healthchecks gone"] == ("unknown", "secondary")  # 404
        # the state follows Healthchecks
        hc.status["power"] = {"status": "up", "total": 1, "grace": 0, "down": 0}
        poller.poll_once()
        assert strip(client.get("/").get_data(as_text=True))["Healthchecks power"] == ("up", "success")
    finally:
        engine.dispose()


def test_the_poller_thread_keeps_asking(hc, make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(badges, "POLL_SECONDS", 0.05)
    hc.status = {"backups": {"status": "up"}}
    settings = make_settings(
        HEALTHCHECKS_BADGE_CSV=f"{KEY}/AbCd1234/backups.svg", HEALTHCHECKS_BADGE_BASE_URL=hc.base
    )
    badges.BadgePoller(settings).start()
    wait_for(lambda: len(hc.paths) >= 3)
    assert badges.states(settings)[0][1].state == "up"


def test_no_badges_no_strip_entries_and_bad_ids_stop_start_up(make_settings) -> None:
    assert badges.states(make_settings()) == []
    for bad in ("a b/c.svg", "../../admin", "x?y"):
        with pytest.raises(SettingsError) as err:
            make_settings(HEALTHCHECKS_BADGE_CSV=bad)
        assert err.value.name == "HEALTHCHECKS_BADGE_CSV"
