"""G3 codec (remote-monitor b120599, 2024; snapshot-processor since bde840c): `inputs` with `state`.

Inbound `{timestamp, inputs, outputs}` for heartbeat and notify alike: an input fires only when it
carries `'state': 'triggered'`; snapshot-processor's picture event lists the camera with its
`image` (and storage_url) in `inputs`. Outbound `event.trigger.<topic>` with `{timestamp (unix int),
active_input, output_triggered: {device_key, device_label, device_params}}`
(wire-format-generations.md §4.1, §4.3, §5).
"""

from __future__ import annotations

from typing import Any

import msgpack

from app.protocols import checks, g1
from app.protocols.inbound import Inbound

HANDLERS = ("ioboard", "snapshot")
TRIGGERED = "triggered"
# A G3 board sleeps through each pulse in its one control thread, so a pulse longer than this
# holds every other relay of that board: the output's page warns.
LONG_PULSE_SECONDS = 5.0


# Any here is the wire boundary: a device's decoded payload and the JSON body sent back.


def read(data: dict[str, Any], inbound: Inbound) -> None:
    for device in g1.device_list(data.get("inputs"), "inputs", inbound.problems):
        if not isinstance(device, dict):
            inbound.problems.append(f"input is a {type(device).__name__}, not a map")
            continue
        if "image" in device:
            # a picture event: the camera fired; its 'camera' type is not a description to follow
            inbound.active.append(device)
            continue
        inbound.inputs.append(device)
        if device.get("state") == TRIGGERED:
            inbound.active.append({k: v for k, v in device.items() if k != "state"})
    inbound.outputs += g1.device_list(data.get("outputs"), "outputs", inbound.problems)


def body(trigger: checks.Trigger) -> dict[str, Any] | None:
    """The map a G3 consumer reads `output_triggered` from, or None for handlers with no G3 client."""
    if trigger.handler == "ioboard":
        # remote-monitor: float(device_params); nil -> TypeError -> its 1 s default (§4.3 step 3).
        # The key must be present: a missing device_params is a KeyError that stops the board.
        checks.duration(trigger.duration)
        params: Any = trigger.duration
    elif trigger.handler == "snapshot":
        checks.camera_params(trigger.device_params)
        params = trigger.device_params
    else:
        return None
    return {
        # snapshot-processor requires it (unix seconds, as the 2024 hub sent); remote-monitor ignores it
        "timestamp": int(trigger.now),
        "active_input": {
            "device_key": trigger.input_key,
            "device_label": trigger.input_label,
            "device_type": trigger.input_type,
        },
        "output_triggered": {
            "device_key": trigger.output_key,
            "device_label": trigger.output_label,
            "device_params": params,
        },
    }


def encode(trigger: checks.Trigger) -> tuple[str, bytes] | None:
    data = body(trigger)
    if data is None:
        # TTS, bluetooth and topic-routed outputs have no G3 client: they keep the G1 message
        return g1.encode(trigger)
    if "output_triggered" not in data:  # what both G3 parsers test first
        raise checks.Refused("a G3 trigger without output_triggered")
    key = trigger.trigger_topic or f"event.trigger.{trigger.handler}"
    return key, msgpack.packb(data)
