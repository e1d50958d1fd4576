"""Dashboard, event log and charts through the Flask test client, with the real change code behind them."""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core import health
from app.core.settings import Settings
from app.engine import config_changes
from app.engine.presence import Presence
from app.store import db, registry
from app.store.models import (
    ConfigChange,
    Decision,
    DecisionOutput,
    InputConfig,
    MeterConfig,
    MeterHistory,
    OutputConfig,
    OutputLink,
)
from app.web import create_app, formatting
from tests.hubtools import Device, start_hub
from tests.support import wait_for
from tests.web.test_api import StandInProcessor

SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class Pages:
    sessions: sessionmaker[Session]
    presence: Presence
    app: Flask
    client: FlaskClient
    processor: StandInProcessor
    ids: dict[str, int]


def naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


def page_app(settings: Settings, sessions: Callable[[], Session], presence: Presence) -> Flask:
    app = create_app(settings, sessions, presence)
    # Login and CSRF have their own tests (the auth engineer's); these are about the pages.
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True, TESTING=True)
    return app


@pytest.fixture
def pages(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Pages]:
    settings = make_settings(
        TABLESPACE_PATH=str(tmp_path / "pages.db"), USER_TZ="Europe/Berlin", DEVICE_NAME="the-hub"
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        registry.ensure_builtin(s, settings.device_name)
        rows: list[Any] = [
            InputConfig(
                device_key="door",
                device_type="Contact",
                device_label="Front Door",
                device_enabled=True,
                origin="ioboard",
                group_name="Downstairs",
            ),
            InputConfig(
                device_key="window",
                device_type="Contact",
                device_label="Kitchen Window",
                device_enabled=False,
                origin="ioboard",
                group_name="Downstairs",
            ),
            InputConfig(
                device_key="hall", device_type="Motion", device_label="Hall Motion", origin="ioboard"
            ),
            InputConfig(device_key="power", device_type="meter", device_label="Power Meter", origin="esp"),
            OutputConfig(device_key="buzzer", device_type="Buzzer", device_label="Buzzer", origin="ioboard"),
            OutputConfig(device_key="siren", device_type="switch", device_enabled=False),
        ]
        s.add_all(rows)
        s.flush()
        s.add(MeterConfig(input_device_id=rows[3].id, meter_reading="12.5 kWh", meter_reset_value=100))
        s.commit()
        ids = {row.device_key: row.id for row in rows}
    processor = StandInProcessor(sessions)
    processor.start()
    presence = Presence()
    app = page_app(settings, sessions, presence)
    yield Pages(sessions, presence, app, app.test_client(), processor, ids)
    processor.done.set()
    processor.join(timeout=5)
    engine.dispose()


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def flashes(client: FlaskClient) -> list[str]:
    with client.session_transaction() as session:
        return [message for _, message in session.get("_flashes", [])]


def input_row(pages: Pages, key: str) -> InputConfig:
    with pages.sessions() as s:
        row = s.get(InputConfig, pages.ids[key])
        assert row is not None
        s.expunge(row)
        return row


def follow(client: FlaskClient, path: str, data: dict[str, str]) -> str:
    """POST, check it redirects to the dashboard (POST/redirect/GET), and return the page it lands on."""
    response = client.post(path, data=data)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"] == "/"
    return client.get("/").get_data(as_text=True)


# ---- dashboard ------------------------------------------------------------------------------


def test_dashboard_lists_devices_groups_meters_and_health(pages: Pages) -> None:
    pages.presence.seen("ioboard", ["hall"], when=time.time() - 5)
    health.set_state("rabbitmq_source", "connected")
    health.set_state("control_publisher", "connected")
    health.set_state("mqtt", "connecting")
    response = pages.client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    text = text_of(html)
    assert "None" not in text
    # Built-in buttons are not listed as inputs; the panic button has its own button.
    assert 'data-label="Panic Button"' not in html and 'data-label="Dash Button"' not in html
    assert "Panic" in text and 'data-confirm="Fire the panic button now?"' in html
    # The group is one row, enabled because one member is, with its members under it.
    assert html.count('data-label="Downstairs"') == 1
    assert 'data-label="Front Door"' not in html  # members are not rows of their own
    group = html.split('data-label="Downstairs"')[1].split("</li>\n    \n")[0]
    assert "Front Door" in group and "Kitchen Window" in group and "fa-toggle-on" in group
    assert 'data-label="Hall Motion"' in html and 'data-label="Power Meter"' in html
    # An unlabelled output shows its key, never "None".
    assert 'data-label="siren"' in html
    assert "12.5 kWh" in html and 'name="value"' in html and 'value="100"' in html
    assert "RabbitMQ: ok" in text and "MQTT: connecting" in text
    assert "Telegram: off" in text and "InfluxDB: off" in text and "Last backup: not configured" in text
    # Every POST form carries a CSRF token field.
    assert html.count('method="post"') == html.count('name="csrf_token"')
    assert "All outputs on" in text


def test_last_seen_is_shown_in_user_tz(pages: Pages) -> None:
    seen = datetime(2024, 7, 1, 10, 0, tzinfo=UTC)
    pages.presence.seen("ioboard", ["hall"], when=seen.timestamp())
    html = pages.client.get("/").get_data(as_text=True)
    hall = html.split('data-label="Hall Motion"')[1].split("</li>")[0]
    assert "01 Jul 12:00" in hall  # Berlin is UTC+2 in summer
    assert "never seen" in html.split('data-label="siren"')[1].split("</li>")[0]


def test_input_toggle_saves_through_the_processor_and_flashes_saved_state(pages: Pages) -> None:
    html = follow(pages.client, f"/inputs/{pages.ids['hall']}/enabled", {"enabled": "1"})
    assert "Hall Motion is now enabled." in html
    assert input_row(pages, "hall").device_enabled is True
    assert [c.action for c in pages.processor.commands] == ["update_input"]
    html = follow(pages.client, f"/inputs/{pages.ids['hall']}/enabled", {"enabled": "0"})
    assert "Hall Motion is now disabled." in html
    assert input_row(pages, "hall").device_enabled is False


def test_group_toggle_sets_every_member(pages: Pages) -> None:
    html = follow(pages.client, "/groups/enabled", {"group": "Downstairs", "enabled": "1"})
    assert "Group Downstairs (2 inputs) is now enabled." in html
    assert input_row(pages, "door").device_enabled is True
    assert input_row(pages, "window").device_enabled is True
    # one command for the group: all or nothing, one history entry naming each member that changed
    assert [(c.action, c.args) for c in pages.processor.commands] == [
        ("set_group_enabled", {"group": "Downstairs", "enabled": True})
    ]
    with pages.sessions() as s:
        (change,) = s.scalars(select(ConfigChange)).all()
        assert change.target_kind == "group" and change.target_key == "Downstairs"
        assert json.loads(change.before) == {"window": False}  # the door was already on
        assert json.loads(change.after) == {"window": True}
    html = follow(pages.client, "/groups/enabled", {"group": "Downstairs", "enabled": "0"})
    assert "Group Downstairs (2 inputs) is now disabled." in html
    assert not input_row(pages, "door").device_enabled and not input_row(pages, "window").device_enabled
    with pages.sessions() as s:
        assert len(s.scalars(select(ConfigChange)).all()) == 2


def test_output_toggle_and_global_outputs_switch(pages: Pages) -> None:
    html = follow(pages.client, f"/outputs/{pages.ids['siren']}/enabled", {"enabled": "1"})
    assert "siren is now enabled." in html
    html = follow(pages.client, "/outputs-enabled", {"enabled": "0"})
    assert "All outputs are now off." in html and "All outputs are off: nothing will be triggered." in html
    with pages.sessions() as s:
        assert config_changes.outputs_enabled(s) is False
    html = follow(pages.client, "/outputs-enabled", {"enabled": "1"})
    assert "All outputs are now on." in html


@pytest.mark.parametrize("value", ["", "yes", "2", "None"])
def test_bad_toggle_values_change_nothing(pages: Pages, value: str) -> None:
    for path in (
        f"/inputs/{pages.ids['hall']}/enabled",
        "/outputs-enabled",
        f"/outputs/{pages.ids['siren']}/enabled",
    ):
        html = follow(pages.client, path, {"enabled": value})
        assert "Nothing changed: enabled must be 1 or 0." in html
    html = follow(pages.client, "/groups/enabled", {"group": "Downstairs", "enabled": value})
    assert "Nothing changed" in html
    assert pages.processor.commands == []


@pytest.mark.parametrize(
    "path",
    [
        "/inputs/999/enabled",
        "/inputs/99999999999999999999/enabled",
        "/outputs/999/enabled",
        "/meters/999/reset",
        "/meters/{hall}/reset",  # an input that is not a meter
        "/inputs/abc/enabled",
        "/nowhere",
    ],
)
def test_unknown_ids_are_the_404_page(pages: Pages, path: str) -> None:
    response = pages.client.post(path.format(hall=pages.ids["hall"]), data={"enabled": "1", "mode": "set"})
    assert response.status_code == 404
    assert "There is nothing here" in response.get_data(as_text=True)
    assert pages.processor.commands == []


def test_unknown_group_is_404(pages: Pages) -> None:
    for group in ("Upstairs", ""):
        response = pages.client.post("/groups/enabled", data={"group": group, "enabled": "1"})
        assert response.status_code == 404


def test_get_on_post_routes_is_405_page(pages: Pages) -> None:
    response = pages.client.get("/panic")
    assert response.status_code == 405 and "<html" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("value", "mode", "field", "message"),
    [
        ("ten", "set", "value", "&#39;ten&#39; is not a whole number."),
        ("1.5", "adjust", "value", "is not a whole number"),
        ("99999999999", "set", "value", "The value must be from"),
        ("5", "reset", "mode", "Choose set or adjust."),
        ("5", "", "mode", "Choose set or adjust."),
    ],
)
def test_meter_reset_validation_shows_message_beside_field(
    pages: Pages, value: str, mode: str, field: str, message: str
) -> None:
    meter = pages.ids["power"]
    response = pages.client.post(f"/meters/{meter}/reset", data={"value": value, "mode": mode})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    # The message sits in the invalid-feedback right after the field, and the typed value is kept.
    field_html = html.split(f'id="{field}-{meter}"')[1].split("</div>")[0]
    assert message in field_html
    assert "is-invalid" in html.split(f'id="{field}-{meter}"')[0].rsplit("<", 1)[1]
    if field == "value":
        assert f'value="{value}"' in field_html
    assert pages.processor.commands == []


