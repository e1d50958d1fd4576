"""The flood case: one device floods new keys over MQTT and RabbitMQ while a legitimate one keeps firing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.clients import ControlConsumer, Publisher, connect
from bench.config import ACK_TIMEOUT, LEG_TIMEOUT, MQTT_HOST, MQTT_PUBLISH_WINDOW, MQTT_QOS, BenchError
from bench.devices import make_devices
from bench.hub import Hub, with_hub
from bench.legs import latency_stats
from bench.processes import rss_mb
from bench.report import fmt
from pylib import wire

# Flood case: one device floods FLOOD_KEYS new keys (half over MQTT, half over RabbitMQ) in small
# messages, as the report that found the stall did (1,406 messages bringing 20,000 keys), while a
# legitimate ioboard keeps firing at FLOOD_LEGIT_RATE.
FLOOD_KEYS = 20_000
FLOOD_KEYS_PER_MESSAGE = 14
FLOOD_LEGIT_RATE = 20
FLOOD_TAIL_SECONDS = 2.0  # legitimate activations go on this long after the flood's last message
# Flood messages a second per transport (--flood-rate; 0: as fast as the publishers go). 250 a
# second each is 7,000 new keys a second, far beyond any real device; at full speed on a loaded
# 2-core machine the hub falls behind for a moment and the legitimate p99 rises to ~0.5 s.
FLOOD_DEFAULT_RATE = 250.0
FLOOD_RATE = [FLOOD_DEFAULT_RATE]
TARGET_FLOOD_RSS_MB = 120.0
TARGET_FLOOD_P99_MS = 50.0


def pace(start: float, m: int, rate: float) -> None:
    """Sleep until message m is due at `rate` a second (0: no pacing)."""
    if rate > 0:
        delay = start + m / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def flood_mqtt(port: int, messages: int, done: threading.Event, stats: dict[str, Any]) -> None:
    """One adc-app board sending `messages` readings, each with FLOOD_KEYS_PER_MESSAGE new input_N keys."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(MQTT_PUBLISH_WINDOW)
    client.connect(MQTT_HOST, port)
    client.loop_start()
    try:
        last = None
        start = time.perf_counter()
        for m in range(messages):
            pace(start, m, FLOOD_RATE[0])
            body: dict[str, Any] = {"uptime": 1.0, "device_id": "esp32_F100D", "input_location": "Flood"}
            for k in range(FLOOD_KEYS_PER_MESSAGE):
                n = m * FLOOD_KEYS_PER_MESSAGE + k + 1
                body[f"input_{n}"] = {"input_label": f"In {n}", "active": k == 0, "sample_value": 1}
            last = client.publish(
                f"sensor/flood/{body['device_id']}", json.dumps(body).encode(), qos=MQTT_QOS
            )
        if last is not None:
            last.wait_for_publish(ACK_TIMEOUT)
        stats["mqtt_messages"] = messages
    finally:
        client.loop_stop()
        client.disconnect()
        done.set()


def flood_rabbit(exchange: str, messages: int, done: threading.Event, stats: dict[str, Any]) -> None:
    """One ioboard heartbeating `messages` times, each with FLOOD_KEYS_PER_MESSAGE new inputs (one active)."""
    conn = connect()
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
        start = time.perf_counter()
        for m in range(messages):
            pace(start, m, FLOOD_RATE[0])
            devices = [
                {"name": f"F{n}", "type": "Motion", "location": "Flood", "device_key": f"Flood {n}"}
                for n in range(m * FLOOD_KEYS_PER_MESSAGE, (m + 1) * FLOOD_KEYS_PER_MESSAGE)
            ]
            data = {"device_info": {"inputs": devices}, "active_devices": devices[:1]}
            channel.basic_publish(exchange, "event.notify.ioboard.flooder", wire.make_payload(data))
        stats["rabbitmq_messages"] = messages
    finally:
        if conn.is_open:
            conn.close()
        done.set()


