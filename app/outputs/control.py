"""ControlPublisher: publishes output triggers to `<exchange>_control` with a per-message TTL, never late."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from app.core import channels, health
from app.core.brokers import broker_spec
from app.core.settings import Settings
from app.store import roles
from pylib import inproc, rabbit, threads
from pylib.threads import AppThread

log = logging.getLogger(__name__)

COMPONENT = "control_publisher"
# Triggers waiting for the broker. A Pi's outputs fire a few times a minute, so this covers a long
# outage; past it the oldest is dropped (and counted lost) because the newest matters most. While the
# broker is up the queue is drained every loop, so only an outage can fill it.
MAX_PENDING = 10000
IDLE_POLL_MS = 100  # how long one idle wait on the inproc socket lasts between broker I/O slices
RECEIVE_BATCH = 500  # messages taken off the inproc socket per loop, so heartbeats are still answered
PUBLISH_BATCH = 200  # messages per transaction


class ControlPublisher(AppThread):
    """Thread that takes ControlMessages off inproc and publishes them, retrying until they expire."""

    def __init__(
        self,
        settings: Settings,
        heartbeat: int = rabbit.DEFAULT_HEARTBEAT,
        confirm: bool = True,
    ) -> None:
        super().__init__("ControlPublisher")
        self.settings = settings
        self.connected = threading.Event()
        # Triggers are published in AMQP transactions, one commit per batch: tx.commit returns only
        # once the broker has taken every message of the batch, so a trigger is never reported
        # published when it died in a socket buffer. Per-message publisher confirms gave the same
        # guarantee but cost a broker round trip per trigger, which halved the hub's throughput;
        # a commit per batch costs one round trip for everything waiting. mandatory=True makes the
        # broker hand back a trigger no device queue is bound for, and that is counted.
        # `confirm=False` exists for measuring that cost.
        self.confirm = confirm
        spec = broker_spec(settings, "ControlPublisher", settings.control_exchange, heartbeat)
        self._connector = rabbit.Connector(spec, "ControlPublisher", on_state=self._on_state)
        self._pending: deque[channels.ControlMessage] = deque()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    @property
    def connect_count(self) -> int:
        """How many times a broker connection was opened (tests use it to see a reconnect)."""
        return self._connector.connect_count

    def pending(self) -> int:
        return len(self._pending)

    def _on_state(self, state: str, detail: str | None) -> None:
        if state != "connected":
            self.connected.clear()
        health.set_state(COMPONENT, state, detail)

    def work(self) -> None:
        pull = inproc.bind_pull(channels.CONTROL_PUBLISHER, inproc.BATCH_HWM)
        try:
            while not threads.shutting_down.is_set():
                if self._channel is None and self._connector.due():
                    self._open()
                self._receive(pull)
                self._expire()
                # roles.acting(): a hub that lost its lease publishes nothing more (fencing)
                while self._pending and self._channel is not None and roles.acting():
                    self._publish_pending()
                if self._connection is not None:
                    self._service()
        finally:
            pull.close(linger=0)
            for msg in self._pending:
                self._lose(msg, "the hub is shutting down")
            self._pending.clear()
            self._drop()
            health.set_state(COMPONENT, "down", "stopped")

    # --- broker connection -------------------------------------------------------------------

    def _open(self) -> None:
        connection = self._connector.attempt()
        if connection is None:
            return
        try:
            channel = connection.channel()
            if self.confirm:
                channel.tx_select()
            channel.add_on_return_callback(self._on_return)
            # Non-durable direct with no arguments, as the real consumers declare it. The original
            # hub added x-message-ttl here, which does nothing on an exchange; the TTL now travels
            # on each message as `expiration`.
            channel.exchange_declare(
                exchange=self.settings.control_exchange,
                exchange_type="direct",
                durable=False,
                auto_delete=False,
            )
        except rabbit.BROKER_ERRORS as exc:
            rabbit.close(connection)
            if not threads.shutting_down.is_set():
                self._connector.lost(exc)
            return
        self._connection = connection
        self._channel = channel
        self._connector.ready()
        self.connected.set()

    def _drop(self) -> None:
        self.connected.clear()
        rabbit.close(self._connection)
        self._connection = None
        self._channel = None

    def _broken(self, exc: BaseException) -> None:
        self._drop()
        if not threads.shutting_down.is_set():
            self._connector.lost(exc)

    def _service(self) -> None:
        """Answer broker heartbeats while idle (the original's idle publisher was dropped for this)."""
        assert self._connection is not None
        try:
            self._connection.process_data_events(time_limit=0)
        except rabbit.BROKER_ERRORS as exc:
            self._broken(exc)

    # --- messages ----------------------------------------------------------------------------

    def _receive(self, pull: inproc.Socket) -> None:
        if self._pending and self._channel is not None:
            timeout = 0
        elif self._channel is None:
            timeout = min(IDLE_POLL_MS, int(self._connector.seconds_until_due() * 1000))
        else:
            timeout = IDLE_POLL_MS
        for frame in inproc.recv_frames(pull, timeout, limit=RECEIVE_BATCH):
            self._take(frame)

    def _take(self, frame: bytes) -> None:
        """Queue one ControlMessage for publishing; anything else is logged, counted and dropped."""
        try:
            msg = inproc.decode(frame)
        except inproc.MessageError as exc:
            log.error("ControlPublisher dropped an undecodable inproc frame: %s", exc)
            health.count("control.invalid")
            return
        if not isinstance(msg, channels.ControlMessage):
            log.error("ControlPublisher dropped a %s: only ControlMessage belongs here", type(msg).__name__)
            health.count("control.invalid")
            return
        if len(self._pending) >= MAX_PENDING:
            self._lose(self._pending.popleft(), f"{MAX_PENDING} triggers were already waiting")
        self._pending.append(msg)

    def _expire(self) -> None:
        if not self._pending:
            return
        now = time.time()
        if all(msg.expires_at > now for msg in self._pending):
            return
        keep: deque[channels.ControlMessage] = deque()
        for msg in self._pending:
            if msg.expires_at > now:
                keep.append(msg)
            else:
                self._lose(msg, f"expired {now - msg.expires_at:.1f}s ago before it could be published")
        self._pending = keep

    def _publish_pending(self) -> None:
        exchange = self.settings.control_exchange
        now = time.time()
        batch: list[channels.ControlMessage] = []
        while self._pending and len(batch) < PUBLISH_BATCH:
            msg = self._pending.popleft()
            if msg.expires_at <= now:
                self._lose(msg, "expired before it could be published")
            else:
                batch.append(msg)
        if not batch or self._channel is None:
            return
        # In a transaction the publishes go to pika's own channel, which only queues their frames, and
        # tx_commit writes the whole batch and waits once. BlockingChannel.basic_publish would flush
        # the socket after every message (three epoll calls each), which cost more CPU than anything
        # else in this thread. Without a transaction there is no commit to flush them, so each
        # publish flushes itself.
        publish = self._channel._impl.basic_publish if self.confirm else self._channel.basic_publish
        try:
            for msg in batch:
                remaining_ms = max(1, int((msg.expires_at - now) * 1000))
                publish(
                    exchange=exchange,
                    routing_key=msg.routing_key,
                    body=msg.body,
                    # per-message TTL, so a trigger that waits in a device's queue never fires late
                    properties=pika.BasicProperties(expiration=str(remaining_ms)),
                    mandatory=True,
                )
            if self.confirm:
                self._coalesce_output()
                self._channel.tx_commit()
        except rabbit.BROKER_ERRORS as exc:
            # The batch goes back to the head of the queue and out again after the reconnect. If
            # only the commit's answer was lost a device may get a trigger twice: a second buzzer
            # pulse or snapshot is better than a missed one.
            self._pending.extendleft(reversed(batch))
            self._broken(exc)
            return
        health.count("control.published", len(batch))
        if log.isEnabledFor(logging.DEBUG):
            for msg in batch:
                log.debug("published control message for %r on %s", msg.output_key, msg.routing_key)

    def _coalesce_output(self) -> None:
        """Join the batch's queued frames into one buffer, so the commit's flush sends it in one call.

        pika queues each frame (method, header, body: three per trigger) as its own chunk and its
        transport calls socket.send() once per chunk: 600 system calls for a batch of 200, the
        largest CPU cost in this thread (py-spy, docs/performance.md). The bytes and their order are
        the same; a partial send is requeued by the transport as before. Private pika attributes,
        checked: with another pika the frames simply go out one by one again.
        """
        transport = getattr(getattr(self._connection, "_impl", None), "_transport", None)
        buffers = getattr(transport, "_tx_buffers", None)
        if isinstance(buffers, deque) and len(buffers) > 1 and all(isinstance(b, bytes) for b in buffers):
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)

    def _on_return(
        self,
        _channel: BlockingChannel,
        method: pika.spec.Basic.Return,
        _properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        # reached the broker, but no device queue is bound for it: retrying would not help
        log.warning(
            "control message on %s was unroutable: no consumer is bound on %s (%s)",
            method.routing_key,
            method.exchange,
            method.reply_text,
        )
        health.count("control.unroutable")

    def _lose(self, msg: channels.ControlMessage, reason: str) -> None:
        # never log the body: camera triggers carry device credentials
        log.warning("control message for %r (%s) lost: %s", msg.output_key, msg.routing_key, reason)
        health.count("control.lost")