# ---- real hub: panic button and meter reset go to the real EventProcessor ----------------------


@pytest.fixture
def real_hub(make_settings: Callable[..., Settings]) -> Iterator[tuple[Any, FlaskClient]]:
    settings = make_settings()
    hub = start_hub(settings)
    assert hub.sessions is not None
    app = page_app(settings, hub.sessions, Presence())
    yield hub, app.test_client()
    hub.stop()


def test_panic_confirm_flow_without_javascript(real_hub: tuple[Any, FlaskClient]) -> None:
    hub, client = real_hub
    # The first press (no confirm=yes, as without JS) only asks.
    response = client.post("/panic", data={})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Fire the panic button?" in html and 'name="confirm" value="yes"' in html
    assert 'name="csrf_token"' in html
    with hub.sessions() as s:
        assert s.query(Decision).count() == 0
    # The panic button is registered disabled: the hub records why it did not fire.
    response = client.post("/panic", data={"confirm": "yes"})
    assert response.status_code == 302
    assert "The panic button did not fire: disabled" in flashes(client)[0]
    panic_id = _panic_id(hub)
    assert client.post(f"/inputs/{panic_id}/enabled", data={"enabled": "1"}).status_code == 302
    client.get("/")  # consume the flash
    response = client.post("/panic", data={"confirm": "yes"})
    assert response.status_code == 302
    assert flashes(client) == ["Panic button fired, but no linked output was triggered."]
    wait_for(lambda: _decision_count(hub) == 2)
    events = client.get("/events").get_data(as_text=True)
    assert events.count('class="list-group-item event-row"') == 2
    assert "fired" in events and "disabled" in events


