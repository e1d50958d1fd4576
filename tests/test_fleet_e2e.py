"""A mixed fleet against the real RabbitMQ: one board of each generation and both camera generations.

Each device's listener binds what that device binds and parses every control message with that
device's own rules (tests/device_parsers.py): one pulse per activation with the right duration,
one snapshot per activation, and nothing any device would choke on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgpack
import umsgpack

from app.core import health
from app.sources import heartbeat
from pylib import wire
from tests import device_parsers as dev
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.support import wait_for

HALL = {
    "name": "Hall",
    "type": "Motion",
    "location": "Hall",
    "device_key": "Hall Motion (Hall)",
    "device_label": "Hall Motion",
}
PORCH = {
    "name": "Porch",
    "type": "Motion",
    "location": "Porch",
    "device_key": "Porch Motion (Porch)",
    "device_label": "Porch Motion",
}
GATE = {
    "name": "Gate",
    "type": "Contact",
    "location": "Garage",
    "device_key": "Gate Contact (Garage)",
    "device_label": "Gate Contact",
}
DOOR = {
    "name": "Door",
    "type": "Contact",
    "location": "Garage",
    "device_key": "Door Contact (Garage)",
    "device_label": "Door Contact",
}
BUZZERS = {"g1": "Hall Buzzer", "g2": "Porch Buzzer", "g3": "Garage Buzzer"}
CAMERAS = {"g1": "Front Camera", "g3": "Back Camera"}
PARAMS = {"Front Camera": "admin:pw@192.168.1.20:88,554", "Back Camera": "admin:pw@192.168.1.21:88"}


def out(key: str) -> dict[str, str]:
    location, kind = key.split(" ")
    return {"type": kind, "location": location, "device_key": key}


def stamp() -> str:
    return wire.format_timestamp()


class Listener(ControlConsumer):
    """One device: binds its key on <exchange>_control and judges each message with its parser."""

    def __init__(self, settings: Any, key: str, parse: Any, own: set[str]) -> None:
        self.parse, self.own = parse, own
        self.done: list[Any] = []
        self.died: list[str] = []
        super().__init__(settings, (key,))

    def _on_message(self, _ch: Any, method: Any, _props: Any, body: bytes) -> None:
        try:
            outcome = self.parse(method.routing_key, body, self.own)
        except dev.DeviceDied as exc:
            self.died.append(str(exc))
            return
        if outcome is not None:
            self.done.append(outcome)


def publish_raw(device: Device, key: str, body: dict[str, Any], packer: Any = msgpack.packb) -> None:
    device.channel.basic_publish(device.exchange, key, packer(body))


def test_mixed_fleet_one_pulse_per_activation_in_each_devices_own_format(make_settings) -> None:
    settings = make_settings()
    hub = start_hub(settings)
    device = Device(settings)
    listeners = {
        "g1": Listener(settings, "event.control.ioboard", dev.remote_monitor_g1, {BUZZERS["g1"]}),
        "g2": Listener(settings, "event.control.ioboard", dev.remote_monitor_g1, {BUZZERS["g2"]}),
        "g3": Listener(settings, "event.trigger.ioboard", dev.remote_monitor_g3, {BUZZERS["g3"]}),
        "camera g1": Listener(settings, "event.control.snapshot", dev.snapshot_g1, {CAMERAS["g1"]}),
        "camera now": Listener(settings, "event.trigger.snapshot", dev.snapshot_now, {CAMERAS["g3"]}),
    }
    try:
        api = Api(hub)
        # heartbeats, each in its generation's layout
        hall_out, porch_out, garage_out = (out(BUZZERS[g]) for g in ("g1", "g2", "g3"))
        info = {"device_info": {"inputs": [HALL], "outputs": [hall_out]}}
        publish_raw(
            device,
            "event.heartbeat.ioboard.pi-g1",
            {"timestamp": stamp(), "data": {"statistics": {"sample_count": 1}, **info}},
        )
        publish_raw(
            device,
            "event.heartbeat.ioboard.pi-g2",
            {
                "timestamp": stamp(),
                "statistics": {"sample_count": 1},
                "device_info": {"inputs": [PORCH], "outputs": [porch_out]},
                "inputs": [PORCH],
                "outputs": [porch_out],
            },
        )
        publish_raw(
            device,
            "event.heartbeat.ioboard.pi-g3",
            {"timestamp": stamp(), "inputs": [GATE, DOOR], "outputs": [garage_out]},
        )
        front = {"type": "Camera", "location": "Front", "device_key": "Front Camera"}
        back = {"type": "Camera", "location": "Back", "device_key": "Back Camera"}
        publish_raw(
            device,
            "event.heartbeat.snapshot",
            {"timestamp": stamp(), "data": {"device_info": {"inputs": [front], "outputs": [front]}}},
        )
        now_z = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        publish_raw(
            device,
            "event.heartbeat.snapshot",
            {"timestamp": now_z, "inputs": [back], "outputs": [back]},
            umsgpack.packb,
        )

        outputs = list(BUZZERS.values()) + list(CAMERAS.values())
        wait_for(lambda: {o["device_key"] for o in api.get("/api/devices")["outputs"]} >= set(outputs))
        heard = {
            key: wait_for(
                lambda k=key: (
                    (d := api.get(f"/api/outputs/{api.device('outputs', k)['id']}"))["generation"] and d
                )
            )
            for key in outputs
        }
        assert {k: (d["generation"], d["generation_device"]) for k, d in heard.items()} == {
            "Hall Buzzer": ("g1", "pi-g1"),
            "Porch Buzzer": ("g2", "pi-g2"),
            "Garage Buzzer": ("g3", "pi-g3"),
            "Front Camera": ("g1", "snapshot"),
            "Back Camera": ("g3", "snapshot"),
        }
        for camera, params in PARAMS.items():
            api.patch("outputs", camera, device_params=params)
        durations = {
            HALL["device_key"]: 2,
            PORCH["device_key"]: None,
            GATE["device_key"]: 3,
            DOOR["device_key"]: 4,
        }
        for key, interval in durations.items():
            api.patch("inputs", key, device_enabled=True, activation_interval=interval)
            api.link(key, *outputs)

        # a G3 heartbeat fires nothing
        publish_raw(
            device,
            "event.heartbeat.ioboard.pi-g3",
            {"timestamp": stamp(), "inputs": [GATE, DOOR], "outputs": [garage_out]},
        )
        # one activation per board, each in its own layout
        publish_raw(
            device,
            "event.notify.ioboard.pi-g1",
            {
                "timestamp": stamp(),
                "data": {
                    "samples": {HALL["device_key"]: 97},
                    "active_devices": [{**HALL, "sample_value": 97}],
                },
            },
        )
        active = [{**PORCH, "sample_value": 88}]
        publish_raw(
            device,
            "event.notify.ioboard.pi-g2",
            {
                "timestamp": stamp(),
                "samples": {PORCH["device_key"]: 88},
                "active_devices": active,
                "outputs_triggered": active,
            },
        )
        triggered = {**GATE, "sample_value": 97, "state": "triggered", "event_detail": None}
        publish_raw(
            device,
            "event.notify.ioboard.pi-g3",
            {"timestamp": stamp(), "inputs": [triggered, DOOR], "outputs": [garage_out]},
        )

        def settled() -> bool:
            for listener in listeners.values():
                listener.pump(0.05)
            return all(len(lst.done) >= 3 for lst in listeners.values())

        wait_for(settled, 20)
        for listener in listeners.values():
            listener.quiet(0.3)  # a while longer: nothing more may arrive
        for name, listener in listeners.items():
            assert listener.died == [], (name, listener.died)
            assert len(listener.done) == 3, (name, listener.done)
        for gen, key in BUZZERS.items():
            assert sorted(p.seconds for p in listeners[gen].done) == [1.0, 2.0, 3.0], gen  # nil -> 1 s
            assert {p.device_key for p in listeners[gen].done} == {key}
        assert {s.device_key for s in listeners["camera g1"].done} == {"Front Camera"}
        assert {s.address for s in listeners["camera now"].done} == {"192.168.1.21:88"}

        # the untriggered input of the G3 notify and the G3 heartbeat decided nothing
        wait_for(lambda: len(api.decisions(GATE["device_key"])) == 1)
        assert api.decisions(DOOR["device_key"]) == []
        counters = health.counters()
        assert counters.get("processor.triggers_by_generation.g1") == 6  # the G1 buzzer and camera, 3 each
        assert counters.get("processor.triggers_by_generation.g2") == 3
        assert counters.get("processor.triggers_by_generation.g3") == 6

        # a camera the current snapshot-processor would crash on is refused, recorded and counted
        api.patch("outputs", "Back Camera", device_params="admin:pw@a@192.168.1.21:88")
        retrig = {**triggered, "event_detail": "Tamper"}  # a new detail passes the latch
        publish_raw(
            device,
            "event.notify.ioboard.pi-g3",
            {"timestamp": stamp(), "inputs": [retrig], "outputs": [garage_out]},
        )
        decision = wait_for(lambda: (d := api.decisions(GATE["device_key"])) and len(d) == 2 and d[0])
        by_key = {o["output_key"]: o for o in decision["outputs"]}
        assert by_key["Back Camera"]["fired"] is False and by_key["Back Camera"]["reason"] == "refused"
        assert "exactly one '@'" in by_key["Back Camera"]["detail"]
        assert by_key["Garage Buzzer"]["fired"] is True
        assert health.counters().get("processor.blocked.refused") == 1
        wait_for(lambda: (settled(), listeners["g3"].done)[1][3:], 20)
        assert listeners["g3"].done[3] == dev.Pulse("Garage Buzzer", 3.0)
        listeners["camera now"].quiet(0.5)
        assert len(listeners["camera now"].done) == 3 and listeners["camera now"].died == []
    finally:
        device.close()
        for listener in listeners.values():
            listener.close()
        hub.stop()


def test_an_override_answers_a_device_that_has_not_spoken_in_its_generation(make_settings) -> None:
    settings = make_settings()
    hub = start_hub(settings)
    device = Device(settings)
    g3 = Listener(settings, "event.trigger.ioboard", dev.remote_monitor_g3, {"Garage Buzzer"})
    g1 = Listener(settings, "event.control.ioboard", dev.remote_monitor_g1, {"Garage Buzzer"})
    try:
        api = Api(hub)
        # the input comes from a G1 board; the buzzer's own board has not spoken yet (registered by hand
        # through a G1 heartbeat of another board that lists it: detection says g1, the owner knows better)
        publish_raw(
            device,
            "event.heartbeat.ioboard.pi-old",
            {
                "timestamp": stamp(),
                "data": {"device_info": {"inputs": [HALL], "outputs": [out("Garage Buzzer")]}},
            },
        )
        wait_for(lambda: any(o["device_key"] == "Garage Buzzer" for o in api.get("/api/devices")["outputs"]))
        api.patch("inputs", HALL["device_key"], device_enabled=True, activation_interval=2)
        api.link(HALL["device_key"], "Garage Buzzer")
        saved = api.patch("outputs", "Garage Buzzer", generation_override="g3")
        assert saved["generation_override"] == "g3"
        status, body = api.call("PATCH", f"/api/outputs/{saved['id']}", {"generation_override": "g9"})
        assert status == 400 and body["field"] == "generation_override"
        publish_raw(
            device,
            "event.notify.ioboard.pi-old",
            {"timestamp": stamp(), "data": {"active_devices": [{**HALL, "sample_value": 97}]}},
        )
        wait_for(lambda: (g3.pump(0.05), g1.pump(0.05), g3.done)[2], 20)
        g1.quiet(0.5)
        assert g3.done == [dev.Pulse("Garage Buzzer", 2.0)] and g1.done == [] and not g1.died and not g3.died
    finally:
        device.close()
        g3.close()
        g1.close()
        hub.stop()


def test_generation_follows_a_board_upgrade_and_two_boards_never_flip_an_output(
    make_settings, monkeypatch
) -> None:
    monkeypatch.setattr(heartbeat, "GENERATION_HOLD_SECONDS", 3.0)
    settings = make_settings()
    hub = start_hub(settings)
    device = Device(settings)
    try:
        api = Api(hub)
        garage = out("Garage Buzzer")

        def heard() -> tuple[str, str]:
            d = api.get(f"/api/outputs/{api.device('outputs', 'Garage Buzzer')['id']}")
            return d["generation"], d["generation_device"]

        def g1_heartbeat(board: str) -> None:
            body = {"timestamp": stamp(), "data": {"device_info": {"inputs": [], "outputs": [garage]}}}
            publish_raw(device, f"event.heartbeat.ioboard.{board}", body)

        def g3_heartbeat(board: str) -> None:
            publish_raw(
                device,
                f"event.heartbeat.ioboard.{board}",
                {"timestamp": stamp(), "inputs": [], "outputs": [garage]},
            )

        g1_heartbeat("pi-a")
        wait_for(lambda: any(o["device_key"] == "Garage Buzzer" for o in api.get("/api/devices")["outputs"]))
        assert wait_for(lambda: heard()[0] and heard()) == ("g1", "pi-a")
        # the same board upgraded to its 2024 release: followed at once
        g3_heartbeat("pi-a")
        wait_for(lambda: heard() == ("g3", "pi-a"))
        # another board lists the same key while pi-a keeps confirming it: refused and counted
        g1_heartbeat("pi-b")
        wait_for(lambda: health.counters().get("heartbeat_filter.generation_conflict", 0) >= 1)
        assert heard() == ("g3", "pi-a")
        # pi-a falls silent past the hold: pi-b takes the output over
        wait_for(lambda: (g1_heartbeat("pi-b"), heard() == ("g1", "pi-b"))[1], 15)
    finally:
        device.close()
        hub.stop()
