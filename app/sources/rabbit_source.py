"""RabbitSource: consumes device events (event.#) from the RabbitMQ topic exchange and forwards Envelopes."""

from __future__ import annotations

import logging
import threading
import time

import pika
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from app.core import channels, delivery, health
from app.core.brokers import broker_spec
from app.core.settings import Settings
from app.store import roles
from pylib import inproc, rabbit, ratelog, threads, wire
from pylib.threads import AppThread

log = logging.getLogger(__name__)

COMPONENT = "rabbitmq_source"
BINDING_KEY = "event.#"
# Manual acks with a prefetch window rather than auto_ack. The queue is exclusive, so redelivery
# after a crash gains nothing; the point is flow control. With auto_ack the broker pushes without
# limit and only TCP backpressure slows it; with a window at most PREFETCH_COUNT messages are in
# flight to this process, and a backlog (a burst, a slow HeartbeatFilter) waits in the broker as
# ready messages, where it is visible and the broker's own memory limits apply. Acking every
# ACK_EVERY messages, or ACK_INTERVAL after the last ack, with multiple=True costs one small frame
# per batch. Not at the end of every I/O slice: a slice ends as soon as anything arrived, so a hub
# that keeps up would ack (a frame, a socket flush, three epoll calls) nearly every message.
# A standby pair (HA_ENABLED) is different: both hubs share one durable queue, a delivery the dead
# hub had not acked goes to the other, so there acks wait until the work is published (app/core/delivery.py).
PREFETCH_COUNT = 1000
# A fraction of the window, never all of it: at ACK_EVERY >= PREFETCH_COUNT the broker would stop
# delivering before an ack is due, and each window would wait for the ACK_INTERVAL timer
# (a prefetch of 200 with acks every 250 ran at 325 msg/s; docs/performance.md, session 6).
ACK_EVERY = PREFETCH_COUNT // 4
# Well inside the broker's consumer_timeout (30 min by default), which closes a channel holding
# an unacked delivery too long; and short enough that a quiet hub holds few unacked deliveries.
ACK_INTERVAL = 0.5
SLICE_SECONDS = 0.2  # broker I/O slice: how quickly shutdown is noticed while idle


