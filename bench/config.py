"""The bench's shared settings: broker, device count, leg sizes and timeouts, and its errors."""

from __future__ import annotations

from pathlib import Path

import pika

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.json"
ENTRY = REPO / "bench" / "bench.py"  # what the relays run: `bench.py --relay <exchange>`
BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672
ORIGIN = "bench"
HEARTBEAT_KEY = f"event.heartbeat.ioboard.{ORIGIN}"
NOTIFY_KEY = f"event.notify.ioboard.{ORIGIN}"
CONTROL_KEY = "event.control.ioboard"
DEVICES = 100
WARMUP = 5 * DEVICES  # activations sent (and checked) before anything is measured

# Without --n, N is chosen from the hub's warm-up rate so that its throughput leg takes about
# TARGET_LEG_SECONDS, within these bounds; the baseline then gets the same N.
TARGET_LEG_SECONDS = 10.0
MIN_N, MAX_N = 2000, 20000
LATENCY_RATE = 200  # activations per second
LATENCY_SECONDS = 10.0
IDLE_TIMEOUT = 10.0  # a leg gives up when no control message has arrived for this long
LEG_TIMEOUT = 60.0  # and in any case this long after its last publish
QUIET_SECONDS = 0.5  # listened for after the last expected message, to catch duplicates
HEALTH_POLL = 0.02
# How the hub runs, as `make run` and the image (Dockerfile ENV) start it: python -OO.
HUB_PYTHON_ENV = {"PYTHONOPTIMIZE": "2"}
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# MQTT legs (wire-format.md §5.3): adc-app boards with 4 inputs each on a private mosquitto.
MOSQUITTO = "/usr/sbin/mosquitto"
MQTT_HOST = "127.0.0.1"
MQTT_PLACE = "bench"  # topic sensor/<place>/<device_id>; the hub's origin is sensor/<place>
SENSOR_LABELS = ("Back Door", "Motion Detector", "Side Window", "Smoke Alarm")  # input_1 .. input_4
MQTT_BOARDS = DEVICES // len(SENSOR_LABELS)
MQTT_QOS = 1  # what adc-app publishes with
MQTT_PUBLISH_WINDOW = 20  # the bench publisher's in-flight window: paho's default (and the hub's own)
MQTT_MIN_N = 1000  # the MQTT N is chosen from the hub's MQTT warm-up rate, as N is for RabbitMQ
ACK_TIMEOUT = 60.0  # mosquitto acknowledges every publish well within this

# The throughput and latency legs' single ioboard carries all DEVICES inputs and outputs, above the
# default per-device registration caps (64 inputs, 16 outputs); the flood case keeps the defaults.
LEG_CAPS = {"MAX_INPUTS_PER_DEVICE": str(DEVICES), "MAX_OUTPUTS_PER_DEVICE": str(DEVICES)}


class BenchError(RuntimeError):
    """The benchmark could not run (as opposed to a target being missed)."""


class Disrupted(RuntimeError):
    """A bench connection to the broker was closed mid-leg (e.g. a test elsewhere closed them all)."""


BROKER_FAILURES = (pika.exceptions.AMQPError, OSError, Disrupted)

# Every hub's and relay's exchange, deleted (with its _control twin) at the end of the run.
CREATED_EXCHANGES: list[str] = []
ATTEMPTS = 3  # a set of legs disrupted by the broker closing connections is repeated, this many times at most
