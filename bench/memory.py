"""Where a hub's RSS goes, stage by stage: the tool behind target 3b's analysis in docs/performance.md.

    python -m bench.memory [N] [--bursts K]

Starts a hub as the bench does, then reads its RSS (split into Python's and C's anonymous memory,
glibc's main heap and mapped files, from /proc/<pid>/smaps) after start-up, once the JSON API has
built the dashboard's app, after the bench's set-up (100 devices registered, enabled and linked),
after a warm-up, after each of K bursts of N/K activations (at once and once the AuditWriter has
stored them all) and 5 s after the last one, when the hub has given freed memory back.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.cases.rabbitmq import LEG_CAPS
from bench.clients import Publisher
from bench.devices import make_devices
from bench.hub import Hub
from bench.legs import run_throughput, run_warmup
from bench.processes import compile_bytecode, cpu_seconds, stop_process

QUIET_SECONDS = 5.0
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def smaps_mb(pid: int) -> dict[str, float]:
    """RSS by kind of mapping: anonymous, glibc's [heap], files (libraries), and the total."""
    kb = {"anon": 0, "heap": 0, "files": 0, "other": 0}
    kind = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        mapping = _MAPPING.match(line)
        if mapping:
            name = mapping.group(1)
            kind = "anon" if not name else "heap" if name == "[heap]" else "other"
            kind = "files" if name.startswith("/") else kind
        elif line.startswith("Rss:"):
            kb[kind] += int(line.split()[1])
    out = {k: round(v / 1024, 1) for k, v in kb.items()}
    out["total"] = round(sum(kb.values()) / 1024, 1)
    return out


def show(pid: int, stage: str) -> dict[str, float]:
    mb = smaps_mb(pid)
    print(
        f"{stage:<34}{mb['total']:>7.1f} MB   anon {mb['anon']:>5.1f}  heap {mb['heap']:>5.1f}"
        f"  files {mb['files']:>5.1f}",
        flush=True,
    )
    return mb


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description="a hub's RSS, stage by stage")
    parser.add_argument("n", nargs="?", type=int, default=100_000, help="activations in all (100,000)")
    parser.add_argument("--bursts", type=int, default=4, help="bursts the activations are sent in (4)")
    args = parser.parse_args()
    compile_bytecode()  # the -OO byte code the hub reads, as the bench makes it
    hub = Hub(Path(tempfile.mkdtemp(prefix="memory-")), extra_env=LEG_CAPS)
    print(f"start-up {hub.start():.2f} s", flush=True)
    try:
        show(hub.pid, "after start-up")
        hub.authorize()  # GET /api/devices: the first request that builds the dashboard's app
        show(hub.pid, "the dashboard's app built")
        hub.set_up(make_devices())
        show(hub.pid, "after set-up (100 devices)")
        publisher = Publisher(hub.exchange, make_devices())
        run_warmup(hub.exchange, publisher)
        show(hub.pid, "after the warm-up")
        per_burst = max(1, args.n // max(1, args.bursts))
        done = 0
        while done < args.n:
            burst = min(per_burst, args.n - done)
            leg = run_throughput(hub.exchange, publisher, burst, lambda: cpu_seconds(hub.pid))
            done += burst
            show(hub.pid, f"{done:,} activations, at once")
            settled = hub.settle()
            show(hub.pid, f"  all stored ({settled} s later)")
            if leg["missing"]:
                print(f"  {leg['missing']} activations missing", flush=True)
        time.sleep(QUIET_SECONDS)
        show(hub.pid, f"{QUIET_SECONDS:.0f} s quiet")
        publisher.close()
    finally:
        if hub.proc is not None:
            stop_process(hub.proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
