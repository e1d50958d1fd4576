"""The devices the bench plays: remote-monitor inputs and outputs, and adc-app sensor boards on MQTT."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bench.config import DEVICES, MQTT_BOARDS, MQTT_PLACE, SENSOR_LABELS


@dataclass(frozen=True)
class Device:
    """One remote-monitor input and the output it is linked to."""

    input: dict[str, str]
    output: dict[str, str]

    @property
    def input_key(self) -> str:
        return self.input["device_key"]

    @property
    def output_key(self) -> str:
        return self.output["device_key"]


def make_devices(count: int = DEVICES) -> list[Device]:
    """Inputs and outputs described as remote-monitor does (wire-format.md §3.1)."""
    devices = []
    for i in range(1, count + 1):
        name, kind, location = f"Sensor {i:03d}", "Motion", f"Room {i:03d}"
        out_type = "Buzzer" if i % 2 else "switch"
        devices.append(
            Device(
                input={
                    "name": name,
                    "type": kind,
                    "location": location,
                    "device_key": f"{name} {kind} ({location})",
                    "device_label": f"{name} {kind}",
                },
                output={"type": out_type, "location": location, "device_key": f"{location} {out_type}"},
            )
        )
    return devices


def heartbeat_data(devices: list[Device]) -> dict[str, Any]:
    return {
        "statistics": {"sample_count": 123456},
        "device_info": {
            "inputs": [d.input for d in devices],
            "outputs": [d.output for d in devices],
        },
    }


def activation_data(device: Device, value: int) -> dict[str, Any]:
    """One active input, as remote-monitor's notify message carries it (wire-format.md §3.2)."""
    active = dict(device.input, sample_value=value)
    return {"samples": {device.input_key: value}, "active_devices": [active]}


@dataclass(frozen=True)
class SensorInput:
    """One input of an adc-app sensor board on MQTT and the switch output it is linked to."""

    board_id: str
    location: str
    number: int  # N of input_N, 1-4
    label: str
    output: dict[str, str]

    @property
    def topic(self) -> str:
        return f"sensor/{MQTT_PLACE}/{self.board_id}"

    @property
    def device_key(self) -> str:
        """What the hub (app/sources/mqtt_source.py) makes of it: '<input_location> <input_label>'."""
        return f"{self.location} {self.label}"

    @property
    def output_key(self) -> str:
        return self.output["device_key"]


def make_sensor_inputs() -> list[SensorInput]:
    """DEVICES inputs on MQTT_BOARDS boards of 4, in activation order, linked to make_devices()' outputs.

    Consecutive inputs are on different boards (board = j % 25, input = j // 25 + 1), so a burst
    touches every board, as a house of boards would, and every input is distinct.
    """
    outputs = [d.output for d in make_devices()]
    sensors = []
    for j in range(DEVICES):
        board, number = j % MQTT_BOARDS, j // MQTT_BOARDS + 1
        sensors.append(
            SensorInput(
                board_id=f"esp32_BE{board + 1:04X}",
                location=f"Zone {board + 1:02d}",
                number=number,
                label=SENSOR_LABELS[number - 1],
                output=outputs[j],
            )
        )
    return sensors


def sensor_reading(board: list[SensorInput], active: int | None, uptime: float) -> bytes:
    """A board's reading exactly as adc-app publishes it (wire-format.md §5.3); input `active` is on."""
    first = board[0]
    body: dict[str, Any] = {
        "uptime": uptime,
        "timestamp": uptime,
        "device_id": first.board_id,
        "input_location": first.location,
    }
    for s in board:
        on = s.number == active
        body[f"input_{s.number}"] = {
            "input_label": s.label,
            "active": on,
            "sample_value": 4095 if on else 0,
            "normal_value": 0,
        }
    return json.dumps(body).encode()


def outputs_heartbeat_data(outputs: list[dict[str, str]]) -> dict[str, Any]:
    """An ioboard heartbeat advertising only switch outputs (the inputs come from MQTT)."""
    return {"statistics": {"sample_count": 1}, "device_info": {"inputs": [], "outputs": outputs}}
