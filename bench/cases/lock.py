"""The lock case: the latency leg while another process holds the SQLite file's write lock (issue 17, item 6).

A fresh hub, warmed up; one latency leg (LATENCY_RATE a second for LATENCY_SECONDS) with the file
free, then one while a second process keeps BEGIN EXCLUSIVE on it (as an open sqlite3 shell in a
transaction would), longer than the leg. The alarms must not wait on the disk: p99 with the lock
should stay where it is without it, and everything decided meanwhile is written once it lets go.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.clients import Publisher
from bench.config import BROKER_FAILURES, LATENCY_SECONDS, LEG_CAPS, BenchError
from bench.devices import make_devices
from bench.hub import Hub, with_hub
from bench.legs import run_latency, run_warmup
from bench.report import fmt

LOCK_MARGIN_SECONDS = 5.0  # the lock outlasts the latency leg by this much
TARGET_LOCK_P99_MS = 10.0  # issue 17's p99 target, held with the file locked too

# Takes the write lock, says so, holds it, then lets go (the sqlite3 shell's BEGIN EXCLUSIVE).
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def run_lock(workdir: Path) -> dict[str, Any]:
    hub = Hub(workdir, extra_env=LEG_CAPS)

    def legs(result: dict[str, Any]) -> None:
        result["setup"] = hub.set_up(make_devices())
        publisher = Publisher(hub.exchange, make_devices())
        try:
            run_warmup(hub.exchange, publisher)
            hub.settle()
            print("  latency, the file free ...", flush=True)
            result["free"] = run_latency(hub.exchange, publisher)
            hub.settle()
            seconds = LATENCY_SECONDS + LOCK_MARGIN_SECONDS
            command = [sys.executable, "-c", LOCKER, str(hub.database), str(seconds)]
            locker = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            try:
                assert locker.stdout is not None
                if locker.stdout.readline().strip() != "locked":
                    raise BenchError("the locker could not lock the database")
                print(f"  latency, the file locked by another process for {seconds:.0f} s ...", flush=True)
                result["locked"] = run_latency(hub.exchange, publisher)
                result["lock_held_throughout"] = locker.poll() is None
            finally:
                locker.wait(seconds + 30)
            result["settle_after_lock_s"] = hub.settle(timeout=60)
        finally:
            with contextlib.suppress(*BROKER_FAILURES):
                publisher.close()

    return with_hub(hub, legs, ("audit.", "processor.", "database."))


def lock_targets(lock: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not lock or "locked" not in lock:
        return {}
    p99 = lock["locked"].get("p99_ms")
    delivered = lock["locked"].get("missing") == 0 and lock.get("lock_held_throughout")
    return {
        "lock_p99_ms": {
            "value": p99,
            "target": f"<= {TARGET_LOCK_P99_MS:g}",
            "met": None if p99 is None else p99 <= TARGET_LOCK_P99_MS,
        },
        "lock_all_delivered": {
            "value": "yes" if delivered else "no",
            "target": "all, lock held",
            "met": bool(delivered),
        },
    }


def lock_report(lock: dict[str, Any] | None) -> list[str]:
    if lock is None:
        return []
    if "error" in lock:
        return ["", f"lock case: could not run: {lock['error']}"]
    lines = ["", "latency with the SQLite file free, then locked by another process (BEGIN EXCLUSIVE):"]
    for name in ("free", "locked"):
        leg = lock.get(name, {})
        lines.append(
            f"  {name:8} p50 {fmt(leg.get('p50_ms'))} ms  p99 {fmt(leg.get('p99_ms'))} ms"
            f"  max {fmt(leg.get('max_ms'))} ms  missing {leg.get('missing')}"
        )
    lines.append(
        f"  lock held throughout the leg: {lock.get('lock_held_throughout')};"
        f" settled {fmt(lock.get('settle_after_lock_s'))} s after"
    )
    return lines
