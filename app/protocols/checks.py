"""What each device's parser rejects, checked before a trigger leaves the hub (spec §3.3, §4.3, §5.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass


class Refused(ValueError):
    """A trigger the receiving device would choke on; the message says why, for the decision record."""


@dataclass(frozen=True)
class Trigger:
    """One output to fire, in the hub's own terms; a codec turns it into the device's bytes."""

    handler: str | None  # ioboard, snapshot, tts, bluetooth (settings' OUTPUT_TYPE_*), or None
    output_key: str
    output_label: str
    device_params: str | None
    trigger_topic: str | None
    input_key: str
    input_label: str
    input_type: str
    duration: float | int | None  # relay pulse in seconds; None: the device's own default (1 s)
    message: str
    now: float  # unix time of the decision


def duration(value: float | int | None) -> None:
    """remote-monitor sleeps float(duration) seconds: a value float() cannot read, a negative, NaN or
    infinite one raises in the relay code and the device process exits (G1/G2 §3.3, G3 §4.3 step 5)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"pulse duration {value!r} is not a number the board can read")
    if math.isnan(value) or math.isinf(value):
        raise Refused(f"pulse duration {value!r} is not a finite number of seconds")
    if value < 0:
        raise Refused(f"pulse duration {value!r} is negative")


def camera_params(params: str | None) -> None:
    """snapshot-processor's CameraConfig: 'user:password@host:port[,rtsp_port]'.

    It splits on '@' into exactly two parts, then each side on ':' into exactly two, and the
    address on ',' into one or two: anything else raises and stops the process (§5.1).
    """
    if not isinstance(params, str) or not params:
        raise Refused("camera parameters are empty; the camera needs user:password@host:port[,rtsp_port]")
    if params.count("@") != 1:
        raise Refused("camera parameters need exactly one '@' (user:password@host:port[,rtsp_port])")
    auth, address = params.split("@")
    if auth.count(":") != 1:
        raise Refused("camera parameters need exactly one ':' between user and password, before the '@'")
    host = address.split(",")
    if len(host) > 2:
        raise Refused("camera parameters allow at most one ',' (host:port,rtsp_port)")
    if host[0].count(":") != 1:
        raise Refused("camera parameters need exactly one ':' between host and port, after the '@'")


# The device topics whose consumers exist in both formats (remote-monitor, snapshot-processor).
DEVICE_TOPICS = ("ioboard", "snapshot")


def check_routing_key(routing_key: str, g3_body: bool) -> None:
    """The two formats never share a routing key: each stops the other generation's device (§4.4).

    Only the keys those devices bind are guarded; a person's own topic (event.trigger.siren) is theirs.
    """
    parts = routing_key.split(".")
    if len(parts) != 3 or parts[0] != "event" or parts[2] not in DEVICE_TOPICS:
        return
    if g3_body and parts[1] == "control":
        raise Refused(f"{routing_key} is where G1/G2 devices listen; a G3 trigger there stops them")
    if not g3_body and parts[1] == "trigger":
        raise Refused(f"{routing_key} is where G3 devices listen; a G1/G2 control message there stops them")
