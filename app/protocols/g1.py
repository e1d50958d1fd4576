"""G1 codec (remote-monitor b3be8c0, snapshot-processor Nov 2023): the nested `data` layout.

Inbound `{timestamp, data: {device_info | samples, active_devices, storage_url}}`; outbound
`event.control.<topic>` with `{timestamp: '%Y-%m-%dT%H:%M:%S.%f%z', data: [...]}` (wire-format.md §4),
which G2 devices parse the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.protocols import checks
from app.protocols.inbound import Inbound
from pylib import wire

# Any here is the wire boundary: a device's decoded payload, checked field by field.


def device_list(value: Any, what: str, problems: list[str]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{what} is a {type(value).__name__}, not a list")
        return []
    return value


def active_devices(data: dict[str, Any], inbound: Inbound) -> None:
    """The activations of `active_devices`, each a map (snapshot-processor's storage_url copied in)."""
    storage_url = data.get("storage_url")
    for device in device_list(data.get("active_devices"), "active_devices", inbound.problems):
        if not isinstance(device, dict):
            inbound.problems.append(f"active device is a {type(device).__name__}, not a map")
            continue
        if isinstance(storage_url, str):
            # snapshot-processor puts the picture's folder link beside the devices, not in them
            device.setdefault("storage_url", storage_url)
        inbound.active.append(device)


def device_info(data: dict[str, Any], inbound: Inbound) -> None:
    info = data.get("device_info")
    if isinstance(info, dict):
        inbound.inputs += device_list(info.get("inputs"), "device_info inputs", inbound.problems)
        inbound.outputs += device_list(info.get("outputs"), "device_info outputs", inbound.problems)
    elif info is not None:
        inbound.problems.append(f"device_info is a {type(info).__name__}, not a map")


def read(data: dict[str, Any], inbound: Inbound) -> None:
    device_info(data, inbound)
    active_devices(data, inbound)


def control_data(trigger: checks.Trigger) -> list[Any] | None:
    """The `data` array each G1/G2 consumer unpacks (wire-format.md §4), or None: no route."""
    if trigger.handler == "ioboard":
        # remote-monitor: `device_key, duration = payload['data']`
        checks.duration(trigger.duration)
        return [trigger.output_key, trigger.duration]
    if trigger.handler == "snapshot":
        # snapshot-processor: `device_key, device_label, camera_config = payload['data']`
        checks.camera_params(trigger.device_params)
        return [trigger.output_key, trigger.output_label, trigger.device_params]
    if trigger.handler in ("tts", "bluetooth") or trigger.trigger_topic:
        return [trigger.output_key, trigger.output_label, trigger.device_params, trigger.message]
    return None


def encode(trigger: checks.Trigger) -> tuple[str, bytes] | None:
    data = control_data(trigger)
    if data is None:
        return None
    key = trigger.trigger_topic or f"event.control.{trigger.handler}"
    when = datetime.fromtimestamp(trigger.now, UTC)
    return key, wire.make_payload(data, when)