def _panic_id(hub: Any) -> int:
    with hub.sessions() as s:
        row = s.query(InputConfig).filter_by(device_key=registry.PANIC_BUTTON).one()
        return row.id


def _decision_count(hub: Any) -> int:
    with hub.sessions() as s:
        return s.query(Decision).count()


METER_HEARTBEAT = {
    "device_info": {"inputs": [{"device_key": "Hall Meter", "type": "meter", "location": "Hall"}]}
}


def test_meter_reset_through_the_real_processor(real_hub: tuple[Any, FlaskClient]) -> None:
    hub, client = real_hub
    device = Device(hub.settings)
    try:
        device.publish("event.heartbeat.meterboard.esp", METER_HEARTBEAT)

        def meter_id() -> int | None:
            with hub.sessions() as s:
                row = s.query(InputConfig).filter_by(device_key="Hall Meter").one_or_none()
                return row.id if row is not None else None

        input_id = wait_for(meter_id)
    finally:
        device.close()
    assert "Hall Meter" in client.get("/").get_data(as_text=True)
    response = client.post(f"/meters/{input_id}/reset", data={"value": "500", "mode": "set"})
    assert response.status_code == 302
    [message] = flashes(client)
    assert message.startswith("Hall Meter set to 500; the reading is now ")
    response = client.post(f"/meters/{input_id}/reset", data={"value": "25", "mode": "adjust"})
    assert response.status_code == 302
    assert flashes(client)[-1].startswith("Hall Meter adjusted by 25;")
    with hub.sessions() as s:
        meter = s.query(MeterConfig).filter_by(input_device_id=input_id).one()
        assert meter.register_value == 525
    html = client.get("/").get_data(as_text=True)
    assert meter.meter_reading in html


