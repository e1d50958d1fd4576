"""One paho-mqtt 2.x connection run by its owner's thread: reconnect, resubscribe, bounded outbox."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pylib import threads
from pylib.reconnect import Reconnects, StateCallback

log = logging.getLogger(__name__)
_P = ParamSpec("_P")

# The broker drops a silent client after 1.5 x keepalive and the client gives up on a silent broker
# after about 2 x keepalive: a dead broker is noticed within a minute, as for RabbitMQ.
KEEPALIVE = 30
# One attempt (TCP connect and TLS handshake) blocks the owner's thread at most this long, so
# shutdown is never held up for more than about a second by a host that does not answer. A broker
# on the LAN answers in milliseconds; one that is slower is simply retried with backoff.
CONNECT_TIMEOUT = 1.0
# Publishes handed to paho and not yet acknowledged. paho's own default window is 20; keeping ours
# the same means paho never holds a message back in its "queued" state, so everything it holds is
# re-sent after a reconnect (see Connection._flush), and what waits beyond that waits, bounded, in
# our outbox rather than unbounded inside paho.
MAX_INFLIGHT = 20
READ_BURST = 64  # messages read per wake-up beyond the first
# How long close() waits for the DISCONNECT packet to go out.
_CLOSE_SECONDS = 0.5

# paho logs through this logger only at the level it is given; like pika it stays quiet unless
# someone configured it on purpose (our own WARNING lines already describe every failure).
_paho_log = logging.getLogger("paho.mqtt")
if _paho_log.level == logging.NOTSET:
    _paho_log.setLevel(logging.CRITICAL)

MessageHandler = Callable[[str, bytes], None]
CountCallback = Callable[[str], None]
# Every error that means "this attempt failed, try again later": socket errors (refused, timeout,
# DNS, TLS, all OSError) and ssl.CertificateError (a ValueError) from the hostname check.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError)


@dataclass(frozen=True)
class BrokerSpec:
    """Where and how to connect; the password never appears in repr() or in a log line."""

    host: str
    port: int = 1883
    username: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    ca_certs: str = ""
    keepalive: int = KEEPALIVE

    def describe(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{user}{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


@dataclass(frozen=True)
class Outgoing:
    """A message to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def describe_error(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:240]


