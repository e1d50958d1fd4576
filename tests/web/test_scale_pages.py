"""Every page and API list with 2,000 inputs and 200 outputs: pages of a bounded size, nothing quadratic.

The time each one takes is measured by the benchmark (`bench/bench.py --case pages`), not here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core.settings import Settings
from app.engine.presence import Presence
from app.store import db, registry
from tests import scale
from tests.web.test_api import StandInProcessor
from tests.web.test_pages import Pages, page_app

PAGES = [
    "/",
    "/events",
    "/charts",
    "/config/inputs",
    "/config/outputs",
    "/config/links",
    "/config/schedule",
    "/api/devices",
    "/api/events",
    "/api/schedules",
    "/metrics",
]


@pytest.fixture(scope="module")
def house_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "house.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    with db.session_factory(engine)() as session:
        registry.ensure_builtin(session, "the-hub")
        scale.build_house(session)
    engine.dispose()
    return path


@pytest.fixture
def big(house_db: Path, make_settings: Callable[..., Settings]) -> Iterator[Pages]:
    settings = make_settings(TABLESPACE_PATH=str(house_db), DEVICE_NAME="the-hub")
    engine = db.make_engine(settings.database_url)
    sessions = db.session_factory(engine)
    processor = StandInProcessor(sessions)
    processor.start()
    presence = Presence()
    presence.seen("ioboard1", [scale.input_key(i) for i in range(0, scale.INPUTS, 3)])
    app = page_app(settings, sessions, presence)
    yield Pages(sessions, presence, app, app.test_client(), processor, {})
    processor.done.set()
    processor.join(timeout=5)
    engine.dispose()


def cards(html: str, prefix: str) -> list[int]:
    return [int(i) for i in re.findall(rf'<details class="card mb-2 config-card" id="{prefix}-(\d+)"', html)]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_answers_at_scale(big: Pages, path: str) -> None:
    response = big.client.get(path)
    assert response.status_code == 200, path
    # No page grows as inputs x outputs: the largest (one row per device: the dashboard's and the
    # schedule's 2,200) stays a few KB per device.
    assert len(response.data) < 3_000 * (scale.INPUTS + scale.OUTPUTS), (path, len(response.data))


def test_config_pages_show_one_page_of_cards_with_filter_and_page_links(big: Pages) -> None:
    for path, prefix in (
        ("/config/inputs", "input"),
        ("/config/outputs", "output"),
        ("/config/links", "links"),
    ):
        html = big.client.get(path).get_data(as_text=True)
        first = cards(html, prefix)
        assert len(first) == 50, path
        assert 'class="pagination pagination-sm flex-wrap list-pages"' in html
        second = cards(big.client.get(f"{path}?page=2").get_data(as_text=True), prefix)
        assert len(second) == 50 and not set(first) & set(second)
    inputs_page = big.client.get("/config/inputs").get_data(as_text=True)
    assert "page 1 of 40" in inputs_page  # 2,000 inputs, the built-in buttons have their own place
    filtered = big.client.get("/config/inputs?q=sensor+0042").get_data(as_text=True)
    assert (
        len(cards(filtered, "input")) == 1 and "Sensor 0042" in filtered and "1 inputs matching" in filtered
    )
    # A link to one row opens the page that holds it, with its card open.
    with big.sessions() as session:
        from app.store.models import InputConfig

        row = session.query(InputConfig).filter_by(device_key=scale.input_key(1234)).one()
    html = big.client.get(f"/config/inputs?id={row.id}").get_data(as_text=True)
    assert row.id in cards(html, "input") and f'id="input-{row.id}" open' in html


def test_dashboard_and_schedule_show_one_page_of_devices(big: Pages) -> None:
    html = big.client.get("/").get_data(as_text=True)
    # Groups of ten collapse to one row, so the first page holds 50 rows of inputs and 50 of outputs.
    assert html.count('<li class="list-group-item device-row"') == 100
    assert "page 1 of" in html and 'name="q"' in html
    second = big.client.get("/?page=2&opage=3").get_data(as_text=True)
    assert second.count('<li class="list-group-item device-row"') == 100 and second != html
    found = big.client.get("/?q=sensor+0042").get_data(as_text=True)
    assert found.count('data-label="Sensor 0042"') == 1
    schedule = big.client.get("/config/schedule").get_data(as_text=True)
    assert schedule.count('<details class="card mb-2 config-card"') == 50


def test_links_page_is_not_quadratic(big: Pages) -> None:
    html = big.client.get("/config/links").get_data(as_text=True)
    # A large house: no editor until one input is opened, only what each input links to.
    assert html.count('type="checkbox"') == 0 and html.count("Edit links") == 50
    with big.sessions() as session:
        from app.store.models import InputConfig

        row = session.query(InputConfig).filter_by(device_key=scale.input_key(5)).one()
    html = big.client.get(f"/config/links?id={row.id}").get_data(as_text=True)
    # One editor: every output and every other input once, two of the outputs and one input ticked.
    assert html.count('name="output_ids"') == scale.OUTPUTS + 1  # and the built-in SMS output
    assert html.count('name="input_ids"') == scale.INPUTS + 2 - 1
    editor = html.split(f'id="links-{row.id}"')[1].split("</details>")[0]
    assert editor.count(" checked") == 2 + 0  # input 5 has no input link (every 4th has one)
    assert html.count("Edit links") == 49


def test_api_lists_filter_and_page(big: Pages) -> None:
    everything = big.client.get("/api/devices").get_json()
    assert everything["total"] == {"inputs": scale.INPUTS + 2, "outputs": scale.OUTPUTS + 1}
    assert len(everything["inputs"]) == scale.INPUTS + 2
    page = big.client.get("/api/devices?limit=100&offset=100").get_json()
    assert len(page["inputs"]) == 100 and page["inputs"][0] == everything["inputs"][100]
    found = big.client.get("/api/devices?q=room 007 buzz").get_json()
    assert [d["device_key"] for d in found["outputs"]] == [scale.output_key(7)] and found["inputs"] == []
    assert big.client.get("/api/devices?limit=5001").status_code == 400
    assert big.client.get("/api/devices?offset=-1").get_json()["field"] == "offset"
    first = big.client.get("/api/events?limit=10").get_json()["events"]
    second = big.client.get("/api/events?limit=10&offset=10").get_json()["events"]
    assert len(first) == len(second) == 10 and first[-1]["id"] != second[0]["id"]
