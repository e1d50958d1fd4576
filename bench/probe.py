"""One hub, one throughput leg, optionally under py-spy: the quick A/B probe used beside the bench.

    python -m bench.probe [N] [--spy OUT.raw] [--gil]

Starts a hub as the bench does (its own exchange, database and port), sets up the bench's
devices, warms up, then times N activations (default 20,000), printing start-up, RSS, the rate,
CPU per activation and how idle the machine was during the leg. With --spy, py-spy records the
leg in raw (collapsed stack) format; --gil samples only the thread holding the GIL.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cases.rabbitmq import LEG_CAPS
from bench.clients import Publisher
from bench.devices import make_devices
from bench.hub import Hub
from bench.legs import run_throughput, run_warmup
from bench.processes import compile_bytecode, cpu_seconds, rss_mb, stop_process


def machine_ticks() -> tuple[int, int]:
    """(all, idle + iowait) jiffies since boot, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values), values[3] + values[4]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description="one hub, one throughput leg")
    parser.add_argument("n", nargs="?", type=int, default=20_000)
    parser.add_argument("--spy", help="write py-spy's raw samples of the leg here")
    parser.add_argument("--gil", action="store_true", help="py-spy: only the thread holding the GIL")
    args = parser.parse_args()
    compile_bytecode()  # the -OO byte code the hub reads, as the bench makes it
    hub = Hub(Path(tempfile.mkdtemp(prefix="probe-")), extra_env=LEG_CAPS)
    print(f"start-up {hub.start():.3f} s, RSS {rss_mb(hub.pid):.1f} MB", flush=True)
    spy = None
    try:
        hub.authorize()
        hub.set_up(make_devices())
        print(f"RSS after set-up {rss_mb(hub.pid):.1f} MB", flush=True)
        publisher = Publisher(hub.exchange, make_devices())
        print(f"warm-up {run_warmup(hub.exchange, publisher)['rate']} msg/s", flush=True)
        if args.spy:
            py_spy = Path(sys.executable).with_name("py-spy")
            cmd = [str(py_spy), "record", "--pid", str(hub.pid), "--rate", "250", "--format", "raw"]
            cmd += ["--threads", "--nonblocking", *(["--gil"] if args.gil else []), "-o", args.spy]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        before = machine_ticks()
        leg = run_throughput(hub.exchange, publisher, args.n, lambda: cpu_seconds(hub.pid))
        after = machine_ticks()
        idle = 100 * (after[1] - before[1]) / max(1, after[0] - before[0])
        print(
            f"{leg['rate']} msg/s, CPU {leg['cpu_ms_per_msg']} ms per activation, machine idle {idle:.0f} %,"
            f" missing {leg['missing']}, RSS {rss_mb(hub.pid):.1f} MB, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        publisher.close()
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        if hub.proc is not None:
            stop_process(hub.proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
