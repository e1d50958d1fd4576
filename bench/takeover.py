"""Take-over bench: two real hubs on one PostgreSQL database and RabbitMQ; the active one is killed 5 times.

A device fires steadily (RATE activations a second). Each round SIGKILLs whichever hub is active,
measures how long until the other holds the lease (its /api/health says active) and until the
first activation published after the kill comes out as a control message, then restarts the killed
hub, which must come back as the standby. At the end every activation is accounted for: fired
once, fired more than once (the at-least-once window), recorded stale, or missing (must be none).
A last round SIGSTOPs the active hub instead (a hub that hangs or loses its network: nothing closes
its sockets), so the database and the broker must notice the silence; it is SIGCONTed once the
other hub has taken over, must exit by itself (fenced), and is restarted as the standby.
The hubs run with the default HA_CHECK_SECONDS and HA_FENCE_SECONDS.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ is on sys.path, the repo root is not
    sys.path.insert(0, str(REPO))

from tests import hapair  # noqa: E402

RESULTS = REPO / "bench" / "results" / "takeover.json"
RATE = 20.0
SETTLE = 3.0  # seconds of steady firing before each kill, and after each take-over


def first_after(
    collector: hapair.Collector, firing: hapair.Firing, killed_at: float, timeout: float = 30
) -> float:
    """Seconds from the kill until a control message for an activation published after it arrives."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        after = {d for d, at in firing.sent if at > killed_at}
        hits = [at for d, at in collector.received if d in after]
        if hits:
            return min(hits) - killed_at
        time.sleep(0.01)
    raise RuntimeError("no activation published after the kill was fired")


def hang_round(hubs: list[hapair.HubProcess], collector: hapair.Collector, firing: hapair.Firing) -> dict:
    active = next(h for h in hubs if h.role() == "active")
    standby = next(h for h in hubs if h is not active)
    assert active.proc is not None
    stopped_at = time.time()
    active.proc.send_signal(signal.SIGSTOP)
    try:
        lease = standby.wait_role("active", timeout=30, poll=0.01)
        first = first_after(collector, firing, stopped_at)
    finally:
        active.proc.send_signal(signal.SIGCONT)
    code = active.proc.wait(30)
    active.start()
    active.wait_role("standby", timeout=60)
    return {
        "hung": active.node,
        "took_over": standby.node,
        "lease_s": lease,
        "first_trigger_s": first,
        "exit_code": code,
    }


def run(kills: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="takeover-"))
    exchange = f"takeover_{uuid.uuid4().hex[:8]}"
    rounds = []
    with hapair.pg_database() as url:
        hapair.prepare(url)
        hubs = [hapair.HubProcess(n, url, exchange, workdir) for n in ("pi-a", "pi-b")]
        collector = hapair.Collector(exchange)
        collector.start()
        collector.ready.wait(10)
        firing = hapair.Firing(exchange, RATE)
        try:
            hubs[0].start()
            hubs[0].wait_role("active", timeout=60)
            hubs[1].start()
            hubs[1].wait_role("standby", timeout=60)
            firing.start()
            time.sleep(SETTLE)
            for n in range(1, kills + 1):
                active = next(h for h in hubs if h.role() == "active")
                standby = next(h for h in hubs if h is not active)
                killed_at = time.time()
                active.kill()
                lease = standby.wait_role("active", timeout=30, poll=0.01)
                firing_resumed = first_after(collector, firing, killed_at)
                active.start()
                rejoined = active.wait_role("standby", timeout=60)
                rounds.append(
                    {"round": n, "killed": active.node, "lease_s": lease, "first_trigger_s": firing_resumed}
                )
                print(
                    f"kill {n}: {active.node} SIGKILLed; {standby.node} held the lease after {lease:.2f} s,"
                    f" fired the first new activation after {firing_resumed:.2f} s;"
                    f" {active.node} back as standby in {rejoined:.1f} s",
                    flush=True,
                )
                time.sleep(SETTLE)
            hung = hang_round(hubs, collector, firing)
            print(
                f"hang: {hung['hung']} SIGSTOPped; {hung['took_over']} held the lease after"
                f" {hung['lease_s']:.2f} s, fired the first new activation after"
                f" {hung['first_trigger_s']:.2f} s;"
                f" the hung hub exited {hung['exit_code']} when woken",
                flush=True,
            )
            time.sleep(SETTLE)
            firing.stop_event.set()
            firing.join(10)
            sent = [d for d, _ in firing.sent]
            deadline = time.time() + 30
            while time.time() < deadline and not set(sent) <= {d for d, _ in collector.received}:
                time.sleep(0.1)
            time.sleep(1.0)
            result = hapair.account(sent, [d for d, _ in collector.received], hapair.decisions(url))
        finally:
            firing.stop_event.set()
            collector.stop_event.set()
            for hub in hubs:
                hub.stop()
            hapair.delete_queue(f"{exchange}_hub")
    lease = [r["lease_s"] for r in rounds]
    report_hang = hung
    first = [r["first_trigger_s"] for r in rounds]
    return {
        "rate_per_s": RATE,
        "rounds": rounds,
        "lease_s": {"min": min(lease), "median": statistics.median(lease), "max": max(lease)},
        "first_trigger_s": {"min": min(first), "median": statistics.median(first), "max": max(first)},
        "hang": report_hang,
        "activations": {
            "sent": result["sent"],
            "fired_once": result["fired_once"],
            "fired_more_than_once": len(result["fired_more"]),
            "stale": len(result["stale"]),
            "missing": len(result["missing"]),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    report = run(args.kills)
    a, lease, first = report["activations"], report["lease_s"], report["first_trigger_s"]
    span = "{min:.2f} / {median:.2f} / {max:.2f} s"
    print(
        f"take-over over {len(report['rounds'])} kills (min / median / max): lease {span.format(**lease)};"
        f" first trigger {span.format(**first)}"
    )
    print(
        f"activations: {a['sent']} sent, {a['fired_once']} fired once,"
        f" {a['fired_more_than_once']} fired twice, {a['stale']} recorded stale, {a['missing']} missing"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    ok = a["missing"] == 0 and lease["max"] < 10 and report["hang"]["first_trigger_s"] < 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
