"""The soak case: the last run's hub handles SOAK activations in all, then its RSS is taken again."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from bench.clients import Publisher
from bench.config import BROKER_FAILURES
from bench.devices import make_devices
from bench.hub import Hub
from bench.legs import run_throughput
from bench.processes import cpu_seconds, rss_mb
from bench.report import fmt

QUIET_SECONDS = 5.0  # after the soak, before RSS is read again (information only)


class SoakDone(Exception):
    """Nothing left to publish in the soak."""


def soak(hub: Hub, total: int, done: int) -> dict[str, Any]:
    """Bursts until the hub has handled `total` activations in all; RSS before and after."""
    out: dict[str, Any] = {"activations": total, "rss_before_mb": rss_mb(hub.pid)}
    left = max(total - done, 0)
    print(f"  soak: {left} more activations (to {total} in all) ...", flush=True)
    started = time.perf_counter()
    try:
        if not left:  # the legs alone reached `total`
            raise SoakDone
        publisher = Publisher(hub.exchange, make_devices())
        try:
            leg = run_throughput(hub.exchange, publisher, left, lambda: cpu_seconds(hub.pid))
        finally:
            with contextlib.suppress(*BROKER_FAILURES):
                publisher.close()
    except SoakDone:
        leg = {"rate": None, "missing": 0, "extra": 0}
    except BROKER_FAILURES as exc:  # the activations the hub did handle still count for its RSS
        print(f"  soak disrupted by the broker ({exc!r}); RSS taken anyway", flush=True)
        hub.recover()
        leg = {"rate": None, "missing": None, "extra": None}
        out["error"] = repr(exc)
    out.update(
        seconds=round(time.perf_counter() - started, 1),
        rate=leg["rate"],
        missing=leg["missing"],
        extra=leg["extra"],
        settle_s=hub.settle(),
        rss_after_mb=rss_mb(hub.pid),
        peak_rss_mb=rss_mb(hub.pid, "VmHWM"),
    )
    # Information, not the target: the hub gives freed memory back (malloc_trim) once it has been
    # quiet for a 2 s check after a burst; the target reads RSS at once, above.
    time.sleep(QUIET_SECONDS)
    out["rss_quiet_mb"] = rss_mb(hub.pid)
    return out


def soak_report(runs: list[dict[str, Any]]) -> list[str]:
    soaked = [r["hub"]["soak"] for r in runs if "soak" in r["hub"]]
    if not soaked:
        return []
    s = soaked[-1]
    return [
        "",
        f"soak (last run's hub): {s['activations']:,} activations in all;"
        f" RSS {fmt(s['rss_before_mb'], ' MB')} before the soak burst,"
        f" {fmt(s['rss_after_mb'], ' MB')} after (peak {fmt(s['peak_rss_mb'], ' MB')};"
        f" {fmt(s.get('rss_quiet_mb'), ' MB')} after {QUIET_SECONDS:.0f} s quiet);"
        f" {fmt(s['rate'])} msg/s, {s['missing']} missing, {s['extra']} extra"
        + (f" (disrupted: {s['error']})" if "error" in s else ""),
    ]