def run_flood(workdir: Path, mqtt_port: int) -> dict[str, Any]:
    """A hub at its default caps; a legitimate ioboard fires at FLOOD_LEGIT_RATE through the flood."""
    hub = Hub(workdir, mqtt_port=mqtt_port)

    def legs(result: dict[str, Any]) -> None:
        devices = make_devices(2)
        result["setup"] = hub.set_up(devices)
        result["rss_idle_mb"] = rss_mb(hub.pid)
        per_transport = FLOOD_KEYS // 2 // FLOOD_KEYS_PER_MESSAGE
        consumer = ControlConsumer(hub.exchange)
        consumer.start_and_wait()
        publisher = Publisher(hub.exchange, devices)
        stats: dict[str, Any] = {}
        done = [threading.Event(), threading.Event()]
        flooders = [
            threading.Thread(target=flood_mqtt, args=(mqtt_port, per_transport, done[0], stats), daemon=True),
            threading.Thread(
                target=flood_rabbit, args=(hub.exchange, per_transport, done[1], stats), daemon=True
            ),
        ]
        sent: list[tuple[float, str]] = []
        rss_samples: list[float] = []
        started = time.perf_counter()
        try:
            for t in flooders:
                t.start()
            flood_end: float | None = None
            i = 0
            while flood_end is None or time.perf_counter() < flood_end + FLOOD_TAIL_SECONDS:
                due = started + i / FLOOD_LEGIT_RATE
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                sent.append((time.perf_counter(), publisher.activate(i)))
                i += 1
                if i % FLOOD_LEGIT_RATE == 0 and (rss := rss_mb(hub.pid)) is not None:
                    rss_samples.append(rss)
                if flood_end is None and all(d.is_set() for d in done):
                    flood_end = time.perf_counter()
                if time.perf_counter() - started > LEG_TIMEOUT * 5:
                    raise BenchError("the flood did not finish within five minutes")
            consumer.wait_for(len(sent), sent[-1][0])
        finally:
            publisher.close()
            consumer.stop()
            for t in flooders:
                t.join(10)
        result["flood"] = {
            "keys": FLOOD_KEYS,
            "keys_per_message": FLOOD_KEYS_PER_MESSAGE,
            "messages": stats,
            "flood_seconds": round((flood_end or time.perf_counter()) - started, 2),
            "legit_rate": FLOOD_LEGIT_RATE,
            "flood_rate_per_transport": FLOOD_RATE[0] or "as fast as possible",
            "rss_max_sampled_mb": max(rss_samples, default=None),
        } | latency_stats(sent, consumer.arrivals)
        hub.settle(60)
        listing = hub.get("/api/devices?limit=1")
        result["registered"] = listing.get("total")

    return with_hub(
        hub, legs, ("limits.", "heartbeat_filter.", "mqtt.", "processor.", "rabbitmq_source.", "presence.")
    )


def flood_report(flood: dict[str, Any] | None) -> list[str]:
    if flood is None:
        return []
    if "error" in flood:
        return ["", f"flood case: could not run: {flood['error']}"]
    f = flood["flood"]
    rate = f.get("flood_rate_per_transport")
    refused = {
        k.rsplit(".", 1)[-1]: v for k, v in flood.get("counters", {}).items() if k.startswith("limits.")
    }
    return [
        "",
        f"flood: one device sends {f['keys']:,} new keys ({f['keys_per_message']} a message, half over MQTT,"
        f" half over RabbitMQ, {rate} messages/s each) in {f['flood_seconds']:.1f} s while a legitimate"
        f" ioboard fires {f['legit_rate']}/s",
        f"  legitimate activations: {f['sent']} sent, {f['received']} control messages,"
        f" {f['missing']} missing, {f['extra']} extra",
        f"  latency p50 / p95 / p99 / max: {fmt(f['p50_ms'], ' ms', 2)} / {fmt(f['p95_ms'], ' ms', 2)}"
        f" / {fmt(f['p99_ms'], ' ms', 2)} / {fmt(f['max_ms'], ' ms', 2)}",
        f"  hub peak RSS (VmHWM) {fmt(flood.get('peak_rss_mb'), ' MB')},"
        f" after {fmt(flood.get('rss_mb'), ' MB')}",
        f"  registered after the flood: {flood.get('registered')}; refused by cap: {refused}",
    ]


def flood_targets(flood: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if flood is None or "error" in flood:
        return {}
    f = flood["flood"]
    rss, p99 = flood.get("peak_rss_mb"), f.get("p99_ms")
    return {
        "flood_peak_rss_mb": {
            "value": rss,
            "target": f"<= {TARGET_FLOOD_RSS_MB}",
            "met": None if rss is None else rss <= TARGET_FLOOD_RSS_MB,
        },
        "flood_p99_ms": {
            "value": p99,
            "target": f"<= {TARGET_FLOOD_P99_MS}",
            "met": None if p99 is None else p99 <= TARGET_FLOOD_P99_MS,
        },
        "flood_all_delivered": {
            "value": f["missing"] == 0,
            "target": "every activation",
            "met": f["missing"] == 0 and f["received"] >= f["sent"],
        },
    }
