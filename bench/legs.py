"""The legs every side (hub or baseline relay) runs: warm-up, throughput and latency, and their figures."""

from __future__ import annotations

import contextlib
import math
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import Any

from bench.clients import ControlConsumer, Pacing, Publisher
from bench.config import (
    ATTEMPTS,
    BROKER_FAILURES,
    LATENCY_RATE,
    LATENCY_SECONDS,
    MAX_N,
    MIN_N,
    TARGET_LEG_SECONDS,
    WARMUP,
    BenchError,
)
from bench.devices import make_devices
from bench.processes import cpu_seconds


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list, rounded to 0.01."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(p / 100 * len(sorted_values))))
    return round(sorted_values[rank - 1], 2)


def tally(arrivals: list[tuple[float, str]], expected: Counter[str]) -> tuple[int, int]:
    """(missing, extra) control messages per output key against what was expected."""
    got = Counter(key for _, key in arrivals)
    missing = sum(max(0, n - got[k]) for k, n in expected.items())
    extra = sum(max(0, n - expected.get(k, 0)) for k, n in got.items())
    return missing, extra


def run_warmup(exchange: str, publisher: Pacing) -> dict[str, Any]:
    """Two activations per input; every one must come back once before anything is measured."""
    consumer = ControlConsumer(exchange)
    consumer.start_and_wait()
    try:
        first, end = publisher.burst(WARMUP)
        consumer.wait_for(WARMUP, end)
    finally:
        consumer.stop()
    expected = Counter(publisher.output_for(i) for i in range(WARMUP))
    missing, extra = tally(consumer.arrivals, expected)
    if missing == WARMUP:
        raise BenchError(f"none of the {WARMUP} warm-up activations produced a control message")
    elapsed = max(t for t, _ in consumer.arrivals) - first
    return {
        "sent": WARMUP,
        "received": len(consumer.arrivals),
        "missing": missing,
        "extra": extra,
        "rate": round(min(len(consumer.arrivals), WARMUP) / elapsed, 1) if elapsed > 0 else None,
    }


def choose_n(warmup_rate: float | None, min_n: int = MIN_N) -> int:
    """N for a throughput leg of about TARGET_LEG_SECONDS at the warm-up rate, in steps of 1000."""
    if not warmup_rate:
        return min_n
    return int(max(min_n, min(MAX_N, round(warmup_rate * TARGET_LEG_SECONDS, -3))))


def run_throughput(
    exchange: str, publisher: Pacing, n: int, cpu: Callable[[], float | None]
) -> dict[str, Any]:
    consumer = ControlConsumer(exchange)
    consumer.start_and_wait()
    cpu_before = cpu()
    try:
        first, end = publisher.burst(n)
        consumer.wait_for(n, end)
    finally:
        consumer.stop()
    cpu_after = cpu()
    cpu_used = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    arrivals = consumer.arrivals
    expected = Counter(publisher.output_for(i) for i in range(n))
    missing, extra = tally(arrivals, expected)
    counted = min(len(arrivals), n)
    last = max((t for t, _ in arrivals), default=first)
    elapsed = last - first
    return {
        "n": n,
        "received": len(arrivals),
        "missing": missing,
        "extra": extra,
        "undecodable": consumer.undecodable,
        "publish_s": round(end - first, 3),
        "publish_rate": round(n / (end - first), 1),
        "elapsed_s": round(elapsed, 3),
        "rate": round(counted / elapsed, 1) if elapsed > 0 else None,
        "drain_after_publish_s": round(last - end, 3),
        "cpu_s": None if cpu_used is None else round(cpu_used, 2),
        "cpu_ms_per_msg": None if cpu_used is None else round(1000 * cpu_used / n, 3),
        **publisher.notes(),
    }


def run_latency(exchange: str, publisher: Pacing) -> dict[str, Any]:
    count = int(LATENCY_RATE * LATENCY_SECONDS)
    consumer = ControlConsumer(exchange)
    consumer.start_and_wait()
    try:
        sent, max_lag = publisher.paced(LATENCY_RATE, count)
        consumer.wait_for(count, sent[-1][0])
    finally:
        consumer.stop()
    return {"rate": LATENCY_RATE, "max_publish_lag_ms": round(max_lag * 1000, 2)} | latency_stats(
        sent, consumer.arrivals
    )


def latency_stats(sent: list[tuple[float, str]], arrivals: list[tuple[float, str]]) -> dict[str, Any]:
    """Match each control message to the oldest activation of its output still waiting; percentiles."""
    pending: dict[str, deque[float]] = defaultdict(deque)
    for t, key in sent:
        pending[key].append(t)
    latencies: list[float] = []
    extra = 0
    for t, key in sorted(arrivals):
        queue = pending.get(key)
        if queue:
            latencies.append((t - queue.popleft()) * 1000)
        else:
            extra += 1
    missing = sum(len(q) for q in pending.values())
    latencies.sort()
    span = sent[-1][0] - sent[0][0] if sent else 0
    return {
        "sent": len(sent),
        "achieved_rate": round((len(sent) - 1) / span, 1) if span > 0 else None,
        "received": len(arrivals),
        "missing": missing,
        "extra": extra,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else None,
    }


def measure_once(
    exchange: str,
    pid: int,
    n: int | None,
    settle: Callable[[], Any] | None,
    new_publisher: Callable[[], Pacing] | None = None,
    min_n: int = MIN_N,
) -> dict[str, Any]:
    """Warm-up, throughput and latency legs against whatever relays `exchange` (hub or baseline)."""
    publisher = new_publisher() if new_publisher is not None else Publisher(exchange, make_devices())
    try:
        print(f"  warm-up: {WARMUP} activations ...", flush=True)
        out: dict[str, Any] = {"warmup": run_warmup(exchange, publisher)}
        if n is None:
            n = choose_n(out["warmup"]["rate"], min_n)
            print(f"  warm-up rate {out['warmup']['rate']} msg/s, so N = {n}", flush=True)
        out["n"] = n
        print(f"  throughput: {n} activations as fast as possible ...", flush=True)
        out["throughput"] = run_throughput(exchange, publisher, n, lambda: cpu_seconds(pid))
        if settle is not None:
            out["settle_s"] = settle()
        print(f"  latency: {LATENCY_RATE}/s for {LATENCY_SECONDS:.0f} s ...", flush=True)
        out["latency"] = run_latency(exchange, publisher)
    finally:
        with contextlib.suppress(*BROKER_FAILURES):
            publisher.close()
    return out


def measure(
    exchange: str,
    pid: Callable[[], int],
    n: int | None,
    recover: Callable[[], None],
    settle: Callable[[], Any] | None = None,
    new_publisher: Callable[[], Pacing] | None = None,
    min_n: int = MIN_N,
) -> dict[str, Any]:
    """measure_once, repeated (after `recover`) when the broker closes a connection mid-leg."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            out = measure_once(exchange, pid(), n, settle, new_publisher, min_n)
            out["attempts"] = attempt
            return out
        except BROKER_FAILURES as exc:
            if attempt == ATTEMPTS:
                raise BenchError(
                    f"broker connections were closed during {ATTEMPTS} attempts: {exc!r}"
                ) from exc
            print(f"  a broker connection was lost ({exc!r}); recovering and measuring again", flush=True)
            recover()
    raise AssertionError("unreachable")


def activations(result: dict[str, Any]) -> int:
    """How many activations the legs in `result` published to the hub."""
    return WARMUP + (result.get("n") or 0) + int(LATENCY_RATE * LATENCY_SECONDS) * ("latency" in result)