class Connection:
    """One clean-session paho client, used only from the thread that calls step(), publish() and close().

    Call step() in a loop: it connects when the backoff allows, runs the client's network I/O (which
    calls on_message for each message received) and publishes what waits in the outbox. Nothing in
    here raises to the caller: a broker that is down or goes away is retried until close().
    """

    def __init__(
        self,
        spec: BrokerSpec,
        component: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        *,
        client_id: str,
        qos: int = 1,
        on_state: StateCallback | None = None,
        on_count: CountCallback | None = None,
        backoff: threads.Backoff | None = None,
        outbox_size: int = 1000,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.spec = spec
        self.component = component
        self.subscriptions = tuple(subscriptions)
        self.qos = qos
        self.connected = threading.Event()  # set once the broker has acknowledged our subscriptions
        self.connect_count = 0  # successful connections (tests use it to see a reconnect)
        self.attempts = 0
        self._handler = on_message
        self._delivered = 0  # messages handed to on_message (how _read_burst sees the socket run dry)
        self._on_count = on_count
        self._retry = Reconnects(component, "MQTT", spec.describe(), log, on_state, backoff)
        self._outbox: deque[Outgoing] = deque()
        self._outbox_size = outbox_size
        self._inflight: dict[int, Outgoing] = {}  # mid -> message handed to paho, until on_publish
        self._socket_open = False
        self._closing = False
        self._refused: str | None = None

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=paho.MQTTv311,  # what the ESP32 devices speak
        )
        client.enable_logger(_paho_log)
        # Our callbacks catch their own errors (_guard); this is the last line of defence, so that a
        # bug in one of them is logged by paho instead of raising out of loop() and ending the thread.
        client.suppress_exceptions = True
        client.connect_timeout = connect_timeout
        client.max_inflight_messages_set(MAX_INFLIGHT)
        if spec.username:
            client.username_pw_set(spec.username, spec.password or None)
        if spec.tls:
            client.tls_set(ca_certs=spec.ca_certs or None)
        client.on_connect = self._guard("connect", self._on_connect)
        client.on_subscribe = self._guard("subscribe", self._on_subscribe)
        client.on_disconnect = self._guard("disconnect", self._on_disconnect)
        client.on_publish = self._guard("publish", self._on_publish)
        client.on_message = self._guard("message", self._on_message)
        # Only records host, port and keepalive: every attempt, the first included, is reconnect().
        client.connect_async(spec.host, spec.port, spec.keepalive)
        self._client = client

    # --- state reporting ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages waiting in the outbox (not yet handed to the client)."""
        return len(self._outbox)

    @property
    def unacknowledged(self) -> int:
        """Messages handed to the client and not yet acknowledged by the broker."""
        return len(self._inflight)

    def _count(self, name: str) -> None:
        if self._on_count is not None:
            self._on_count(name)

    def _guard(self, name: str, callback: Callable[_P, None]) -> Callable[_P, None]:
        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
            try:
                callback(*args, **kwargs)
            except Exception:
                log.exception("%s: error in the MQTT %s callback", self.component, name)

        return guarded

    # --- the owner's loop ----------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        """Do one slice of work, blocking at most about `timeout` seconds."""
        if self._socket_open and self._client.socket() is None:
            # paho closed the socket without telling us (it does on some select() errors)
            self.connected.clear()
            self._socket_open = False
            self._retry.lost("the connection closed")
        if self._socket_open:
            try:
                rc = self._client.loop(timeout=timeout)
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    rc = self._read_burst()
            except Exception as exc:
                # not expected from paho, but a connection is cheaper to replace than the thread
                log.exception("%s: the MQTT network loop failed", self.component)
                self.connected.clear()
                self._socket_open = False
                self._retry.lost(describe_error(exc))
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._socket_open:
                # an error path in paho that did not call on_disconnect; the next attempt's
                # reconnect() closes whatever is left of the old socket
                self.connected.clear()
                self._socket_open = False
                self._retry.lost(f"network loop failed: {paho.error_string(rc)}")
        elif self._retry.due():
            self._attempt()
        else:
            threads.sleep(min(timeout, self._retry.seconds_until_due()))
        self._flush()

    def publish(self, message: Outgoing) -> None:
        """Queue a message; it goes out now if connected, else after the next (re)connect."""
        dropped = self._outbox.popleft() if len(self._outbox) >= self._outbox_size else None
        self._outbox.append(message)
        if dropped is not None:
            self._count("outbox_dropped")
            log.warning(
                "%s outbox is full (%d messages): dropped the oldest, for %r",
                self.component,
                self._outbox_size,
                dropped.topic,
            )
        self._flush()

    def close(self) -> None:
        """Disconnect cleanly (a DISCONNECT packet, so the broker drops no will and logs no error)."""
        self._closing = True
        if self._socket_open:
            try:
                self._client.disconnect()
                deadline = threads.monotonic() + _CLOSE_SECONDS
                while self._socket_open and threads.monotonic() < deadline:
                    self._client.loop(timeout=0.05)
            except Exception as exc:  # a half-dead socket can fail in many ways; we are leaving anyway
                log.debug("%s: ignoring error while disconnecting: %s", self.component, describe_error(exc))
        unsent = len(self._outbox) + len(self._inflight)
        if unsent:
            log.warning("%s stopped with %d MQTT message(s) not confirmed published", self.component, unsent)
        self.connected.clear()
        self._retry.state("down", "stopped")

    # --- connecting ----------------------------------------------------------------------------

    def _attempt(self) -> None:
        self.attempts += 1
        self._retry.state("connecting", self.spec.describe())
        # Set before reconnect(): if writing CONNECT fails, paho calls on_disconnect from inside it.
        self._socket_open = True
        try:
            self._client.reconnect()
        except CONNECT_ERRORS as exc:
            self._socket_open = False
            self._retry.failed(describe_error(exc))

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            # the broker closes the connection next; on_disconnect schedules the retry
            self._refused = f"refused by the broker: {reason}"
            return
        self.connect_count += 1
        if not self.subscriptions:
            self._ready()
            return
        # Clean session: the broker forgot our subscriptions with the last connection, so they are
        # made again on every connect. Ready only on SUBACK, so a message published after
        # `connected` is set is sure to reach us.
        self._client.subscribe([(topic, self.qos) for topic in self.subscriptions])

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        refused = [t for t, rc in zip(self.subscriptions, reasons, strict=False) if rc.is_failure]
        if refused:
            log.warning("%s: the broker refused the subscription(s) %s", self.component, ", ".join(refused))
        self._ready()

    def _ready(self) -> None:
        self.connected.set()
        self._retry.ready()
        log.info(
            "%s connected to MQTT %s, subscribed to %s",
            self.component,
            self.spec.describe(),
            ", ".join(self.subscriptions) or "nothing",
        )

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        was_ready = self.connected.is_set()
        self.connected.clear()
        self._socket_open = False
        self._requeue_unsent_qos0()
        if self._closing:
            return
        refused, self._refused = self._refused, None
        if refused:
            self._retry.failed(refused)
        elif was_ready:
            self._retry.lost(f"connection lost ({reason})")
        else:
            self._retry.failed(f"connection closed before it was ready: {reason}")

    def _read_burst(self) -> MQTTErrorCode:
        """After loop(), which reads one packet: read on while each read delivers a message, up to
        READ_BURST, rather than pay a select() and a thread switch per message in a burst.

        paho's loop_read(max_packets) ignores its argument (it reads as many packets as its own
        queues hold, one when they are empty) and answers "success" whether or not a packet came, so
        the messages handed to on_message tell when the socket has run dry.
        """
        for _ in range(READ_BURST):
            if self._client.socket() is None:
                break
            delivered = self._delivered
            rc = self._client.loop_read()
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                return rc
            if self._delivered == delivered:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # --- messages ------------------------------------------------------------------------------

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        self._delivered += 1
        # A topic that is not UTF-8 raises here; brokers refuse such topics, and _guard logs it.
        # paho types payload bytes | bytearray; a received one is always bytes (struct.unpack's), and
        # bytes() of a bytes object is that object, not a copy.
        self._handler(message.topic, bytes(message.payload))

    def _flush(self) -> None:
        """Hand waiting messages to paho while connected and the in-flight window has room.

        Why nothing is put back in the outbox on disconnect for QoS >= 1: paho 2.x keeps every
        QoS 1/2 message it accepted in its own table until the PUBACK, across reconnect() of the
        same Client object and whatever the clean-session flag (that flag only concerns the
        broker's state), and re-sends them with DUP after the next CONNACK (_messages_reconnect_
        reset_out, _handle_connack). Putting them back here as well would publish them twice; so
        they stay in _inflight until on_publish, and the window above bounds how many there are.
        QoS 0 messages are different: paho drops the ones still unwritten on reconnect, so
        _requeue_unsent_qos0 puts those back.
        """
        while self.connected.is_set() and self._outbox and len(self._inflight) < MAX_INFLIGHT:
            message = self._outbox.popleft()
            try:
                info = self._client.publish(message.topic, message.payload, message.qos, message.retain)
            except ValueError as exc:  # a wildcard or empty topic, a bad QoS: it can never be sent
                self._count("publish_errors")
                log.warning("%s cannot publish to %r: %s; dropped", self.component, message.topic, exc)
                continue
            ok = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE or (message.qos == 0 and not ok):
                self._outbox.appendleft(message)
                return
            if ok and info.is_published():
                # a QoS 0 message written inside publish(): on_publish ran before we knew its mid
                self._published(message)
            else:
                self._inflight[info.mid] = message

    def _on_publish(
        self, _client: paho.Client, _userdata: object, mid: int, reason: ReasonCode, _props: Properties
    ) -> None:
        message = self._inflight.pop(mid, None)
        if message is None:
            return
        if reason.is_failure:  # only MQTT 5 brokers say why; kept for completeness
            self._count("publish_errors")
            log.warning("%s: the broker refused a message for %r: %s", self.component, message.topic, reason)
            return
        self._published(message)

    def _published(self, message: Outgoing) -> None:
        self._count("published")
        log.debug("%s published %d bytes to %r", self.component, len(message.payload), message.topic)

    def _requeue_unsent_qos0(self) -> None:
        unsent = [(mid, m) for mid, m in self._inflight.items() if m.qos == 0]
        for mid, _ in unsent:
            del self._inflight[mid]
        self._outbox.extendleft(m for _, m in reversed(unsent))
        while len(self._outbox) > self._outbox_size:
            dropped = self._outbox.popleft()
            self._count("outbox_dropped")
            log.warning("%s outbox is full: dropped the oldest, for %r", self.component, dropped.topic)
