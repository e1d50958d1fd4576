"""pylib.mqtt.Connection against a private Mosquitto: a burst is read many messages a wake-up."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from pylib import mqtt
from tests.mosquitto import Mosquitto
from tests.support import wait_for

TOPIC = "sensor/burst/board-1"


def _publish(port: int, n: int) -> None:
    """n QoS 0 messages (no in-flight window to wait on), all sent before this returns."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="burst-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(TOPIC, f'{{"n": {i}}}'.encode(), qos=0) for i in range(n)]
        for info in infos:
            info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_one_step_reads_a_waiting_burst_up_to_read_burst_then_the_rest(tmp_path: Path) -> None:
    received: list[bytes] = []
    with Mosquitto(tmp_path) as broker:
        connection = mqtt.Connection(
            mqtt.BrokerSpec("127.0.0.1", broker.port),
            "BurstTest",
            [TOPIC],
            lambda _topic, payload: received.append(payload),
            client_id="burst-test",
        )
        try:
            wait_for(lambda: connection.step(0.05) or connection.connected.is_set(), 10, what="subscribed")
            n = 2 * mqtt.READ_BURST + 40
            _publish(broker.port, n)
            time.sleep(0.5)  # the broker has written them all to this client's socket
            connection.step(0.5)
            # loop() reads one, the burst READ_BURST more: not a select() per message
            assert len(received) == 1 + mqtt.READ_BURST
            connection.step(0.5)
            assert len(received) == 2 * (1 + mqtt.READ_BURST)
            # the socket runs dry part-way through the next burst: the step returns with the rest
            connection.step(0.5)
            assert len(received) == n
            assert received == [f'{{"n": {i}}}'.encode() for i in range(n)]
            started = time.monotonic()
            connection.step(0.2)  # nothing waiting: one wait of about the timeout, no busy reading
            assert len(received) == n and time.monotonic() - started >= 0.15
        finally:
            connection.close()
