"""Benchmark the hub (`python -m app`) against minimal relays: RabbitMQ in, and MQTT sensor boards in.

RabbitMQ legs: remote-monitor notify messages on the local broker -> control messages, hub vs a minimal
pika relay (these carry the targets; 5 runs of a fresh hub and a fresh relay, then a soak of the last hub
to 100,000 activations for its RSS). MQTT legs: adc-app sensor boards on a private mosquitto -> the
same control messages, hub vs a minimal paho+pika relay (information, no target).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

from bench.cases.flood import FLOOD_DEFAULT_RATE, FLOOD_RATE, flood_report, flood_targets, run_flood
from bench.cases.growth import growth_report, growth_targets, run_growth
from bench.cases.lock import lock_report, lock_targets, run_lock
from bench.cases.mqtt import mqtt_report, mqtt_summary, run_mqtt
from bench.cases.pages import pages_report, run_pages
from bench.cases.rabbitmq import RUNS, SOAK, evaluate, run_hub, run_ratio, runs_report, summary
from bench.cases.soak import soak_report
from bench.clients import connect
from bench.config import (
    BROKER_HOST,
    BROKER_PORT,
    CREATED_EXCHANGES,
    DEVICES,
    LATENCY_RATE,
    LATENCY_SECONDS,
    MAX_N,
    MIN_N,
    MQTT_MIN_N,
    REPO,
    RESULTS,
    BenchError,
)
from bench.processes import MqttBroker, compile_bytecode, delete_exchanges
from bench.relay import mqtt_relay_main, relay_main, run_baseline
from bench.report import TABLE, delivery, fmt, table, verdict


def report(results: dict[str, Any]) -> str:
    hub, base, targets = results["hub"], results["baseline"], results["targets"]
    lines = [
        "",
        f"event-processor bench {results['when']} ({results['cpus']} CPUs, load before {results['loadavg']})",
        f"throughput N = {results['n']} activations over {DEVICES} inputs;"
        f" latency at {LATENCY_RATE}/s for {LATENCY_SECONDS:.0f} s; {len(results['runs'])} run(s)",
        "",
        *runs_report(results["runs"]),
        *soak_report(results["runs"]),
        "",
        f"the median run (run {results['median_run']}) in detail:",
        *table(TABLE, hub, base),
    ]
    delivered = [
        f"run {i}: hub: {delivery(r['hub'])}; baseline: {delivery(r['baseline'])}"
        for i, r in enumerate(results["runs"], 1)
    ]
    lines += ["", "delivery:", *delivered]
    lines += ["", "targets:"]
    names = {
        "throughput_ratio": "hub/baseline throughput, median",
        "p99_ms_at_200_per_s": f"hub p99 at {LATENCY_RATE}/s, worst (ms)",
        "rss_mb": "hub RSS after start-up, worst",
        "rss_soak_mb": "hub RSS after the soak",
        "startup_s": "hub start-up, worst (s)",
        "flood_peak_rss_mb": "flood: hub peak RSS (MB)",
        "flood_p99_ms": "flood: legitimate p99 (ms)",
        "flood_all_delivered": "flood: all delivered",
    }
    for key, t in targets.items():
        value = fmt(t["value"], "", 3 if key == "throughput_ratio" else 2)  # 0.497 must not read 0.50
        lines.append(f"  {names[key]:36}{value:>10}  {t['target']:>8}  {verdict(t['met'])}")
    lines += mqtt_report(results)
    lines += flood_report(results.get("flood"))
    lines += pages_report(results.get("pages"))
    lines += ["", results["summary"]]
    return "\n".join(lines)


def guarded(name: str, run: Callable[[], dict[str, Any]], tmp: str) -> dict[str, Any]:
    """Run one case in its own folder; a failure is recorded and printed, the other figures stand."""
    print(f"{name} case ...", flush=True)
    (Path(tmp) / name).mkdir(exist_ok=True)
    try:
        return run()
    except BenchError as exc:
        print(f"bench: the {name} case could not run: {exc}", file=sys.stderr)
        return {"error": str(exc)}


def run_single(case: str) -> int:
    """`--case flood`, `pages`, `growth` or `lock`: that case alone, written to bench/results/<case>.json."""
    if case in ("flood", "lock"):
        try:
            connect().close()
        except pika.exceptions.AMQPError as exc:
            print(f"bench: cannot reach RabbitMQ on {BROKER_HOST}:{BROKER_PORT}: {exc!r}", file=sys.stderr)
            return 1
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="ep-bench-") as tmp:
            if case == "pages":
                results["pages"] = guarded("pages", lambda: run_pages(Path(tmp) / "pages"), tmp)
            elif case == "growth":
                broker = MqttBroker(Path(tmp))
                try:
                    broker.start()
                    results["growth"] = guarded(
                        "growth", lambda: run_growth(Path(tmp) / "growth", broker.port), tmp
                    )
                finally:
                    broker.stop()
            elif case == "lock":
                results["lock"] = guarded("lock", lambda: run_lock(Path(tmp) / "lock"), tmp)
            else:
                broker = MqttBroker(Path(tmp))
                try:
                    broker.start()
                    results["flood"] = guarded(
                        "flood", lambda: run_flood(Path(tmp) / "flood", broker.port), tmp
                    )
                finally:
                    broker.stop()
    finally:
        delete_exchanges(*CREATED_EXCHANGES)
    lines = flood_report(results.get("flood")) + pages_report(results.get("pages"))
    lines += growth_report(results.get("growth")) + lock_report(results.get("lock"))
    targets = flood_targets(results.get("flood")) | growth_targets(results.get("growth"))
    targets |= lock_targets(results.get("lock"))
    for key, t in targets.items():
        lines.append(f"  {key:30}{fmt(t['value'], '', 2):>10}  {t['target']:>16}  {verdict(t['met'])}")
    results["targets"] = targets
    print("\n".join(lines))
    out = RESULTS.parent / f"{case}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"(figures in {out.relative_to(REPO)})")
    failed = any("error" in v for v in results.values() if isinstance(v, dict))
    return 1 if failed or any(t["met"] is False for t in targets.values()) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--n",
        type=int,
        help=f"activations per throughput leg (default: from the hub's warm-up rate, {MIN_N}-{MAX_N})",
    )
    parser.add_argument(
        "--mqtt-n",
        type=int,
        help=f"activations per MQTT throughput leg (default: from the hub's MQTT warm-up rate,"
        f" {MQTT_MIN_N}-{MAX_N})",
    )
    parser.add_argument(
        "--case",
        choices=("all", "flood", "pages", "growth", "lock"),
        default="all",
        help="all (default): every leg, the flood and the pages; flood, pages, growth (2,000 inputs and"
        " 1,000,000 decisions: events pages and CPU per activation) or lock (the latency leg with the"
        " SQLite file locked by another process): that case alone",
    )
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=FLOOD_DEFAULT_RATE,
        help=f"flood messages a second per transport (default {FLOOD_DEFAULT_RATE:g}; 0: as fast as they go)",
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"hub + relay pairs (default {RUNS})")
    parser.add_argument(
        "--soak",
        type=int,
        default=SOAK,
        help=f"activations the last run's hub handles before RSS is taken again (default {SOAK}; 0: none)",
    )
    parser.add_argument("--no-mqtt", action="store_true", help="leave out the MQTT legs (no target)")
    parser.add_argument("--relay", metavar="EXCHANGE", help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-relay", metavar="EXCHANGE", help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.relay:
        return relay_main(args.relay)
    if args.mqtt_relay:
        return mqtt_relay_main(args.mqtt_relay, args.mqtt_port)
    FLOOD_RATE[0] = max(0.0, args.flood_rate)
    compile_bytecode()  # the hubs start as the image starts them
    if args.case != "all":
        return run_single(args.case)
    started = time.perf_counter()
    try:
        connect().close()
    except pika.exceptions.AMQPError as exc:
        print(f"bench: cannot reach RabbitMQ on {BROKER_HOST}:{BROKER_PORT}: {exc!r}", file=sys.stderr)
        return 1
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
        "n": args.n,
        "n_source": "--n" if args.n else "hub warm-up rate",
    }
    mqtt_failed = False
    try:
        with tempfile.TemporaryDirectory(prefix="ep-bench-") as tmp:
            broker = MqttBroker(Path(tmp))
            try:
                broker.start()
                runs: list[dict[str, Any]] = []
                for i in range(1, max(args.runs, 1) + 1):
                    run: dict[str, Any] = {"loadavg": Path("/proc/loadavg").read_text().split()[0]}
                    (Path(tmp) / f"hub{i}").mkdir()
                    last = i == max(args.runs, 1)
                    print(f"run {i}: hub leg ...", flush=True)
                    run["hub"] = run_hub(
                        results["n"], Path(tmp) / f"hub{i}", broker.port, args.soak if last else 0
                    )
                    results["n"] = run["hub"]["n"]  # the first run's warm-up picks N for every run
                    print(f"run {i}: baseline leg ...", flush=True)
                    run["baseline"] = run_baseline(results["n"])
                    run["ratio"] = run_ratio(run)
                    runs.append(run)
                results["runs"] = runs
                by_ratio = sorted(range(len(runs)), key=lambda k: runs[k]["ratio"] or 0.0)
                middle = by_ratio[len(runs) // 2]
                results["median_run"] = middle + 1
                results["hub"], results["baseline"] = runs[middle]["hub"], runs[middle]["baseline"]
                if not args.no_mqtt:
                    (Path(tmp) / "mqtt-hub").mkdir()
                    try:
                        results["mqtt"] = run_mqtt(args.mqtt_n, Path(tmp) / "mqtt-hub", broker)
                    except BenchError as exc:  # the RabbitMQ figures still stand
                        mqtt_failed = True
                        tail = broker.log_tail()
                        results["mqtt"] = {"error": str(exc) + (f"; mosquitto log: {tail}" if tail else "")}
                        print(
                            f"bench: the MQTT legs could not run: {results['mqtt']['error']}", file=sys.stderr
                        )
                results["flood"] = guarded("flood", lambda: run_flood(Path(tmp) / "flood", broker.port), tmp)
                results["pages"] = guarded("pages", lambda: run_pages(Path(tmp) / "pages"), tmp)
            finally:
                broker.stop()
    except BenchError as exc:
        print(f"bench: could not run: {exc}", file=sys.stderr)
        return 1
    finally:
        delete_exchanges(*CREATED_EXCHANGES)
    results["targets"] = evaluate(results["runs"]) | flood_targets(results.get("flood"))
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["summary"] = summary(results) + mqtt_summary(results)
    print(report(results))
    print(f"(run took {results['duration_s']:.0f} s; figures in {RESULTS.relative_to(REPO)})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if mqtt_failed else 0
