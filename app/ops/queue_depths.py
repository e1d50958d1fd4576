"""Queue depths that live inside thread objects: the hub registers a reader for each, /metrics reads them.

A module of its own, without Prometheus, so that the hub's start-up (which registers them) does not
import prometheus_client; app.ops.hub_metrics imports it when /metrics is first served.
"""

from __future__ import annotations

from collections.abc import Callable

_depths: dict[str, Callable[[], int]] = {}


def register_depth(queue: str, read: Callable[[], int]) -> None:
    _depths[queue] = read


def clear_depths() -> None:
    _depths.clear()


def readers() -> list[tuple[str, Callable[[], int]]]:
    """(queue, read) for each registered queue, by name."""
    return sorted(_depths.items())
