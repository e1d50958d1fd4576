"""A house without MQTT: an empty MQTT_SERVER_ADDRESS turns MQTT off, and it is then not critical."""

from __future__ import annotations

import re
import urllib.request

import pytest

from app.core import health, settings
from app.core.settings import SettingsError
from app.engine.presence import Presence
from app.store import db
from pylib import threads
from tests.hubtools import Api, start_hub
from tests.ops.test_observability import Recorder
from tests.support import wait_for
from tests.web.test_pages import page_app


def test_empty_address_turns_mqtt_off_and_a_bad_one_still_stops_start_up(make_settings) -> None:
    assert make_settings(MQTT_SERVER_ADDRESS="").mqtt_enabled is False
    assert make_settings(MQTT_SERVER_ADDRESS="  ").mqtt_enabled is False
    assert make_settings().mqtt_enabled is True
    with pytest.raises(SettingsError) as err:
        make_settings(MQTT_SERVER_ADDRESS="broker:99999")
    assert err.value.name == "MQTT_SERVER_ADDRESS"
    assert settings.load(env={"MQTT_SERVER_ADDRESS": ""}, dotenv_path="/nonexistent").mqtt_host == ""


def test_a_hub_without_mqtt_pings_healthy_and_shows_no_red_badge(make_settings) -> None:
    recorder = Recorder()
    hub = None
    try:
        hub_settings = make_settings(
            MQTT_SERVER_ADDRESS="",
            HC_PING_URL=f"http://127.0.0.1:{recorder.port}/ping/house",
            HEALTH_PING_SECONDS="0.1",
        )
        hub = start_hub(hub_settings)
        api = Api(hub)
        assert "MqttSource" not in {t.name for t in threads.tracked()}
        wait_for(lambda: recorder.paths().count("/ping/house") >= 2, what="healthy pings")
        assert "/ping/house/fail" not in recorder.paths()
        assert "mqtt" not in health.components()
        assert "mqtt" not in api.get("/api/health")["components"]
        # /metrics lists no MQTT component to alert on
        request = urllib.request.Request(
            f"http://127.0.0.1:{hub.port}/metrics", headers={"Authorization": f"Bearer {api.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            metrics = response.read().decode()
        assert 'event_processor_component_up{component="rabbitmq_source"} 1.0' in metrics
        assert 'component="mqtt"' not in metrics
    finally:
        if hub is not None:
            hub.stop()
        recorder.close()


def test_a_meter_reset_without_mqtt_is_refused_and_changes_nothing(make_settings) -> None:
    hub = start_hub(make_settings(MQTT_SERVER_ADDRESS=""))
    try:
        api = Api(hub)
        from app.store.models import InputConfig, MeterConfig

        with hub.sessions() as s:
            meter = InputConfig(device_key="Electricity Meter", device_type="meter", device_enabled=True)
            s.add(meter)
            s.flush()
            s.add(MeterConfig(input_device_id=meter.id, register_value=1234, meter_reading="1234"))
            s.commit()
            meter_id = meter.id
        hub_processor_reload = api.call("PATCH", f"/api/inputs/{meter_id}", {"device_label": "Meter"})
        assert hub_processor_reload[0] == 200
        status, body = api.call("POST", f"/api/meters/{meter_id}/reset", {"value": 0, "mode": "set"})
        assert status == 409 and "MQTT is off" in body["error"]
        with hub.sessions() as s:
            row = s.query(MeterConfig).filter_by(input_device_id=meter_id).one()
            assert row.register_value == 1234
    finally:
        hub.stop()


def test_the_dashboard_badge_reads_off_in_grey(make_settings, tmp_path) -> None:
    off = make_settings(MQTT_SERVER_ADDRESS="", TABLESPACE_PATH=str(tmp_path / "off.db"))
    engine = db.make_engine(off.database_url)
    db.upgrade(engine)
    try:
        client = page_app(off, db.session_factory(engine), Presence()).test_client()
        health.set_state("mqtt", "connecting")  # even a stale state from elsewhere does not turn it red
        page = client.get("/").get_data(as_text=True)
        badge = re.search(r'<span class="badge text-bg-(\w+)" data-component="MQTT">MQTT: (\w+)</span>', page)
        assert badge is not None and badge.groups() == ("secondary", "off")
    finally:
        engine.dispose()
