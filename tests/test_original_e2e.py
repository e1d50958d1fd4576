"""The hub on the original's database file: switch pulses and InfluxDB points as the original made them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.core import health
from app.core.settings import Settings
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.support import free_port, wait_for
from tests.test_hub_e2e import FRONT, IOBOARD_HEARTBEAT, notify
from tests.test_original_meaning import make_original
from tests.victoria import VictoriaMetrics

METER = "Electricity Meter"
# The original's rows: the front door (enabled, 30 s latch) linked to the hallway buzzer; a meter.
ORIGINAL = {
    "input_config": [
        (1, FRONT, "Motion", "Front Door", 1, 30, 0, None, None, 1, 0, None, 0),
        (2, METER, "meter", None, 0, None, 0, None, None, 1, 0, None, 0),
    ],
    "output_config": [(1, "Hallway Buzzer", "Buzzer", "Buzzer", None)],
    "output_link": [(1, 1, 1)],
    "meter_config": [(1, 2, 0, 0, "0 kWh", "meter/electricity", None, None, None, None, "kWh", 1000, 3)],
}
METER_HEARTBEAT = {
    "device_info": {"inputs": [{"device_key": METER, "type": "meter", "location": "Kitchen"}], "outputs": []}
}


def reading(register: int, metered: int) -> dict:
    device = {"device_key": METER, "type": "meter", "sample_values": {"meter": metered, "register": register}}
    return {"active_devices": [device]}


@pytest.fixture
def original_file(tmp_path: Path) -> Path:
    path = tmp_path / "original.db"
    make_original(path, ORIGINAL)
    return path


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(free_port(), tmp_path / "vm-data")
    server.start()
    yield server
    server.stop()


def hub_on(make_settings: Callable[..., Settings], path: Path, **env: str) -> Settings:
    settings: Settings = make_settings(TABLESPACE_PATH=str(path), **env)
    return settings


def test_a_migrated_link_pulses_for_the_device_default_until_a_person_changes_it(
    make_settings: Callable[..., Settings], original_file: Path
) -> None:
    settings = hub_on(make_settings, original_file)
    hub = start_hub(settings)
    device, consumer = Device(settings), ControlConsumer(settings)
    try:
        api = Api(hub)
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        buzzer = wait_for(lambda: api.device("outputs", "Hallway Buzzer"))
        assert api.get(f"/api/outputs/{buzzer['id']}")["pulse_seconds"] is None
        device.publish("event.notify.ioboard.pi-hallway", notify())
        # As the original sent it: [key, null], and remote-monitor pulses for its default 1 s.
        assert consumer.wait(1)[0][2]["data"] == ["Hallway Buzzer", None]

        status, body = api.call("PATCH", f"/api/outputs/{buzzer['id']}", {"pulse_seconds": 5})
        assert status == 200 and body["pulse_seconds"] == 5
        device.publish("event.notify.ioboard.pi-hallway", notify(detail="Tamper"))  # past the latch
        assert consumer.wait(2)[1][2]["data"] == ["Hallway Buzzer", 5]

        status, body = api.call("PATCH", f"/api/outputs/{buzzer['id']}", {"pulse_seconds": -1})
        assert status == 200
        device.publish("event.notify.ioboard.pi-hallway", notify(detail="Motion"))
        assert consumer.wait(3)[2][2]["data"] == ["Hallway Buzzer", 30]  # the input's activation_interval

        status, body = api.call("PATCH", f"/api/outputs/{buzzer['id']}", {"pulse_seconds": -2})
        assert status == 400 and body["field"] == "pulse_seconds"
    finally:
        device.close()
        consumer.close()
        hub.stop()


def _influx_env(vm: VictoriaMetrics, **extra: str) -> dict[str, str]:
    env = {
        "INFLUXDB_URL": vm.url,
        "INFLUXDB_TOKEN": "influx-token-Zq81xKv",
        "INFLUXDB_ORG": "home",
        "INFLUXDB_BUCKET": "meter",
        "APP_NAME": "event_processor",
        "DEVICE_NAME": "event-processor-a",
    }
    env.update(extra)
    return env


def _send_readings(settings: Settings) -> None:
    hub = start_hub(settings)
    device = Device(settings)
    try:
        device.publish("event.heartbeat.meterboard.esp", METER_HEARTBEAT)
        device.publish("event.meter.meterboard.esp", reading(4321, 12))
        wait_for(lambda: health.counters().get("influxdb.written", 0) >= 1, what="a point written")
    finally:
        device.close()
        hub.stop()


def test_a_migrated_database_writes_the_original_influx_layout_by_default(
    make_settings: Callable[..., Settings], original_file: Path, vm: VictoriaMetrics
) -> None:
    _send_readings(hub_on(make_settings, original_file, **_influx_env(vm)))
    # Measurement electricity_meter, tags application and device (DEVICE_NAME's first two parts),
    # fields register (the reading, register / factor) and metered (pulses / factor).
    tags = {"application": "event_processor", "device": "event-processor"}
    register = wait_for(lambda: vm.samples("electricity_meter_register", **tags), what="register point")
    metered = wait_for(lambda: vm.samples("electricity_meter_metered", **tags), what="metered point")
    assert [value for _, value in register] == [4.321]
    assert math.isclose(metered[0][1], 0.012)
    assert abs(register[0][0] / 1000 - time.time()) < 120
    assert not [name for name, _ in vm.export("meter_.*")]  # not the hub's own layout


def test_both_layouts_on_request(
    make_settings: Callable[..., Settings], original_file: Path, vm: VictoriaMetrics
) -> None:
    _send_readings(hub_on(make_settings, original_file, **_influx_env(vm, INFLUXDB_LAYOUT="both")))
    tags = {"application": "event_processor", "device": "event-processor"}
    original = wait_for(lambda: vm.samples("electricity_meter_register", **tags), what="original layout")
    new = wait_for(lambda: vm.samples("meter_reading", device_key=METER), what="new layout")
    assert [v for _, v in original] == [v for _, v in new] == [4.321]


def test_a_fresh_database_writes_the_new_layout(
    make_settings: Callable[..., Settings], vm: VictoriaMetrics, tmp_path: Path
) -> None:
    _send_readings(hub_on(make_settings, tmp_path / "fresh.db", **_influx_env(vm)))
    # A meter the hub registered itself has factor 1: the reading is the register.
    assert wait_for(lambda: vm.samples("meter_reading", device_key=METER), what="new layout") != []
    assert [name for name, _ in vm.export("electricity_meter_.*")] == []