class RabbitSource(AppThread):
    """Thread that turns every `event.#` message on the device exchange into an Envelope."""

    def __init__(self, settings: Settings, heartbeat: int = rabbit.DEFAULT_HEARTBEAT) -> None:
        super().__init__("RabbitSource")
        self.settings = settings
        self.connected = threading.Event()
        if settings.ha_enabled:
            # The broker gives the shared queue to another consumer only once this connection is
            # gone; a hub that lost its network must be noticed about as fast as its lease lapses
            # (the broker gives up after about three heartbeats of silence).
            heartbeat = min(heartbeat, max(1, round(settings.ha_fence_seconds / 2)))
        spec = broker_spec(settings, "RabbitSource", settings.rabbitmq_exchange, heartbeat)
        self._connector = rabbit.Connector(spec, "RabbitSource", on_state=self._on_state)
        # Envelopes of one delivery burst, handed to the HeartbeatFilter in one frame (and always
        # before the deliveries they came from are acked).
        self._push: inproc.Outbox | None = None
        self._last_tag = 0
        self._unacked = 0
        self._acked_at = 0.0  # time.monotonic() of the last ack
        # HA mode only: the shared queue's deliveries, acked after their work is published
        self._window: delivery.AckWindow | None = delivery.AckWindow() if settings.ha_enabled else None
        self._bad_log = ratelog.RateLimitedLog(log)

    @property
    def connect_count(self) -> int:
        """How many times a broker connection was opened (tests use it to see a reconnect)."""
        return self._connector.connect_count

    def _on_state(self, state: str, detail: str | None) -> None:
        if state != "connected":
            self.connected.clear()
        health.set_state(COMPONENT, state, detail)

    def work(self) -> None:
        self._push = inproc.connect_outbox(channels.HEARTBEAT_FILTER)
        try:
            while not threads.shutting_down.is_set():
                connection = self._connector.connect()
                if connection is None:
                    break
                try:
                    self._consume(connection)
                except rabbit.BROKER_ERRORS as exc:
                    if not threads.shutting_down.is_set():
                        self._connector.lost(exc)
                finally:
                    self._hand_on()  # what was received before the connection went
                    self.connected.clear()
                    rabbit.close(connection)
        finally:
            self._push.close(linger=0)
            health.set_state(COMPONENT, "down", "stopped")

    def _consume(self, connection: pika.BlockingConnection) -> None:
        exchange = self.settings.rabbitmq_exchange
        channel = connection.channel()
        # Exactly what the real clients declare (non-durable, not auto-delete, no arguments):
        # any difference makes the broker refuse whichever side declares second.
        channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=False, auto_delete=False)
        if self._window is None:
            queue = channel.queue_declare(queue="", exclusive=True).method.queue
        else:
            queue = self._declare_shared(channel)
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=BINDING_KEY)
        channel.basic_qos(prefetch_count=PREFETCH_COUNT)
        self._last_tag = 0
        self._unacked = 0
        if self._window is not None:
            self._window.clear()  # a new channel: the old one's unacked deliveries went back to the queue
            if not self._stand_by(connection):
                return
        channel.basic_consume(queue=queue, on_message_callback=self._on_message, auto_ack=False)
        self._connector.ready()
        self.connected.set()
        log.info("RabbitSource consuming %s on exchange %s", BINDING_KEY, exchange)
        while not threads.shutting_down.is_set():
            connection.process_data_events(time_limit=SLICE_SECONDS)
            self._hand_on()
            if self._window is not None or time.monotonic() - self._acked_at >= ACK_INTERVAL:
                self._flush_acks(channel)
            if not roles.acting():
                # fenced: closing the channel hands every unacked delivery back to the queue
                log.warning("RabbitSource: this hub no longer holds the lease; stopped consuming")
                return

    def _declare_shared(self, channel: BlockingChannel) -> str:
        """HA mode: the durable queue both hubs share; the broker delivers to one consumer at a time."""
        s = self.settings
        channel.queue_declare(
            queue=s.ha_queue_name,
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments={
                "x-single-active-consumer": True,
                # long enough for a take-over (messages older than MAX_MESSAGE_VALIDITY_SECONDS are
                # recorded stale, not fired), short and capped so a house with no hub never fills the broker
                "x-message-ttl": s.ha_queue_ttl * 1000,
                "x-max-length": s.ha_queue_max_length,
            },
        )
        return s.ha_queue_name

    def _stand_by(self, connection: pika.BlockingConnection) -> bool:
        """Keep the connection (and the declared queue) while this hub is the standby; True once active."""
        if not roles.acting():
            log.info("RabbitSource: standing by; messages wait in %s", self.settings.ha_queue_name)
        while not threads.shutting_down.is_set():
            if roles.acting():
                return True
            connection.process_data_events(time_limit=SLICE_SECONDS)
        return False

    def _flush_acks(self, channel: BlockingChannel) -> None:
        self._hand_on()  # a delivery is acked only once its envelope is with the HeartbeatFilter
        if self._window is not None:
            tag = self._window.ackable()
            if tag is not None:
                channel.basic_ack(delivery_tag=tag, multiple=True)
            return
        if self._unacked:
            channel.basic_ack(delivery_tag=self._last_tag, multiple=True)
            self._unacked = 0
            self._acked_at = time.monotonic()

    def _on_message(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        _properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        received_at = time.time() if self._window is None else self._window.stamp()
        try:
            self._handle(method.routing_key or "", body, received_at)
        except Exception:
            # one bad message must never take the source down
            if not threads.shutting_down.is_set():
                log.exception("RabbitSource failed to handle a message on %r", method.routing_key)
                health.count("rabbitmq_source.errors")
        if self._window is not None:
            self._window.add(received_at, method.delivery_tag)
            if len(self._window) >= ACK_EVERY:
                self._flush_acks(channel)
            return
        self._last_tag = method.delivery_tag
        self._unacked += 1
        if self._unacked >= ACK_EVERY:
            self._flush_acks(channel)

    def _handle(self, routing_key: str, body: bytes, received_at: float) -> None:
        parts = routing_key.split(".")
        if len(parts) < 3 or not parts[2]:
            log.debug("ignoring message on %r: the routing key names no origin", routing_key)
            health.count("rabbitmq_source.ignored")
            return
        try:
            payload = wire.decode_body(body, self.settings.rabbitmq_max_message_bytes)
        except wire.WireError as exc:
            self._bad_log.warning(
                "malformed message on %r: %s; body %s", routing_key[:200], exc, wire.preview(body)
            )
            health.count("rabbitmq_source.malformed")
            return
        envelope = channels.Envelope(
            origin=parts[2],
            received_at=received_at,
            payload=payload,
            source="rabbitmq",
            routing_key=routing_key,
            # origin.device_name (remote-monitor's heartbeats; snapshot's has no name part)
            device=".".join(parts[2:4])[:200],
        )
        self._send(inproc.encode(envelope))
        health.count("rabbitmq_source.received")

    def _send(self, frame: bytes) -> None:
        assert self._push is not None
        self._push.add(frame, threads.shutting_down)

    def _hand_on(self) -> None:
        if self._push is not None:
            self._push.flush(threads.shutting_down)
