"""The quiet-hours form on the schedule page: shown, checked beside each field, saved via the processor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings
from app.engine import config_changes, rules
from app.store import db
from app.web import create_app
from tests.web.test_api import StandInProcessor

DEFAULT = rules.QuietHours(time(7, 0), time(21, 0))


@dataclass
class Rig:
    client: FlaskClient
    processor: StandInProcessor
    sessions: sessionmaker[Session]

    def stored(self) -> rules.QuietHours:
        with self.sessions() as session:
            return config_changes.quiet_hours(session, DEFAULT)

    def sent(self) -> list[dict[str, object]]:
        return [c.args for c in self.processor.commands if c.action == "set_quiet_hours"]


@pytest.fixture
def rig(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Rig]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'quiet.db'}")
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    processor = StandInProcessor(sessions)
    processor.start()
    app = create_app(make_settings(USER_TZ="Europe/London"), sessions)
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True)
    yield Rig(app.test_client(), processor, sessions)
    processor.done.set()
    processor.join(timeout=5)
    engine.dispose()


def test_page_shows_the_current_window_with_a_csrf_field(rig: Rig) -> None:
    client = rig.client
    text = client.get("/config/schedule").get_data(as_text=True)
    assert 'id="quiet-hours"' in text and "/config/schedule/quiet-hours" in text
    assert 'name="not_before" value="07:00"' in text and 'name="not_after" value="21:00"' in text
    assert 'name="csrf_token"' in text
    assert 'id="quiet-all_outputs" name="all_outputs" value="1">' in text  # unticked by default


def test_save_redirects_with_a_flash_of_the_saved_window(rig: Rig) -> None:
    client = rig.client
    response = client.post(
        "/config/schedule/quiet-hours", data={"not_before": "6:30", "not_after": "22:15", "all_outputs": "1"}
    )
    assert response.status_code == 302 and response.headers["Location"].endswith(
        "/config/schedule#quiet-hours"
    )
    assert rig.stored() == rules.QuietHours(time(6, 30), time(22, 15), True)
    assert rig.sent() == [{"not_before": "6:30", "not_after": "22:15", "all_outputs": True}]
    page = client.get("/config/schedule").get_data(as_text=True)
    assert "may notify from 06:30 to 22:15" in page and "every output is held back" in page
    assert 'name="not_before" value="06:30"' in page
    assert 'id="quiet-all_outputs" name="all_outputs" value="1" checked>' in page
    # An unticked checkbox is absent from the form: it turns all_outputs off.
    client.post("/config/schedule/quiet-hours", data={"not_before": "06:30", "not_after": "22:15"})
    assert rig.stored().all_outputs is False
    assert "only notifications are held back" in client.get("/config/schedule").get_data(as_text=True)


@pytest.mark.parametrize(
    ("form", "bad"),
    [
        ({"not_before": "7:75", "not_after": "21:00"}, ["not_before"]),
        ({"not_before": "07:00", "not_after": "nine"}, ["not_after"]),
        ({"not_before": "", "not_after": "24:00", "all_outputs": "1"}, ["not_before", "not_after"]),
    ],
)
def test_bad_time_is_shown_beside_its_field_and_nothing_is_saved(
    rig: Rig, form: dict[str, str], bad: list[str]
) -> None:
    client = rig.client
    response = client.post("/config/schedule/quiet-hours", data=form)
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "Nothing was saved" in text
    for name in bad:
        assert f'id="quiet-{name}-help">' in text
        assert f'<div class="invalid-feedback" id="quiet-{name}-help">' in text
    # What was typed stays in the form so it can be corrected.
    assert f'name="not_after" value="{form["not_after"]}"' in text
    assert rig.sent() == []
    assert rig.stored() == DEFAULT
