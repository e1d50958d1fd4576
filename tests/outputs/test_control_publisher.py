"""ControlPublisher against the local RabbitMQ: exact bodies with a TTL, never late, never lost silently."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import msgpack
import pika
import pytest
import zmq

from app.core import channels, health
from app.core.settings import Settings
from app.outputs.control import ControlPublisher
from pylib import inproc, threads, wire
from tests.sources.test_rabbit_source import BROKER, Forwarder, close_connection_named
from tests.support import free_port, wait_for

IOBOARD_KEY = "event.control.ioboard"


class DeviceConsumer:
    """remote-monitor's side: declares the control exchange with no arguments and binds its key."""

    def __init__(self, exchange: str, routing_key: str = IOBOARD_KEY) -> None:
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(*BROKER))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(exchange=exchange, exchange_type="direct")
        self.queue = self.channel.queue_declare(queue="", exclusive=True).method.queue
        self.channel.queue_bind(queue=self.queue, exchange=exchange, routing_key=routing_key)

    def get(self, timeout: float = 10.0) -> tuple[pika.spec.BasicProperties, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is not None:
                return props, body
            self.connection.sleep(0.02)
        pytest.fail("no control message arrived")

    def empty(self) -> bool:
        method, _, _ = self.channel.basic_get(self.queue, auto_ack=True)
        return method is None

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def consumer_for() -> Iterator[Callable[[str], DeviceConsumer]]:
    made: list[DeviceConsumer] = []

    def make(exchange: str) -> DeviceConsumer:
        consumer = DeviceConsumer(exchange)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


@pytest.fixture
def push() -> Iterator[zmq.Socket]:
    """The EventProcessor end (connects; the publisher binds)."""
    sock = inproc.connect_push(channels.CONTROL_PUBLISHER)
    yield sock
    sock.close(linger=0)


def trigger(ttl: float = 90.0, output_key: str = "Hallway Buzzer") -> channels.ControlMessage:
    return channels.ControlMessage(
        routing_key=IOBOARD_KEY,
        body=wire.make_payload((output_key, None)),
        expires_at=time.time() + ttl,
        output_key=output_key,
    )


def counter(name: str) -> int:
    return health.counters().get(name, 0)


def start(settings: Settings, **kwargs: int) -> ControlPublisher:
    publisher = ControlPublisher(settings, **kwargs)
    publisher.start()
    wait_for(publisher.connected.is_set, what="ControlPublisher to connect")
    return publisher


def test_publishes_the_exact_body_with_an_expiration(make_settings, consumer_for, push) -> None:
    settings = make_settings()
    consumer = consumer_for(settings.control_exchange)
    start(settings)
    msg = trigger(ttl=90)
    inproc.send(push, msg)

    props, body = consumer.get()
    assert body == msg.body
    assert msgpack.unpackb(body)["data"] == ["Hallway Buzzer", None]
    assert props.expiration is not None
    assert 0 < int(props.expiration) <= 90_000
    # nothing else: the real consumers read only the body
    assert props.content_type is None and props.delivery_mode is None and props.headers is None
    wait_for(lambda: counter("control.published") == 1, what="published counter")
    assert health.components()["control_publisher"]["state"] == "connected"


def test_expired_message_is_never_published_and_counted_lost(make_settings, consumer_for, push) -> None:
    settings = make_settings()
    consumer = consumer_for(settings.control_exchange)
    start(settings)
    inproc.send(push, trigger(ttl=-1, output_key="Stale Buzzer"))
    fresh = trigger(output_key="Fresh Buzzer")
    inproc.send(push, fresh)

    _, body = consumer.get()
    assert body == fresh.body  # the stale one, sent first, would have arrived first
    assert consumer.empty()
    assert counter("control.lost") == 1
    assert counter("control.published") == 1


def test_unroutable_message_is_counted(make_settings, consumer_for, push) -> None:
    settings = make_settings()
    consumer = consumer_for(settings.control_exchange)
    publisher = start(settings)
    nobody = channels.ControlMessage("event.control.nobody", b"\x80", time.time() + 30, "Nobody")
    inproc.send(push, nobody)
    inproc.send(push, trigger())

    consumer.get()
    wait_for(lambda: counter("control.unroutable") == 1, what="unroutable counter")
    assert publisher.is_alive() and publisher.connected.is_set()


def test_idle_connection_closed_by_broker_then_message_delivered(make_settings, consumer_for, push) -> None:
    settings = make_settings()
    consumer = consumer_for(settings.control_exchange)
    publisher = start(settings)

    close_connection_named(f"{settings.app_name} ControlPublisher {settings.control_exchange}")
    msg = trigger()
    inproc.send(push, msg)  # at once, before the publisher may have noticed the close

    _, body = consumer.get()
    assert body == msg.body
    assert publisher.connect_count >= 2
    assert counter("control.lost") == 0


def test_messages_wait_for_the_broker_and_expire_if_it_is_too_late(make_settings, consumer_for, push) -> None:
    port = free_port()
    forwarder = Forwarder(port).start()
    settings = make_settings(RABBITMQ_SERVER_ADDRESS=f"127.0.0.1:{port}")
    consumer = consumer_for(settings.control_exchange)  # direct to the broker, unaffected
    publisher = start(settings)
    try:
        forwarder.stop()
        wait_for(lambda: not publisher.connected.is_set(), what="the publisher to notice the broker is gone")
        patient = trigger(ttl=60, output_key="Patient Buzzer")
        hasty = trigger(ttl=0.5, output_key="Hasty Buzzer")
        inproc.send(push, patient)
        inproc.send(push, hasty)
        wait_for(lambda: counter("control.lost") == 1, what="the short-lived trigger to expire")
        assert publisher.pending() == 1
        assert health.components()["control_publisher"]["state"] in ("down", "connecting")

        forwarder.start()
        _, body = consumer.get(timeout=20)
        assert body == patient.body
        assert consumer.empty()
        assert counter("control.published") == 1
        assert counter("control.lost") == 1
    finally:
        threads.shutting_down.set()
        publisher.join(timeout=5)
        forwarder.stop()


def test_control_exchange_redeclared_in_any_order(make_settings, consumer_for, push) -> None:
    # hub first, then a client with no arguments, then the Nov 2023 hub's x-message-ttl variant
    settings = make_settings()
    publisher = start(settings)
    consumer = consumer_for(settings.control_exchange)
    consumer.channel.exchange_declare(
        exchange=settings.control_exchange, exchange_type="direct", arguments={"x-message-ttl": 90000}
    )
    msg = trigger()
    inproc.send(push, msg)
    assert consumer.get()[1] == msg.body

    # and the hub again (a reconnect re-declares) after the clients
    close_connection_named(f"{settings.app_name} ControlPublisher {settings.control_exchange}")
    wait_for(lambda: publisher.connect_count >= 2 and publisher.connected.is_set(), what="re-declare")
    inproc.send(push, msg)
    assert consumer.get()[1] == msg.body
    assert counter("control.lost") == 0


def test_idle_publisher_answers_heartbeats(make_settings, consumer_for, push, caplog) -> None:
    # an unserviced pika connection with a 1 s heartbeat is dropped by the broker within ~3 s
    caplog.set_level(logging.WARNING, logger="pylib.rabbit")
    settings = make_settings()
    consumer = consumer_for(settings.control_exchange)
    publisher = start(settings, heartbeat=1)
    time.sleep(5)
    losses = [r.getMessage() for r in caplog.records if "lost its RabbitMQ connection" in r.getMessage()]
    # Another suite sharing the broker may force-close every connection (CONNECTION_FORCED); a
    # missed heartbeat shows up as a reset stream or a heartbeat timeout instead.
    assert all("CONNECTION_FORCED" in m for m in losses), losses
    wait_for(publisher.connected.is_set, what="the publisher to be connected")
    msg = trigger()
    inproc.send(push, msg)
    assert consumer.get()[1] == msg.body


def test_stops_soon_after_shutdown(make_settings) -> None:
    publisher = start(make_settings())
    threads.shutting_down.set()
    publisher.join(timeout=3)
    assert not publisher.is_alive()
    assert threads.failures() == []
