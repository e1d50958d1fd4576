"""Blocking RabbitMQ (pika) connections that try each server in turn and retry with backoff until shutdown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pika
import pika.exceptions

from pylib import threads
from pylib.reconnect import Reconnects, StateCallback

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 30  # seconds; short enough that a dead broker is noticed within a minute
# Every error that means "this connection or channel is unusable: drop it and reconnect". OSError
# covers socket errors pika occasionally lets through unwrapped.
BROKER_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)

# pika logs every failed attempt at ERROR with a traceback; we log one WARNING line per failure
# ourselves, so keep pika quiet unless someone configured its logger on purpose.
_pika_log = logging.getLogger("pika")
if _pika_log.level == logging.NOTSET:
    _pika_log.setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class BrokerSpec:
    """Where and how to connect; the password never appears in repr() or in a log line."""

    servers: tuple[tuple[str, int], ...]
    user: str
    password: str = field(repr=False)
    vhost: str = "/"
    heartbeat: int = DEFAULT_HEARTBEAT
    name: str = ""  # AMQP connection_name, shown by rabbitmqctl and the management UI

    def parameters(self) -> list[pika.ConnectionParameters]:
        credentials = pika.PlainCredentials(self.user, self.password)
        client_properties = {"connection_name": self.name} if self.name else None
        return [
            pika.ConnectionParameters(
                host=host,
                port=port,
                virtual_host=self.vhost,
                credentials=credentials,
                heartbeat=self.heartbeat,
                blocked_connection_timeout=5,
                # keep one attempt short so shutdown is not held up by an unreachable host
                socket_timeout=5,
                stack_timeout=10,
                connection_attempts=1,
                client_properties=client_properties,
            )
            for host, port in self.servers
        ]

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.servers)
        return f"{self.user}@{hosts} vhost {self.vhost}"


def describe_error(exc: BaseException) -> str:
    """A short one-line description of a broker error (pika's reprs can be very long)."""
    name = type(exc).__name__
    text = str(exc) or repr(exc)
    if not text.startswith(name):  # pika's AMQPConnectionError already starts with its own name
        text = f"{name}: {text}"
    return text[:240]


class Connector:
    """Opens connections for one component, reporting state changes and pacing retries with backoff."""

    def __init__(
        self,
        spec: BrokerSpec,
        component: str,
        on_state: StateCallback | None = None,
        backoff: threads.Backoff | None = None,
    ) -> None:
        self.spec = spec
        self.component = component
        self._retry = Reconnects(component, "RabbitMQ", spec.describe(), log, on_state, backoff)
        self.connect_count = 0

    def due(self) -> bool:
        """True when the backoff delay since the last failure has passed."""
        return self._retry.due()

    def seconds_until_due(self) -> float:
        return self._retry.seconds_until_due()

    def attempt(self) -> pika.BlockingConnection | None:
        """One pass over every server; None (after logging and scheduling the next try) on failure."""
        self._retry.state("connecting", self.spec.describe())
        try:
            # pika tries each parameter set in order and raises only when all have failed
            connection = pika.BlockingConnection(self.spec.parameters())
        except BROKER_ERRORS as exc:
            self._retry.failed(describe_error(exc))
            return None
        self.connect_count += 1
        return connection

    def ready(self) -> None:
        """The caller finished its set-up (declares, binds) on a new connection: it is really up.

        Backoff resets only here, not on TCP connect, so a broker that accepts the connection but
        refuses the set-up (say a durable exchange of the same name) is retried with growing delays
        instead of in a tight loop.
        """
        self._retry.ready()
        log.info("%s connected to RabbitMQ %s", self.component, self.spec.describe())

    def connect(self) -> pika.BlockingConnection | None:
        """Retry until connected; None only when shutdown starts first (never gives up otherwise)."""
        while not threads.shutting_down.is_set():
            if not self.due():
                threads.sleep(min(self.seconds_until_due(), 0.5))
                continue
            connection = self.attempt()
            if connection is not None:
                return connection
        return None

    def lost(self, exc: BaseException) -> None:
        """Record that a connection broke (or its set-up failed); the next attempt waits for backoff."""
        self._retry.lost(describe_error(exc))


def close(connection: pika.BlockingConnection | None) -> None:
    """Close a connection, ignoring errors: it is often already broken when we get here."""
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except Exception as exc:  # a half-dead connection can raise almost anything from close()
        log.debug("ignoring error while closing a RabbitMQ connection: %s", describe_error(exc))
