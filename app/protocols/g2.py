"""G2 codec (remote-monitor 93d37e2, Dec 2023): the flat root layout; it consumes G1's control message.

Heartbeat `{timestamp, statistics, device_info, inputs, outputs}`; notify `{timestamp, samples,
active_devices, outputs_triggered}`, where `outputs_triggered` repeats the active inputs and is
never read, so an activation never fires twice (wire-format-generations.md §3.2).
"""

from __future__ import annotations

from typing import Any

from app.protocols import g1
from app.protocols.inbound import Inbound


def read(data: dict[str, Any], inbound: Inbound) -> None:
    g1.device_info(data, inbound)
    if "device_info" not in data:
        # the root lists repeat device_info; read them only when it is missing
        inbound.inputs += g1.device_list(data.get("inputs"), "inputs", inbound.problems)
        inbound.outputs += g1.device_list(data.get("outputs"), "outputs", inbound.problems)
    g1.active_devices(data, inbound)
