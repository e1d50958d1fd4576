"""Inbound: what one decoded device message says; the codecs (g1, g2, g3) fill it in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Any here: device lists as decoded from the wire, checked by the generation's reader.


@dataclass
class Inbound:
    """What one device message says, whatever its generation.

    inputs and outputs are the devices it describes (maps as sent), active the input activations
    it reports (maps with device_key, device_label and optionally event_detail, sample_value,
    image, storage_url); problems are the parts that could not be read.
    """

    generation: str | None
    device: str
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    active: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
