"""Formatting the figures: the hub-vs-baseline table, delivery lines and verdicts."""

from __future__ import annotations

from typing import Any

from bench.config import LATENCY_RATE


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def median(values: list[float]) -> float | None:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def value_at(side: dict[str, Any], path: str) -> Any:
    value: Any = side
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


TABLE: list[tuple[str, tuple[str, ...], str, int]] = [
    ("start-up (healthy / READY)", ("startup_s",), " s", 2),
    ("throughput", ("throughput.rate",), " msg/s", 1),
    ("  publisher alone managed", ("throughput.publish_rate",), " msg/s", 1),
    ("  first publish -> last control", ("throughput.elapsed_s",), " s", 2),
    ("  received/missing/extra", ("throughput.received", "throughput.missing", "throughput.extra"), "", 0),
    ("  CPU time per activation", ("throughput.cpu_ms_per_msg",), " ms", 3),
    ("  audit backlog stored after", ("settle_s",), " s", 2),
    (f"latency p50 at {LATENCY_RATE}/s", ("latency.p50_ms",), " ms", 2),
    ("latency p95", ("latency.p95_ms",), " ms", 2),
    ("latency p99", ("latency.p99_ms",), " ms", 2),
    ("latency max", ("latency.max_ms",), " ms", 2),
    ("  publish rate achieved", ("latency.achieved_rate",), " /s", 1),
    ("  received/missing/extra", ("latency.received", "latency.missing", "latency.extra"), "", 0),
    ("RSS after start-up", ("rss_startup_mb",), " MB", 1),
    ("RSS after the run", ("rss_mb",), " MB", 1),
    ("peak RSS (VmHWM)", ("peak_rss_mb",), " MB", 1),
    ("SIGTERM -> exit", ("stop.seconds",), " s", 2),
    ("exit code", ("stop.exit_code",), "", 0),
    ("attempts (broker disruptions)", ("attempts",), "", 0),
]


def table(
    rows: list[tuple[str, tuple[str, ...], str, int]], hub: dict[str, Any], base: dict[str, Any]
) -> list[str]:
    lines = [f"{'':32}{'hub':>16}{'baseline':>16}"]
    for label, paths, unit, digits in rows:
        cells = [
            "/".join(fmt(value_at(side, p), "" if len(paths) > 1 else unit, digits) for p in paths)
            for side in (hub, base)
        ]
        lines.append(f"{label:32}{cells[0]:>16}{cells[1]:>16}")
    return lines


def delivery(side: dict[str, Any]) -> str:
    """'exactly once' or what went wrong, over the throughput and latency legs."""
    missing = sum(value_at(side, f"{leg}.missing") or 0 for leg in ("throughput", "latency"))
    extra = sum(value_at(side, f"{leg}.extra") or 0 for leg in ("throughput", "latency"))
    if not missing and not extra:
        return "every activation produced exactly one control message"
    return f"{missing} activations produced no control message, {extra} control messages were extra"