# ---- events ---------------------------------------------------------------------------------


def add_decisions(
    pages: Pages,
    count: int,
    start: datetime,
    key: str = "door",
    step: timedelta = timedelta(minutes=1),
    **extra: Any,
) -> None:
    with pages.sessions() as s:
        for i in range(count):
            d = Decision(
                timestamp=naive(start + step * i),
                input_device_id=pages.ids[key],
                input_key=key,
                input_label=extra.get("label", key.title()),
                fired=extra.get("fired", False),
                reason=extra.get("reason", "disabled"),
                detail=extra.get("detail"),
                event_detail=extra.get("event_detail"),
            )
            if extra.get("output"):
                d.outputs.append(
                    DecisionOutput(
                        output_device_id=pages.ids[extra["output"]],
                        output_key=extra["output"],
                        output_label=extra["output"].title(),
                        fired=True,
                    )
                )
            s.add(d)
        s.commit()


def test_events_newest_first_with_reason_outputs_and_local_time(pages: Pages) -> None:
    t = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
    add_decisions(pages, 1, t, "hall", reason="latched", detail="latched until reset")
    add_decisions(
        pages,
        1,
        t + timedelta(hours=1),
        "door",
        fired=True,
        reason=None,
        event_detail="opened",
        output="buzzer",
    )
    html = pages.client.get("/events").get_data(as_text=True)
    text = text_of(html)
    assert "None" not in text
    assert text.index("Door") < text.index("Hall")  # newest first
    assert "2024-01-15 14:00:00" in text and "2024-01-15 13:00:00" in text  # Berlin, UTC+1 in winter
    assert "blocked latched" in text and "latched until reset" in text
    assert "fired" in text and "opened" in text and "Buzzer: triggered" in text


def event_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="list-group-item event-row" data-decision="(\d+)"', html)]


def page_link(html: str, name: str) -> str | None:
    """The href of the Newer or Older link, None when it is disabled."""
    found = re.search(rf'<a class="page-link" rel="(?:prev|next)" href="([^"]*)">{name}</a>', html)
    assert found is not None, name
    return None if found.group(1) == "#" else found.group(1).replace("&amp;", "&")


def test_events_filters_and_paging_keep_filters(pages: Pages) -> None:
    t = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
    add_decisions(pages, 120, t, "door", output="buzzer")
    add_decisions(pages, 5, t, "hall")
    html = pages.client.get("/events").get_data(as_text=True)
    assert "125 events" in html
    assert html.count('class="list-group-item event-row"') == 50
    assert page_link(html, "Newer") is None
    # Older and Newer walk the whole timeline in order, each entry once.
    shown = [html]
    while (older := page_link(shown[-1], "Older")) is not None:
        assert older.startswith("/events?before=")
        shown.append(pages.client.get(older).get_data(as_text=True))
    seen = [i for h in shown for i in event_ids(h)]
    everything = [e["id"] for e in pages.client.get("/api/events?limit=1000").get_json()["events"]]
    assert len(shown) == 3 and seen == everything and len(set(seen)) == 125
    back = page_link(shown[2], "Newer")
    assert back is not None and event_ids(pages.client.get(back).get_data(as_text=True)) == event_ids(
        shown[1]
    )
    # An old page-number link still opens that page.
    response = pages.client.get(f"/events?input={pages.ids['door']}&page=3")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "120 events" in html
    assert html.count('class="list-group-item event-row"') == 20
    # Page links keep the filters.
    newer = page_link(html, "Newer")
    assert (
        newer is not None
        and newer.endswith(f"&input={pages.ids['door']}")
        and page_link(html, "Older") is None
    )
    door = [e["id"] for e in pages.client.get("/api/events?limit=1000&input=door").get_json()["events"]]
    assert event_ids(pages.client.get(newer).get_data(as_text=True)) == door[50:100]
    assert f'<option value="{pages.ids["door"]}" selected>' in html
    html = pages.client.get(f"/events?output={pages.ids['buzzer']}").get_data(as_text=True)
    assert "120 events" in html
    # from/to are in USER_TZ: 13:00 Berlin is 12:00 UTC, the first door event.
    html = pages.client.get(
        f"/events?input={pages.ids['door']}&from=2024-01-15T13:00&to=2024-01-15T13:09"
    ).get_data(as_text=True)
    assert "10 events" in html
    assert 'value="2024-01-15T13:00"' in html
    assert "from=2024-01-15T13%3A00" not in html  # one page only: no page links
    html = pages.client.get("/events?from=2024-01-15T14:00&to=2024-01-15T14:00").get_data(as_text=True)
    assert "1 event" in html and "No events match." not in html


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("input=abc", "input", "There is no input &#39;abc&#39;."),
        ("output=-1", "output", "There is no output &#39;-1&#39;."),
        ("input=99999999999999999999", "input", "There is no input"),
        ("from=yesterday", "from", "is not a date and time"),
        ("to=2024-13-45T10:00", "to", "is not a date and time"),
        ("from=2024-01-02T00:00&to=2024-01-01T00:00", "to", "The end is before the start."),
    ],
)
def test_bad_event_filters_are_messages_beside_the_field(
    pages: Pages, query: str, field: str, message: str
) -> None:
    response = pages.client.get(f"/events?{query}")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html.split(f'id="f-{field}"')[1].split("</div>")[0]


