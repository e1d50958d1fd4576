"""Device codecs, one module per wire generation: inbound bodies to activations, triggers to bytes.

G1 (2023 nested `data`), G2 (Dec 2023 flat root) and G3 (2024 `inputs` with `state`) are told
apart by the body's shape (wire-format-generations.md §4.2). Outbound, G1 and G2 devices parse
`event.control.<topic>` with `{timestamp, data: [...]}` and G3 devices `event.trigger.<topic>`
with `{timestamp, active_input, output_triggered}`; each body is checked against what the
receiving device's parser would reject before it is handed out (checks.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.protocols import checks, g1, g2, g3
from app.protocols.checks import Refused, Trigger, check_routing_key
from app.protocols.inbound import Inbound

G1, G2, G3 = "g1", "g2", "g3"
GENERATIONS = (G1, G2, G3)
LABELS = {G1: "G1 (2023, nested data)", G2: "G2 (Dec 2023, flat)", G3: "G3 (2024, inputs with state)"}
# An output whose device never spoke (a row from before generations were recorded) is sent what
# the hub always sent: the G1 control message, which G1 and G2 devices parse alike.
DEFAULT = G1

__all__ = ["DEFAULT", "G1", "G2", "G3", "GENERATIONS", "Inbound", "Outbound", "Refused", "Trigger"]


# Any here is the wire boundary: a device's decoded payload.


@dataclass(frozen=True)
class Outbound:
    """A control message ready for the ControlPublisher: routing key and the exact body."""

    routing_key: str
    body: bytes
    generation: str


def device_name(routing_key: str, origin: str) -> str:
    """The sending device: routing key part [3], else the origin (`event.heartbeat.snapshot` has no [3])."""
    parts = routing_key.split(".")
    return parts[3] if len(parts) > 3 and parts[3] else origin


def detect(data: dict[str, Any]) -> str | None:
    """The generation a normalised body (pylib.wire.decode_body's 'data') was written by, if any."""
    if any(k in data for k in ("device_info", "active_devices", "statistics", "samples")):
        return G2 if any(k in data for k in ("inputs", "outputs", "outputs_triggered")) else G1
    if "inputs" in data or "outputs" in data:
        return G3
    return None


def read(routing_key: str, origin: str, data: dict[str, Any]) -> Inbound:
    """Decode a normalised device body with the codec of the generation that wrote it."""
    generation = detect(data)
    inbound = Inbound(generation=generation, device=device_name(routing_key, origin))
    codec = {G1: g1, G2: g2, G3: g3}.get(generation or "")
    if codec is not None:
        codec.read(data, inbound)
    return inbound


def encode(generation: str | None, trigger: Trigger) -> Outbound | None:
    """The control message for one output in the generation its device speaks; None: no route.

    Raises Refused when the receiving device would reject the body (and so stop, or drop it).
    """
    generation = generation if generation in GENERATIONS else DEFAULT
    codec = g3 if generation == G3 else g1
    encoded = codec.encode(trigger)
    if encoded is None:
        return None
    routing_key, body = encoded
    check_routing_key(routing_key, generation == G3 and trigger.handler in g3.HANDLERS)
    return Outbound(routing_key=routing_key, body=body, generation=generation)


def setup_problems(
    generation: str | None,
    handler: str | None,
    device_params: str | None,
    trigger_topic: str | None,
    durations: Sequence[float | int | None],
) -> tuple[list[str], list[str]]:
    """What an output's configuration means for its device: (refusals, warnings), for its page.

    Refusals are what the hub will refuse to send as configured; durations are the pulses its
    linked inputs would ask for.
    """
    generation = generation if generation in GENERATIONS else DEFAULT
    refusals: list[str] = []
    warnings: list[str] = []
    g3_body = generation == G3 and handler in g3.HANDLERS
    if trigger_topic:
        try:
            check_routing_key(trigger_topic, g3_body)
        except Refused as exc:
            refusals.append(str(exc))
    if handler == "snapshot":
        try:
            checks.camera_params(device_params)
        except Refused as exc:
            refusals.append(str(exc))
    if handler == "ioboard":
        for pulse in sorted({d for d in durations if d is not None}, key=float):
            try:
                checks.duration(pulse)
            except Refused as exc:
                refusals.append(str(exc))
                continue
            if g3_body and float(pulse) > g3.LONG_PULSE_SECONDS:
                warnings.append(
                    f"A G3 board pulses its relays one after another: a {pulse:g} s pulse holds "
                    "its other relays for as long."
                )
    return refusals, warnings
