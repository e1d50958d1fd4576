"""Tests for the input, output and link configuration pages, real change code behind a stand-in processor."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, url_for
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.channels import Reply
from app.core.settings import Settings
from app.engine import commands, config_changes
from app.store import db
from app.store.models import ConfigChange, InputConfig, InputLink, MeterConfig, OutputConfig, OutputLink
from app.web import config_pages, create_app
from tests.web.test_api import StandInProcessor

CAMERA_PARAMS = "admin:pw@192.168.1.20:88,554"
SMS_PARAMS = "Alice;+15551234567,Bob;+44 20 7946 0958"
PING_PARAMS = "me;AA:BB:CC:DD:EE:FF"


@dataclass
class Pages:
    sessions: sessionmaker[Session]
    app: Flask
    client: FlaskClient
    processor: StandInProcessor
    ids: dict[str, int]


@pytest.fixture
def pages(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Pages]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'pages.db'}")
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        rows: list[Any] = [
            InputConfig(
                device_key="door", device_type="Contact", device_label="Door", group_name="Downstairs"
            ),
            InputConfig(device_key="hall", device_type="Motion"),  # every optional column NULL
            InputConfig(device_key="water", device_type="Water Meter", device_label="Water"),
            InputConfig(device_key="gas", device_type="gas meter"),  # a meter without its settings row yet
            InputConfig(
                device_key="App Panic Button", device_type="Panic Button", device_label="Panic Button"
            ),
            InputConfig(device_key="App Dash Button", device_type="Dash Button", device_label="Dash Button"),
            OutputConfig(
                device_key="cam", device_type="Camera", device_label="Camera", device_params=CAMERA_PARAMS
            ),
            OutputConfig(device_key="SMS", device_type="sms", device_params=SMS_PARAMS),
            OutputConfig(device_key="ping", device_type="l2ping", device_params=PING_PARAMS),
            OutputConfig(device_key="buzzer", device_type="Buzzer"),
        ]
        s.add_all(rows)
        s.flush()
        s.add(
            MeterConfig(
                input_device_id=rows[2].id,
                meter_value=0,
                register_value=0,
                meter_reading="0",
                meter_iot_topic="meters/water",
                meter_reading_unit_factor=10,
            )
        )
        s.commit()
        ids = {row.device_key: row.id for row in rows}
    processor = StandInProcessor(sessions)
    processor.start()
    app = create_app(make_settings(DEVICE_NAME="the-hub"), sessions)
    # Login and CSRF have tests of their own (the auth engineer's); these are about the pages.
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True)
    yield Pages(sessions, app, app.test_client(), processor, ids)
    processor.done.set()
    processor.join(timeout=5)
    engine.dispose()


def snapshot(pages: Pages) -> dict[str, Any]:
    """Every configuration column and link, to prove a refused POST saved nothing."""
    with pages.sessions() as s:

        def cols(row: Any) -> dict[str, Any]:
            return {c.key: getattr(row, c.key) for c in row.__table__.columns}

        return {
            "inputs": [cols(r) for r in s.scalars(select(InputConfig).order_by(InputConfig.id))],
            "outputs": [cols(r) for r in s.scalars(select(OutputConfig).order_by(OutputConfig.id))],
            "meters": [cols(r) for r in s.scalars(select(MeterConfig).order_by(MeterConfig.id))],
            "output_links": sorted(
                (r.input_device_id, r.output_device_id) for r in s.scalars(select(OutputLink))
            ),
            "input_links": sorted(
                (r.input_device_id, r.linked_device_id) for r in s.scalars(select(InputLink))
            ),
        }


def get_row(pages: Pages, model: type[Any], row_id: int) -> Any:
    with pages.sessions() as s:
        row = s.get(model, row_id)
        assert row is not None
        if isinstance(row, InputConfig):
            _ = row.meter  # load it before the session closes
        s.expunge_all()
        return row


def links_of(pages: Pages, input_id: int) -> tuple[set[int], set[int]]:
    with pages.sessions() as s:
        outs = set(
            s.scalars(select(OutputLink.output_device_id).where(OutputLink.input_device_id == input_id))
        )
        ins = set(s.scalars(select(InputLink.linked_device_id).where(InputLink.input_device_id == input_id)))
        return outs, ins


def text(response: Any) -> str:
    return response.get_data(as_text=True)


def input_tag(page: str, element_id: str) -> str:
    match = re.search(rf'<input[^>]*\bid="{re.escape(element_id)}"[^>]*>', page)
    assert match, f"no input #{element_id}"
    return match.group(0)


def assert_invalid(page: str, element_id: str, message: str | None = None) -> None:
    """The field is marked invalid and its message sits right after it."""
    assert re.search(r'class="[^"]*\bis-invalid\b', input_tag(page, element_id))
    feedback = re.search(
        rf'<div class="invalid-feedback" id="{re.escape(element_id)}-help">([^<]*)</div>', page
    )
    assert feedback, f"no message beside #{element_id}"
    if message is not None:
        assert message in html.unescape(feedback.group(1))


def assert_no_none(page: str) -> None:
    assert "None" not in page


INPUT_FORM = {
    "device_label": "",
    "group_name": "",
    "activation_interval": "",
    "multi_trigger_rate": "",
    "multi_trigger_interval": "",
    "alert_offline": "1",  # ticked, as the page shows it for an input left at the default
}
METER_FORM = {
    "meter_iot_topic": "",
    "meter_reading_unit": "",
    "meter_reading_unit_factor": "",
    "meter_reading_unit_precision": "",
    "meter_reset_value": "",
    "meter_low_limit": "",
    "meter_high_limit": "",
}


def input_form(row_id: int, meter: bool = False, **fields: str) -> dict[str, str]:
    form = {"id": str(row_id), **INPUT_FORM, **(METER_FORM if meter else {})}
    form.update(fields)
    return form


def output_form(row_id: int, params: str, **fields: str) -> dict[str, str]:
    form = {
        "id": str(row_id),
        "device_label": "",
        "device_params": params,
        "trigger_topic": "",
        "trigger_interval": "",
        "device_enabled": "1",
    }
    form.update(fields)
    return form


# ---- every page -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/config/inputs", "/config/outputs", "/config/links"])
def test_pages_render_with_csrf_fields_and_never_none(pages: Pages, url: str) -> None:
    response = pages.client.get(url)
    assert response.status_code == 200
    page = text(response)
    assert_no_none(page)
    forms = page.count('<form method="post"')
    assert forms >= 4
    assert page.count('name="csrf_token"') >= forms
    assert " open>" not in page  # no card is open without ?id=


@pytest.mark.parametrize("url", ["/config/inputs", "/config/outputs", "/config/links"])
@pytest.mark.parametrize("raw", ["999", "abc", "-1", "0", "1.5", "99999999999999999999999999", ""])
def test_unknown_or_malformed_ids_are_404_pages(pages: Pages, url: str, raw: str) -> None:
    response = pages.client.get(f"{url}?id={raw}")
    assert response.status_code == 404
    assert "text/html" in response.content_type
    response = pages.client.post(url, data={"id": raw})
    assert response.status_code == 404
    assert pages.processor.commands == []


@pytest.mark.parametrize("url", ["/config/inputs", "/config/outputs", "/config/links"])
def test_post_without_an_id_is_a_400_page(pages: Pages, url: str) -> None:
    response = pages.client.post(url, data={})
    assert response.status_code == 400
    assert "text/html" in response.content_type
    assert pages.processor.commands == []


def test_nav_links_to_the_three_pages(pages: Pages) -> None:
    page = text(pages.client.get("/config/inputs"))
    # The nav is shown to logged-in users only; the endpoints at least resolve.
    with pages.app.test_request_context():
        assert url_for("config_pages.inputs") == "/config/inputs"
        assert url_for("config_pages.outputs") == "/config/outputs"
        assert url_for("config_pages.links") == "/config/links"
    assert "<title>Inputs" in page


# ---- inputs ---------------------------------------------------------------------------------


def test_inputs_page_lists_inputs_but_not_the_buttons(pages: Pages) -> None:
    page = text(pages.client.get("/config/inputs"))
    for key in ("door", "hall", "water", "gas"):
        assert f'id="input-{pages.ids[key]}"' in page
    assert f'id="input-{pages.ids["App Panic Button"]}"' not in page
    assert f'id="input-{pages.ids["App Dash Button"]}"' not in page
    # Meter settings only on meters.
    assert f'id="input-{pages.ids["water"]}-meter_iot_topic"' in page
    assert f'id="input-{pages.ids["gas"]}-meter_reading_unit_factor"' in page
    assert f'id="input-{pages.ids["door"]}-meter_iot_topic"' not in page
    assert 'value="meters/water"' in page
    assert 'value="Downstairs"' in page


def test_button_id_on_inputs_page_is_404(pages: Pages) -> None:
    panic = pages.ids["App Panic Button"]
    assert pages.client.get(f"/config/inputs?id={panic}").status_code == 404
    assert pages.client.post("/config/inputs", data=input_form(panic, device_label="x")).status_code == 404
    assert pages.processor.commands == []


def test_open_card_by_id(pages: Pages) -> None:
    page = text(pages.client.get(f"/config/inputs?id={pages.ids['hall']}"))
    assert f'id="input-{pages.ids["hall"]}" open>' in page
    assert page.count(" open>") == 1


def test_saving_an_input_redirects_and_shows_the_saved_state(pages: Pages) -> None:
    hall = pages.ids["hall"]
    form = input_form(
        hall,
        device_label="  Landing ",
        group_name=" Upstairs ",
        activation_interval=" 30 ",
        multi_trigger="1",
        multi_trigger_rate="3",
        multi_trigger_interval="20",
        info_notify="1",
    )
    response = pages.client.post("/config/inputs", data=form)
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/config/inputs?id={hall}#input-{hall}")
    cmd = pages.processor.commands[-1]
    assert (cmd.action, cmd.actor) == ("update_input", "web")
    assert cmd.args == {
        "id": hall,
        "fields": {
            "device_label": "Landing",
            "group_name": "Upstairs",
            "activation_interval": 30,
            "multi_trigger_rate": 3,
            "multi_trigger_interval": 20,
            "multi_trigger": True,
            "info_notify": True,
            "alert_offline": True,
        },
    }
    row = get_row(pages, InputConfig, hall)
    assert (row.device_label, row.group_name, row.activation_interval) == ("Landing", "Upstairs", 30)
    assert (row.multi_trigger, row.multi_trigger_rate, row.multi_trigger_interval) == (True, 3, 20)
    assert row.info_notify is True and row.customized is True
    page = text(pages.client.get(response.headers["Location"]))
    assert "Saved Landing: latch 30 s, multi-trigger 3 within 20 s, info-notify on, group Upstairs." in page
    assert f'id="input-{hall}" open>' in page
    assert 'value="Landing"' in page and 'value="  Landing "' not in page  # as saved, not as typed
    assert "checked" in input_tag(page, f"input-{hall}-multi_trigger")


def test_empty_fields_and_unticked_boxes_clear_the_values(pages: Pages) -> None:
    door = pages.ids["door"]
    response = pages.client.post("/config/inputs", data=input_form(door), follow_redirects=True)
    assert response.status_code == 200
    row = get_row(pages, InputConfig, door)
    assert (row.device_label, row.group_name, row.activation_interval) == (None, None, None)
    assert (row.multi_trigger, row.info_notify, row.label_customized) == (False, False, False)
    page = text(response)
    assert_no_none(page)
    assert "Saved door: latch 60 s, multi-trigger off, info-notify off." in page


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("activation_interval", "abc", "whole number"),
        ("activation_interval", "1.5", "whole number"),
        ("activation_interval", "-1", "from 0 to 86400"),
        ("activation_interval", "86401", "from 0 to 86400"),
        ("activation_interval", "9" * 5000, "from 0 to 86400"),
        ("multi_trigger_rate", "x", "whole number"),
        ("multi_trigger_rate", "0", "from 1 to 120"),
        ("multi_trigger_rate", "121", "from 1 to 120"),
        ("multi_trigger_interval", "1e3", "whole number"),
        ("multi_trigger_interval", "0", "from 1 to 86400"),
        ("multi_trigger_interval", "86401", "from 1 to 86400"),
        ("device_label", "x" * 101, "at most 100"),
        ("group_name", "g" * 101, "at most 100"),
    ],
)
def test_input_validation_errors_show_beside_the_field_and_save_nothing(
    pages: Pages, field: str, value: str, message: str
) -> None:
    door = pages.ids["door"]
    before = snapshot(pages)
    form = input_form(door, **{"device_label": "Typed label", "group_name": "Typed group", field: value})
    response = pages.client.post("/config/inputs", data=form)
    assert response.status_code == 400
    page = text(response)
    assert_invalid(page, f"input-{door}-{field}", message)
    assert "Nothing was saved" in page
    assert f'id="input-{door}" open>' in page
    assert f'value="{html.escape(value)}"' in input_tag(page, f"input-{door}-{field}")  # kept as typed
    if field != "device_label":
        assert 'value="Typed label"' in page
    assert pages.processor.commands == []
    assert snapshot(pages) == before


def test_every_bad_field_gets_its_own_message(pages: Pages) -> None:
    water = pages.ids["water"]
    form = input_form(
        water,
        meter=True,
        activation_interval="soon",
        multi_trigger_rate="500",
        meter_reading_unit_factor="0",
        meter_reading_unit_precision="10",
    )
    page = text(pages.client.post("/config/inputs", data=form))
    for field in (
        "activation_interval",
        "multi_trigger_rate",
        "meter_reading_unit_factor",
        "meter_reading_unit_precision",
    ):
        assert_invalid(page, f"input-{water}-{field}")
    assert "is-invalid" not in input_tag(page, f"input-{water}-multi_trigger_interval")
    assert pages.processor.commands == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("meter_reading_unit_factor", "0", "from 1 to 1000000000"),
        ("meter_reading_unit_factor", "1000000001", "from 1 to 1000000000"),
        ("meter_reading_unit_factor", "ten", "whole number"),
        ("meter_reading_unit_precision", "10", "from 0 to 9"),
        ("meter_reading_unit_precision", "-1", "from 0 to 9"),
        ("meter_reading_unit_precision", "2.5", "whole number"),
        ("meter_reset_value", "reset", "whole number"),
        ("meter_reset_value", str(2**31), "from"),
        ("meter_low_limit", "low", "a number from -2147483648 to 2147483647"),
        ("meter_high_limit", "4,5", "a number"),
        ("meter_low_limit", str(-(2**31) - 1), "from"),
        ("meter_high_limit", "1" * 40, "from"),
        ("meter_reading_unit", "kilowatthours", "at most 10"),
        ("meter_iot_topic", "meters/#", "MQTT topic"),
        ("meter_iot_topic", "meters water", "MQTT topic"),
        ("meter_iot_topic", "t" * 101, "at most 100"),
    ],
)
def test_meter_validation_errors_save_neither_half(
    pages: Pages, field: str, value: str, message: str
) -> None:
    water = pages.ids["water"]
    before = snapshot(pages)
    # The input half is valid: it must not be saved while the meter half is refused.
    form = input_form(water, meter=True, activation_interval="45", **{field: value})
    response = pages.client.post("/config/inputs", data=form)
    assert response.status_code == 400
    page = text(response)
    assert_invalid(page, f"input-{water}-{field}", message)
    assert 'value="45"' in input_tag(page, f"input-{water}-activation_interval")
    assert pages.processor.commands == []
    assert snapshot(pages) == before


def test_meter_low_limit_above_high_limit_is_refused_before_anything_is_saved(pages: Pages) -> None:
    water = pages.ids["water"]
    before = snapshot(pages)
    form = input_form(water, meter=True, device_label="Mains", meter_low_limit="50", meter_high_limit="10")
    page = text(pages.client.post("/config/inputs", data=form))
    assert_invalid(page, f"input-{water}-meter_low_limit", "high limit")
    assert pages.processor.commands == []
    assert snapshot(pages) == before


def test_saving_a_meter(pages: Pages) -> None:
    water = pages.ids["water"]
    form = input_form(
        water,
        meter=True,
        meter_iot_topic=" meters/water/2 ",
        meter_reading_unit="m3",
        meter_reading_unit_factor="1",  # the original could not set 1
        meter_reading_unit_precision="0",  # nor 0
        meter_reset_value="-5",
        meter_reset_additive="1",
        meter_low_limit="-10",
        meter_high_limit="1000",
    )
    response = pages.client.post("/config/inputs", data=form, follow_redirects=True)
    assert response.status_code == 200
    # one command, one transaction, one history entry for the input and its meter settings
    assert [c.action for c in pages.processor.commands] == ["update_input"]
    assert set(pages.processor.commands[0].args) == {"id", "fields", "meter_fields"}
    with pages.sessions() as s:
        (change,) = s.scalars(select(ConfigChange)).all()
        assert json.loads(change.after)["meter_reading_unit"] == "m3"
    meter = get_row(pages, InputConfig, water).meter
    assert meter.meter_iot_topic == "meters/water/2"
    assert (
        meter.meter_reading_unit,
        meter.meter_reading_unit_factor,
        meter.meter_reading_unit_precision,
    ) == (
        "m3",
        1,
        0,
    )
    assert (meter.meter_reset_value, meter.meter_reset_additive) == (-5, True)
    assert (meter.meter_low_limit, meter.meter_high_limit) == (-10, 1000)
    page = text(response)
    assert "meter limits -10 to 1000" in page
    assert 'value="meters/water/2"' in page


def test_clearing_the_meter_topic_is_not_an_error(pages: Pages) -> None:
    water = pages.ids["water"]
    response = pages.client.post("/config/inputs", data=input_form(water, meter=True), follow_redirects=True)
    assert response.status_code == 200
    meter = get_row(pages, InputConfig, water).meter
    assert meter.meter_iot_topic == ""
    assert meter.meter_reading_unit_factor is None
    assert_no_none(text(response))


def test_a_meter_without_settings_gets_them_on_save(pages: Pages) -> None:
    gas = pages.ids["gas"]
    form = input_form(gas, meter=True, meter_reading_unit="kWh", meter_reading_unit_factor="1000")
    assert pages.client.post("/config/inputs", data=form).status_code == 302
    meter = get_row(pages, InputConfig, gas).meter
    assert (meter.meter_reading_unit, meter.meter_reading_unit_factor) == ("kWh", 1000)


def test_a_non_meter_ignores_posted_meter_fields(pages: Pages) -> None:
    door = pages.ids["door"]
    form = input_form(door, meter=True, meter_reading_unit_factor="nonsense")
    assert pages.client.post("/config/inputs", data=form).status_code == 302
    assert [c.action for c in pages.processor.commands] == ["update_input"]


def test_a_refused_meter_half_saves_neither_half(pages: Pages, monkeypatch: pytest.MonkeyPatch) -> None:
    def meter_fails(*_args: Any) -> list[str]:
        raise config_changes.ChangeError("meter_reading_unit", "meter_reading_unit refused by the processor")

    monkeypatch.setattr(config_changes, "_meter_change", meter_fails)
    water = pages.ids["water"]
    before = get_row(pages, InputConfig, water).activation_interval
    response = pages.client.post(
        "/config/inputs", data=input_form(water, meter=True, activation_interval="12")
    )
    assert response.status_code == 400
    assert "Refused by the processor" in text(response)
    assert get_row(pages, InputConfig, water).activation_interval == before  # the input half was undone
    with pages.sessions() as s:
        assert s.scalars(select(ConfigChange)).all() == []


def test_processor_timeout_keeps_the_typed_form(pages: Pages, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        commands,
        "request",
        lambda *a, **k: Reply(ok=False, error="the event processor did not answer in time", status=503),
    )
    door = pages.ids["door"]
    response = pages.client.post("/config/inputs", data=input_form(door, device_label="Front"))
    assert response.status_code == 503
    page = text(response)
    assert "did not answer in time" in page
    assert 'value="Front"' in input_tag(page, f"input-{door}-device_label")


# ---- outputs --------------------------------------------------------------------------------


def test_mask_params() -> None:
    mask = config_pages.mask_params
    assert mask(CAMERA_PARAMS) == "admin:••••••@192.168.1.20:88,554"
    assert mask("admin:@10.0.0.1") == "admin:••••••@10.0.0.1"
    assert mask(SMS_PARAMS) == "Alice;+••••••••567,Bob;+•• •• •••• •958"
    assert mask(PING_PARAMS) == "••••••"
    assert mask("just a token") == "••••••"
    assert mask(None) == "" and mask("") == ""


def test_outputs_page_masks_the_params_and_never_shows_them(pages: Pages) -> None:
    page = html.unescape(text(pages.client.get("/config/outputs")))
    assert 'value="admin:••••••@192.168.1.20:88,554"' in page
    assert 'value="Alice;+••••••••567,Bob;+•• •• •••• •958"' in page
    assert 'value="••••••"' in page
    for secret in ("admin:pw", "pw@", "5551234", "7946", "AA:BB:CC"):
        assert secret not in page
    assert 'value=""' in input_tag(page, f"output-{pages.ids['buzzer']}-device_params")


def test_the_unchanged_masked_value_keeps_the_params(pages: Pages) -> None:
    cam = pages.ids["cam"]
    form = output_form(cam, "admin:••••••@192.168.1.20:88,554", device_label="Camera", trigger_interval="10")
    response = pages.client.post("/config/outputs", data=form, follow_redirects=True)
    assert response.status_code == 200
    assert "device_params" not in pages.processor.commands[-1].args["fields"]
    row = get_row(pages, OutputConfig, cam)
    assert (row.device_params, row.trigger_interval) == (CAMERA_PARAMS, 10)
    page = text(response)
    assert (
        "Saved Camera: enabled, minimum interval 10 s, default topic, parameters set, "
        "pulse: latch interval of the input." in page
    )
    assert "pw@" not in page


def test_unchanged_masked_phone_list_and_catch_all_are_kept(pages: Pages) -> None:
    for key, masked, clear in (
        ("SMS", "Alice;+••••••••567,Bob;+•• •• •••• •958", SMS_PARAMS),
        ("ping", "••••••", PING_PARAMS),
    ):
        assert (
            pages.client.post("/config/outputs", data=output_form(pages.ids[key], masked)).status_code == 302
        )
        assert get_row(pages, OutputConfig, pages.ids[key]).device_params == clear


def test_changed_params_are_saved_blank_keeps_and_the_clear_box_empties(pages: Pages) -> None:
    cam, ping = pages.ids["cam"], pages.ids["ping"]
    assert (
        pages.client.post("/config/outputs", data=output_form(cam, " root:secret@10.0.0.9:80 ")).status_code
        == 302
    )
    assert get_row(pages, OutputConfig, cam).device_params == "root:secret@10.0.0.9:80"
    # blank keeps the write-only value; only the clear box empties it
    assert pages.client.post("/config/outputs", data=output_form(ping, "")).status_code == 302
    assert get_row(pages, OutputConfig, ping).device_params == PING_PARAMS
    assert "device_params" not in pages.processor.commands[-1].args["fields"]
    cleared = output_form(ping, "", clear_device_params="1")
    assert pages.client.post("/config/outputs", data=cleared).status_code == 302
    assert get_row(pages, OutputConfig, ping).device_params is None
    page = text(pages.client.get("/config/outputs"))
    assert "secret" not in page
    assert f'id="output-{cam}-clear_device_params"' in page  # offered where there is something to clear
    assert f'id="output-{ping}-clear_device_params"' not in page
    assert "leave blank (or as shown) to keep" in page


def test_editing_around_the_mask_keeps_the_hidden_parts(pages: Pages) -> None:
    cam, sms = pages.ids["cam"], pages.ids["SMS"]
    form = output_form(cam, "admin:••••••@192.168.1.21:88,554")  # new address, same password
    assert pages.client.post("/config/outputs", data=form).status_code == 302
    assert get_row(pages, OutputConfig, cam).device_params == "admin:pw@192.168.1.21:88,554"
    form = output_form(sms, "Alice;+••••••••567, Carol;+15550001111")  # Bob removed, Carol added
    assert pages.client.post("/config/outputs", data=form).status_code == 302
    assert get_row(pages, OutputConfig, sms).device_params == "Alice;+15551234567,Carol;+15550001111"


def test_bullets_are_never_saved(pages: Pages) -> None:
    sms = pages.ids["SMS"]
    before = snapshot(pages)
    response = pages.client.post("/config/outputs", data=output_form(sms, "Alice;+•••1234567"))
    assert response.status_code == 400
    assert_invalid(text(response), f"output-{sms}-device_params", "hidden")
    assert pages.processor.commands == []
    assert snapshot(pages) == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("trigger_topic", "event trigger", "routing key"),
        ("trigger_topic", "event.#", "routing key"),
        ("trigger_topic", "t" * 256, "at most 255"),
        ("trigger_interval", "often", "whole number"),
        ("trigger_interval", "-5", "from 0 to 86400"),
        ("trigger_interval", "86401", "from 0 to 86400"),
        ("trigger_interval", "7" * 100, "from 0 to 86400"),
        ("device_label", "l" * 101, "at most 100"),
    ],
)
def test_output_validation_errors_save_nothing(pages: Pages, field: str, value: str, message: str) -> None:
    cam = pages.ids["cam"]
    before = snapshot(pages)
    form = output_form(cam, "root:new@10.0.0.2", **{field: value})
    response = pages.client.post("/config/outputs", data=form)
    assert response.status_code == 400
    page = text(response)
    assert_invalid(page, f"output-{cam}-{field}", message)
    assert f'value="{html.escape(value)}"' in input_tag(page, f"output-{cam}-{field}")
    assert pages.processor.commands == []
    assert snapshot(pages) == before


def test_disabling_an_output_and_setting_its_topic(pages: Pages) -> None:
    buzzer = pages.ids["buzzer"]
    form = output_form(buzzer, "", device_label=" Hall buzzer ", trigger_topic="event.trigger.buzz")
    del form["device_enabled"]
    response = pages.client.post("/config/outputs", data=form, follow_redirects=True)
    row = get_row(pages, OutputConfig, buzzer)
    assert (row.device_enabled, row.device_label, row.trigger_topic) == (
        False,
        "Hall buzzer",
        "event.trigger.buzz",
    )
    page = text(response)
    assert (
        "Saved Hall buzzer: disabled, no minimum interval, topic event.trigger.buzz, no parameters, "
        "pulse: latch interval of the input." in page
    )
    assert "checked" not in input_tag(page, f"output-{buzzer}-device_enabled")
    assert_no_none(page)


def test_alert_when_offline_checkbox_shows_the_defaults_and_saves(pages: Pages) -> None:
    hall, buzzer = pages.ids["hall"], pages.ids["buzzer"]
    # NULL is the default: on for inputs, off for outputs.
    page = text(pages.client.get("/config/inputs"))
    assert "Alert when offline" in page
    assert "checked" in input_tag(page, f"input-{hall}-alert_offline")
    page = text(pages.client.get("/config/outputs"))
    assert "checked" not in input_tag(page, f"output-{buzzer}-alert_offline")

    form = input_form(hall)
    del form["alert_offline"]  # unticked
    pages.client.post("/config/inputs", data=form)
    assert get_row(pages, InputConfig, hall).alert_offline is False
    page = text(pages.client.get("/config/inputs"))
    assert "checked" not in input_tag(page, f"input-{hall}-alert_offline")

    pages.client.post("/config/outputs", data=output_form(buzzer, "", alert_offline="1"))
    assert get_row(pages, OutputConfig, buzzer).alert_offline is True
    page = text(pages.client.get("/config/outputs"))
    assert "checked" in input_tag(page, f"output-{buzzer}-alert_offline")
    assert_no_none(page)


# ---- links ----------------------------------------------------------------------------------


def test_links_page_lists_every_input_and_explains_input_links(pages: Pages) -> None:
    page = text(pages.client.get("/config/links"))
    for key in ("door", "hall", "water", "App Panic Button", "App Dash Button"):
        assert f'id="links-{pages.ids[key]}"' in page
    assert "fires only if each of them also triggered within" in page
    door = pages.ids["door"]
    assert f'id="links-{door}-in-{door}"' not in page  # no link to itself offered
    assert f'id="links-{door}-out-{pages.ids["cam"]}"' in page


def test_saving_links(pages: Pages) -> None:
    panic, door, hall = pages.ids["App Panic Button"], pages.ids["door"], pages.ids["hall"]
    cam, sms = pages.ids["cam"], pages.ids["SMS"]
    form = {"id": str(door), "output_ids": [str(cam), str(sms), str(cam)], "input_ids": [str(hall)]}
    response = pages.client.post("/config/links", data=form)
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/config/links?id={door}#links-{door}")
    # one command: output links and input links are saved together or not at all, one history entry
    assert [c.action for c in pages.processor.commands] == ["set_links"]
    assert links_of(pages, door) == ({cam, sms}, {hall})
    with pages.sessions() as s:
        (change,) = s.scalars(select(ConfigChange)).all()
        assert change.target_kind == "links" and change.target_id == door
        assert json.loads(change.before) == {"outputs": [], "inputs": []}
        assert json.loads(change.after) == {"outputs": ["SMS", "cam"], "inputs": ["hall"]}
    page = text(pages.client.get(response.headers["Location"]))
    assert "Saved Door: triggers Camera, SMS; fires only with hall." in page
    assert '>2 outputs</span><span class="badge text-bg-secondary">1 input</span>' in page
    assert "checked" in input_tag(page, f"links-{door}-out-{cam}")
    assert "checked" not in input_tag(page, f"links-{door}-out-{pages.ids['buzzer']}")
    # The panic button can be linked too.
    assert (
        pages.client.post("/config/links", data={"id": str(panic), "output_ids": [str(sms)]}).status_code
        == 302
    )
    assert links_of(pages, panic) == ({sms}, set())
    # Unticking everything removes every link.
    response = pages.client.post("/config/links", data={"id": str(door)}, follow_redirects=True)
    assert links_of(pages, door) == (set(), set())
    assert "Saved Door: triggers no outputs; needs no other input." in text(response)


@pytest.mark.parametrize(
    ("outputs", "inputs", "field"),
    [
        (["cam"], ["door"], "input_ids"),  # itself
        (["cam"], ["abc"], "input_ids"),
        (["cam", "999"], ["hall"], "output_ids"),
        (["cam"], ["999"], "input_ids"),
        (["cam", "-3"], [], "output_ids"),
        (["9" * 40], [], "output_ids"),
    ],
)
def test_bad_links_change_neither_list(
    pages: Pages, outputs: list[str], inputs: list[str], field: str
) -> None:
    door = pages.ids["door"]
    with pages.sessions() as s:
        s.add_all([OutputLink(input_device_id=door, output_device_id=pages.ids["buzzer"])])
        s.add_all([InputLink(input_device_id=door, linked_device_id=pages.ids["water"])])
        s.commit()
    before = snapshot(pages)
    form = {
        "id": str(door),
        "output_ids": [str(pages.ids.get(o, o)) for o in outputs],
        "input_ids": [str(pages.ids.get(i, i)) for i in inputs],
    }
    response = pages.client.post("/config/links", data=form)
    assert response.status_code == 400
    page = text(response)
    assert "invalid-feedback d-block" in page
    assert f'class="form-check-input is-invalid" type="checkbox" name="{field}"' in page
    assert f'id="links-{door}" open>' in page
    assert pages.processor.commands == []
    assert snapshot(pages) == before


def test_a_refused_links_save_changes_neither_list(pages: Pages, monkeypatch: pytest.MonkeyPatch) -> None:
    door = pages.ids["door"]
    with pages.sessions() as s:
        s.add(OutputLink(input_device_id=door, output_device_id=pages.ids["buzzer"]))
        s.commit()
    before = snapshot(pages)
    real = config_changes._replace_input_links

    def input_links_fail(*args: Any, **kwargs: Any) -> str:
        # the output half has been applied in the session by now; this must undo it
        raise config_changes.ChangeError("input_ids", "there is no input with id 12345")

    monkeypatch.setattr(config_changes, "_replace_input_links", input_links_fail)
    form = {"id": str(door), "output_ids": [str(pages.ids["cam"])], "input_ids": [str(pages.ids["hall"])]}
    response = pages.client.post("/config/links", data=form)
    assert response.status_code == 400
    assert "There is no input with id 12345" in text(response)  # beside the input links
    assert snapshot(pages) == before
    with pages.sessions() as s:
        assert s.scalars(select(ConfigChange)).all() == []
    monkeypatch.setattr(config_changes, "_replace_input_links", real)


def test_links_of_a_removed_device_are_a_404(pages: Pages) -> None:
    with pages.sessions() as s:
        row = s.get(InputConfig, pages.ids["hall"])
        s.delete(row)
        s.commit()
    assert pages.client.get(f"/config/links?id={pages.ids['hall']}").status_code == 404
    assert pages.client.post("/config/links", data={"id": str(pages.ids["hall"])}).status_code == 404


# ---- device generation ------------------------------------------------------------------------


def select_tag(page: str, element_id: str) -> str:
    match = re.search(rf'<select[^>]*\bid="{re.escape(element_id)}"[^>]*>.*?</select>', page, re.DOTALL)
    assert match, f"no select #{element_id}"
    return match.group(0)


def test_outputs_page_shows_the_generation_and_saves_an_override(pages: Pages) -> None:
    buzzer, cam = pages.ids["buzzer"], pages.ids["cam"]
    with pages.sessions() as s:
        row = s.get(OutputConfig, cam)
        row.generation, row.generation_device = "g3", "snapshot"
        s.commit()
    page = html.unescape(text(pages.client.get("/config/outputs")))
    assert "Speaks: Not heard yet: sent the G1/G2 control message" in page  # the buzzer
    assert "Speaks: G3 (2024, inputs with state), detected from device snapshot." in page
    options = select_tag(page, f"output-{buzzer}-generation_override")
    assert re.search(r'<option value="" selected>As detected</option>', options)
    assert all(f'<option value="{g}">' in options for g in ("g1", "g2", "g3"))

    form = output_form(buzzer, "", generation_override="g3")
    response = pages.client.post("/config/outputs", data=form, follow_redirects=True)
    assert get_row(pages, OutputConfig, buzzer).generation_override == "g3"
    page = html.unescape(text(response))
    assert "Speaks: G3 (2024, inputs with state), set by hand." in page
    assert '<option value="g3" selected>' in select_tag(page, f"output-{buzzer}-generation_override")
    assert_no_none(page)
    # back to detection
    pages.client.post("/config/outputs", data=output_form(buzzer, "", generation_override=""))
    assert get_row(pages, OutputConfig, buzzer).generation_override is None


def test_a_bad_generation_is_shown_beside_the_field_and_saves_nothing(pages: Pages) -> None:
    buzzer = pages.ids["buzzer"]
    before = snapshot(pages)
    response = pages.client.post("/config/outputs", data=output_form(buzzer, "", generation_override="g9"))
    assert response.status_code == 400
    page = html.unescape(text(response))
    assert "is-invalid" in select_tag(page, f"output-{buzzer}-generation_override")
    assert "Must be one of g1, g2, g3, or null to follow the device" in page
    assert snapshot(pages) == before and pages.processor.commands == []


def test_saving_warns_of_a_long_g3_pulse_and_of_triggers_that_would_be_refused(pages: Pages) -> None:
    buzzer, cam, door = pages.ids["buzzer"], pages.ids["cam"], pages.ids["door"]
    with pages.sessions() as s:
        s.get(InputConfig, door).activation_interval = 30  # today's pulse: the input's interval
        s.add_all([OutputLink(input_device_id=door, output_device_id=o) for o in (buzzer, cam)])
        s.commit()
    # a G1 board pulses each relay in a thread of its own: no warning
    page = html.unescape(
        text(pages.client.post("/config/outputs", data=output_form(buzzer, ""), follow_redirects=True))
    )
    assert "one after another" not in page and "alert-warning" not in page
    form = output_form(buzzer, "", generation_override="g3")
    page = html.unescape(text(pages.client.post("/config/outputs", data=form, follow_redirects=True)))
    assert (
        "A G3 board pulses its relays one after another: a 30 s pulse holds its other relays for as long."
        in page
    )
    assert "alert-warning" in page
    # a camera string the snapshot-processor cannot split: saved, and the page says its triggers are refused
    form = output_form(cam, "admin:pw@192.168.1.20:88,554,555")
    page = html.unescape(text(pages.client.post("/config/outputs", data=form, follow_redirects=True)))
    assert get_row(pages, OutputConfig, cam).device_params == "admin:pw@192.168.1.20:88,554,555"
    assert (
        "Its triggers will be refused, as the device would reject them: "
        "camera parameters allow at most one ','" in page
    )
    assert "alert-danger" in page