@pytest.mark.parametrize(
    "cursor", ["x", "20240115T120000.000000-1-gossip", "20241315T120000.000000-1-decision"]
)
def test_a_bad_place_in_the_events_is_a_message_and_the_newest(pages: Pages, cursor: str) -> None:
    add_decisions(pages, 3, datetime(2024, 1, 15, tzinfo=UTC))
    for name in ("before", "after"):
        response = pages.client.get(f"/events?{name}={cursor}")
        assert response.status_code == 400
        html = response.get_data(as_text=True)
        assert "is not a place in the event log; showing the newest events." in html
        assert html.count('class="list-group-item event-row"') == 3


@pytest.mark.parametrize("page", ["0", "x", "99"])
def test_bad_or_missing_page_shows_a_message(pages: Pages, page: str) -> None:
    add_decisions(pages, 3, datetime(2024, 1, 15, tzinfo=UTC))
    response = pages.client.get(f"/events?page={page}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'class="alert alert-warning py-2 page-error"' in html
    assert html.count('class="list-group-item event-row"') == 3


# ---- charts ---------------------------------------------------------------------------------


def parse_svgs(html: str) -> list[ET.Element]:
    """The charts' SVGs (the icons from the sprite are SVGs too: left out)."""
    found = [m for m in re.findall(r"<svg .*?</svg>", html, re.S) if not m.startswith('<svg class="icon')]
    return [ET.fromstring(m) for m in found]


def bars(svg: ET.Element) -> list[int]:
    return [int(g.get("data-count", "0")) for g in svg.iter(f"{SVG}g") if g.get("class") == "bar"]


def test_charts_count_events_per_hour_and_day_and_draw_meters(pages: Pages) -> None:
    now = datetime.now(UTC)
    # the bars are clock hours: spread events over the part of the current hour already past (a minute
    # apart, they would land in the future during an hour's first minutes), and into the one 5 hours back
    hour = now.replace(minute=0, second=0, microsecond=0)
    step = (now - hour) / 4
    add_decisions(pages, 3, hour + step, "door", step, fired=True, reason=None, label="Front Door")
    add_decisions(pages, 2, hour + step - timedelta(hours=5), "door", step, label="Front Door")
    add_decisions(pages, 4, now - timedelta(days=3), "hall", label="Hall Motion")
    add_decisions(pages, 1, now - timedelta(days=9), "hall", label="Hall Motion")  # too old for both
    with pages.sessions() as s:
        for i in range(10):
            s.add(
                MeterHistory(
                    input_device_id=pages.ids["power"],
                    timestamp=naive(now - timedelta(hours=10 - i)),
                    reading=100.0 + i * 2.5,
                )
            )
        s.commit()
    response = pages.client.get("/charts")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    svgs = parse_svgs(html)  # each chart is well-formed SVG
    titles = [svg.find(f"{SVG}title").text for svg in svgs]  # type: ignore[union-attr]
    assert titles == [
        "Front Door: events per hour, last 24 hours: 5 events",
        "Front Door: events per day, last 7 days: 5 events",
        "Hall Motion: events per hour, last 24 hours: 0 events",
        "Hall Motion: events per day, last 7 days: 4 events",
        "Power Meter: readings: 10 readings",
    ]
    hourly, daily = bars(svgs[0]), bars(svgs[1])
    assert len(hourly) == 24 and len(daily) == 7
    assert hourly[-1] == 3 and hourly[-6] == 2 and sum(hourly) == 5
    fired = [int(g.get("data-fired", "0")) for g in svgs[0].iter(f"{SVG}g") if g.get("class") == "bar"]
    assert fired[-1] == 3 and sum(fired) == 3
    assert sum(daily) == 5 and sum(bars(svgs[3])) == 4
    polyline = next(svgs[4].iter(f"{SVG}polyline"))
    assert len(polyline.get("points", "").split()) == 10
    for svg in svgs:  # axis labels
        texts = {t.get("class") for t in svg.iter(f"{SVG}text")}
        assert {"chart-title", "x-title", "y-title"} <= texts
    assert "<script" not in html.split("<main")[1].split("</main>")[0]


def test_charts_with_no_data(pages: Pages) -> None:
    html = pages.client.get("/charts").get_data(as_text=True)
    assert "No events in the last 7 days." in html
    [svg] = parse_svgs(html)
    assert "no readings yet" in ET.tostring(svg, encoding="unicode")


def test_a_fresh_install_shows_the_panic_button_and_arms_it_from_the_dashboard(pages: Pages) -> None:
    html = pages.client.get("/").get_data(as_text=True)
    assert 'class="btn btn-danger btn-lg w-100 panic-button"' in html
    state = re.search(r'<div class="[^"]*panic-state" data-armed="(\w+)">(.*?)</div>', html, re.S)
    assert state is not None and state.group(1) == "no"
    assert "not armed" in text_of(state.group(2)) and "link it to outputs" in text_of(state.group(2))
    with pages.sessions() as s:
        panic = s.scalars(select(InputConfig).where(InputConfig.device_key == registry.PANIC_BUTTON)).one()
        panic_id = panic.id
        s.add(OutputLink(input_device_id=panic_id, output_device_id=pages.ids["buzzer"]))
        s.commit()
    html = follow(pages.client, f"/inputs/{panic_id}/enabled", {"enabled": "1"})
    assert "Panic Button is now enabled." in html
    state = re.search(r'<div class="[^"]*panic-state" data-armed="(\w+)">(.*?)</div>', html, re.S)
    assert state is not None and state.group(1) == "yes"
    assert "armed" in text_of(state.group(2)) and "triggers Buzzer" in text_of(state.group(2))
    assert 'data-confirm="Disarm the panic button?"' in html
    # the arming went through the processor like any change, and is in the history
    with pages.sessions() as s:
        change = s.scalars(select(ConfigChange).where(ConfigChange.target_id == panic_id)).one()
        assert change.target_key == registry.PANIC_BUTTON and change.actor == "web"


def test_every_icon_the_pages_use_is_in_the_sprite_with_its_licence(pages: Pages) -> None:
    root = Path(__file__).resolve().parents[2]
    sprite_text = (root / "static" / "icons.svg").read_text()
    sprite = ET.fromstring(sprite_text)
    symbols = {el.get("id") for el in sprite.iter("{http://www.w3.org/2000/svg}symbol")}
    used = {name for _e, _l, name in formatting.NAV}
    for template in (root / "templates").glob("*.html"):
        used |= set(re.findall(r"'(fa-[a-z0-9-]+)'", template.read_text()))
    assert len(used) >= 20 and used <= symbols
    assert "CC BY 4.0" in sprite_text and "Font Awesome" in sprite_text
    assert "CC BY 4.0" in (root / "static" / "icons-LICENSE.txt").read_text()

    html = pages.client.get("/").get_data(as_text=True)
    hrefs = set(re.findall(r'<use href="([^"#]+)#(fa-[a-z0-9-]+)"', html))
    assert ("/static/icons.svg", "fa-shield-halved") in hrefs and ("/static/icons.svg", "fa-bell") in hrefs
    assert "fontawesome" not in html and "<i class=" not in html
    response = pages.client.get("/static/icons.svg")
    assert response.status_code == 200 and response.mimetype == "image/svg+xml"
    response.close()
    with pytest.raises(ValueError):
        formatting.icon('fa-x" onload="alert(1)')
