"""The RabbitMQ case: fresh hubs against fresh relays, RUNS times, and issue 17's targets over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.cases.soak import soak
from bench.config import LEG_CAPS
from bench.devices import make_devices
from bench.hub import Hub, with_hub
from bench.legs import activations, measure
from bench.processes import rss_mb
from bench.report import fmt, median, value_at

# Issue 17's targets. Each run is a fresh hub then a fresh relay; the ratio is the median over the runs,
# the p99 must hold in every run (the worst is compared), RSS and start-up are the worst run's.
RUNS = 5
TARGET_RATIO = 0.7
TARGET_P99_MS = 10.0
TARGET_RSS_MB = 64.0  # after start-up (RabbitMQ, MQTT, dashboard and scheduler on)
TARGET_RSS_SOAK_MB = 72.0  # after SOAK activations
TARGET_STARTUP_S = 0.8
SOAK = 100_000  # activations the last run's hub has handled in all before its RSS is taken again


def run_hub(n: int | None, workdir: Path, mqtt_port: int, soak_to: int = 0) -> dict[str, Any]:
    # Connected to the bench's own (idle) mosquitto, so nothing published elsewhere reaches it.
    hub = Hub(workdir, mqtt_port=mqtt_port, extra_env=LEG_CAPS)

    def legs(result: dict[str, Any]) -> None:
        result["setup"] = hub.set_up(make_devices())
        result["rss_idle_mb"] = rss_mb(hub.pid)
        result.update(measure(hub.exchange, lambda: hub.pid, n, hub.recover, hub.settle))
        if soak_to:
            result["soak"] = soak(hub, soak_to, activations(result))

    return with_hub(hub, legs, ("audit.", "control.", "processor."))


def run_ratio(run: dict[str, Any]) -> float | None:
    hub_rate = value_at(run["hub"], "throughput.rate")
    base_rate = value_at(run["baseline"], "throughput.rate")
    return round(hub_rate / base_rate, 3) if hub_rate and base_rate else None


def _target(value: Any, target: float, at_least: bool = False) -> dict[str, Any]:
    met = None if value is None else (value >= target if at_least else value <= target)
    return {"value": value, "target": f"{'>=' if at_least else '<='} {target:g}", "met": met}


def evaluate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Targets 1-4 over the runs: median ratio, worst p99, worst RSS, worst start-up."""

    def worst(path: str) -> Any:
        values = [v for r in runs if (v := value_at(r["hub"], path)) is not None]
        return max(values) if values else None

    ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
    ratio = median(ratios)
    soaked = [r["hub"]["soak"] for r in runs if "soak" in r["hub"]]
    return {
        "throughput_ratio": _target(None if ratio is None else round(ratio, 3), TARGET_RATIO, at_least=True),
        "p99_ms_at_200_per_s": _target(worst("latency.p99_ms"), TARGET_P99_MS),
        "rss_mb": _target(worst("rss_startup_mb"), TARGET_RSS_MB),
        "rss_soak_mb": _target(soaked[-1]["rss_after_mb"] if soaked else None, TARGET_RSS_SOAK_MB),
        "startup_s": _target(worst("startup_s"), TARGET_STARTUP_S),
    }


def runs_report(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run: the ratio, the latency percentiles, RSS and start-up.

    RSS is read after start-up (the dashboard's app not yet built: only the health check has been
    asked), after the set-up (through the JSON API, which builds it) and at the end of the run.
    """
    lines = [
        f"{'run':>4}{'hub msg/s':>11}{'relay msg/s':>13}{'ratio':>7}{'p50 ms':>9}{'p99 ms':>10}{'max ms':>10}"
        f"{'RSS up MB':>11}{'RSS set-up':>12}{'RSS end MB':>12}{'start s':>9}{'load':>6}"
    ]
    for i, r in enumerate(runs, 1):
        hub, base = r["hub"], r["baseline"]
        lines.append(
            f"{i:>4}{fmt(value_at(hub, 'throughput.rate')):>11}{fmt(value_at(base, 'throughput.rate')):>13}"
            f"{fmt(r['ratio'], '', 3):>7}{fmt(value_at(hub, 'latency.p50_ms'), '', 2):>9}"
            f"{fmt(value_at(hub, 'latency.p99_ms'), '', 2):>10}"
            f"{fmt(value_at(hub, 'latency.max_ms'), '', 2):>10}"
            f"{fmt(hub.get('rss_startup_mb')):>11}{fmt(hub.get('rss_idle_mb')):>12}{fmt(hub.get('rss_mb')):>12}"
            f"{fmt(hub.get('startup_s'), '', 2):>9}{r['loadavg']:>6}"
        )
    return lines


def summary(results: dict[str, Any]) -> str:
    targets = results["targets"]
    met = sum(1 for t in targets.values() if t["met"])
    missed = [k for k, t in targets.items() if not t["met"]]
    return (
        f"SUMMARY: {met}/{len(targets)} targets met"
        + (f" (missed: {', '.join(missed)})" if missed else "")
        + f"; {len(results['runs'])} runs:"
        f" median {fmt(targets['throughput_ratio']['value'], '', 3)}x baseline,"
        f" worst p99 {fmt(targets['p99_ms_at_200_per_s']['value'], ' ms', 2)},"
        f" RSS after start-up {fmt(targets['rss_mb']['value'], ' MB')},"
        f" after the soak {fmt(targets['rss_soak_mb']['value'], ' MB')},"
        f" start-up {fmt(targets['startup_s']['value'], ' s', 2)}"
    )
