"""The MQTT case: a hub fed by adc-app sensor boards on the private mosquitto, against the MQTT relay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.clients import mqtt_publisher
from bench.config import (
    DEVICES,
    LATENCY_RATE,
    LATENCY_SECONDS,
    LEG_CAPS,
    MQTT_BOARDS,
    MQTT_MIN_N,
    MQTT_PLACE,
    MQTT_PUBLISH_WINDOW,
    MQTT_QOS,
    SENSOR_LABELS,
)
from bench.devices import make_sensor_inputs
from bench.hub import Hub, with_hub
from bench.legs import measure
from bench.processes import MqttBroker, rss_mb
from bench.relay import run_baseline
from bench.report import TABLE, delivery, fmt, table, value_at


def run_mqtt_hub(n: int | None, workdir: Path, mqtt_port: int) -> dict[str, Any]:
    """A second hub, fresh database and all, with 100 sensor inputs on MQTT."""
    hub = Hub(workdir, mqtt_port=mqtt_port, extra_env=LEG_CAPS)

    def legs(result: dict[str, Any]) -> None:
        result["setup"] = hub.set_up_mqtt(make_sensor_inputs())
        result["rss_idle_mb"] = rss_mb(hub.pid)
        result.update(
            measure(
                hub.exchange,
                lambda: hub.pid,
                n,
                hub.recover,
                hub.settle,
                mqtt_publisher(mqtt_port),
                MQTT_MIN_N,
            )
        )

    return with_hub(hub, legs, ("audit.", "control.", "processor.", "mqtt.", "heartbeat_filter."))


def run_mqtt(n: int | None, workdir: Path, broker: MqttBroker) -> dict[str, Any]:
    """The MQTT legs: a hub of its own, then the MQTT relay with the same N."""
    result: dict[str, Any] = {
        "broker": {
            "port": broker.port,
            "config": "listener 127.0.0.1, max_queued_messages 0 (no limit), persistence false",
        },
        "boards": MQTT_BOARDS,
        "inputs_per_board": len(SENSOR_LABELS),
        "topic": f"sensor/{MQTT_PLACE}/<device_id>",
        "qos": MQTT_QOS,
        "publish_window": MQTT_PUBLISH_WINDOW,
        "n": n,
        "n_source": "--mqtt-n" if n else "hub MQTT warm-up rate",
    }
    print("MQTT hub leg ...", flush=True)
    result["hub"] = run_mqtt_hub(n, workdir, broker.port)
    result["n"] = result["hub"]["n"]
    print("MQTT baseline leg ...", flush=True)
    result["baseline"] = run_baseline(result["n"], broker.port)
    hub_rate = value_at(result["hub"], "throughput.rate")
    base_rate = value_at(result["baseline"], "throughput.rate")
    result["throughput_ratio"] = round(hub_rate / base_rate, 3) if hub_rate and base_rate else None
    return result


# The MQTT table: the same rows, except that publish() only queues in paho, so when mosquitto had
# acknowledged the whole burst is shown too.
MQTT_TABLE = [
    *TABLE[:2],
    ("  paho publish() calls managed", ("throughput.publish_rate",), " msg/s", 1),  # queued, not sent
    ("  mosquitto acked them all after", ("throughput.all_acked_s",), " s", 2),
    *TABLE[3:],
]


def mqtt_report(results: dict[str, Any]) -> list[str]:
    mq = results.get("mqtt")
    if mq is None:
        return []
    if "error" in mq:
        return ["", f"MQTT legs: could not run: {mq['error']}"]
    hub, base = mq["hub"], mq["baseline"]
    return [
        "",
        f"MQTT: {mq['boards']} adc-app boards x {mq['inputs_per_board']} inputs on {mq['topic']},"
        f" QoS {mq['qos']}, one paho publisher (window {mq['publish_window']}),"
        f" private mosquitto :{mq['broker']['port']}",
        f"throughput N = {mq['n']} activations (one active input each, cycling over {DEVICES} inputs);"
        f" latency at {LATENCY_RATE}/s for {LATENCY_SECONDS:.0f} s",
        "",
        *table(MQTT_TABLE, hub, base),
        "",
        f"delivery, hub (MQTT): {delivery(hub)}",
        f"delivery, baseline (MQTT): {delivery(base)}",
        f"MQTT hub/baseline throughput {fmt(mq['throughput_ratio'], '', 3)} (information: no target)",
    ]


def mqtt_summary(results: dict[str, Any]) -> str:
    """Appended to the summary line: the MQTT figures, which have no target."""
    mq = results.get("mqtt")
    if mq is None:
        return ""
    if "error" in mq:
        return "; MQTT: could not run"
    return (
        f"; MQTT (no target): hub {fmt(value_at(mq['hub'], 'throughput.rate'))} msg/s"
        f" = {fmt(mq['throughput_ratio'], '', 3)}x MQTT baseline,"
        f" p99 {fmt(value_at(mq['hub'], 'latency.p99_ms'), ' ms', 2)}"
    )
