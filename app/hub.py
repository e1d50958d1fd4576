"""The hub's start-up as a list of init_* and start_* steps, and its orderly shutdown."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core import file_modes, health, limits
from app.core.settings import Settings
from app.engine import clocks
from app.engine.config_applier import ConfigApplier
from app.engine.presence import presence
from app.engine.processor import EventProcessor
from app.engine.scheduler import AutoScheduler
from app.ops import observability
from app.outputs.control import ControlPublisher
from app.outputs.offline import OfflineMonitor
from app.sources.heartbeat import HeartbeatFilter
from app.sources.mqtt_source import MqttSource
from app.sources.rabbit_source import RabbitSource
from app.store import db, db_writes, original, registry, roles
from app.store.audit_writer import AuditWriter
from app.web import auth_keys, create_app
from app.web.lazy import LazyWebApp
from app.web.server import WebServer
from pylib import inproc, threads

if TYPE_CHECKING:
    from app.outputs.telegram.service import TelegramService

log = logging.getLogger(__name__)

# With a standby pair (HA_ENABLED) only the active hub runs these: one Telegram poller, one
# scheduler, one pinger (Healthchecks/Cronitor, CloudWatch), one set of offline alerts, one SQS
# consumer. They start at activation.
ACTIVE_ONLY = (
    "Telegram",
    "OfflineMonitor",
    "AutoScheduler",
    "HealthPinger",
    "CloudWatchMetrics",
    "MdashDiscovery",
    "SqsControl",
)


class Hub:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        migration: subprocess.Popen[str] | None = None,
    ) -> None:
        self.settings = settings
        self.migration = migration  # a migration child started early by __main__, if any
        self.clock = clock
        self.engine: Engine | None = None
        self.sessions: sessionmaker[Session] | None = None
        self.web: WebServer | None = None
        self.web_app: LazyWebApp | None = None  # what the web server serves (app.web.lazy)
        self.started_at = time.monotonic()

    @property
    def port(self) -> int:
        assert self.web is not None
        return self.web.port

    def start(self) -> None:
        self.init_database()
        self.start_threads()
        health.mark_ready()
        log.info(
            "start-up complete in %.2f s; API on %s:%d",
            time.monotonic() - self.started_at,
            self.settings.http_bind,
            self.port,
        )

    def init_database(self) -> None:
        # Files an older version (or a copy by hand) left readable by others: fixed, each with a log line.
        file_modes.secure_data(self.settings)
        self.engine = db.make_engine(self.settings.database_url, self.settings.db_timeout)
        db.upgrade_in_child(self.engine, self.settings.database_url, started=self.migration)
        self.sessions = db.session_factory(self.engine)
        with self.sessions() as session:
            registry.ensure_builtin(session, self.settings.device_name)
        db_writes.mark_ok_detail(db.current_revision(self.engine))

    def make_web_app(self) -> LazyWebApp:
        """The dashboard and the API, built on the first request that needs them (app.web.lazy); the
        admin user (a first start prints its generated password) and the signing key are made now."""
        settings, sessions = self.settings, self.sessions
        assert sessions is not None
        auth_keys.start_up(settings, sessions)
        self.web_app = LazyWebApp(lambda: create_app(settings, sessions, presence), settings, sessions)
        return self.web_app

    def start_threads(self) -> None:
        assert self.sessions is not None
        clocks.offsets.configure(self.settings.clock_offset_warning)
        # Every PULL socket is bound in its thread's constructor, so all of them exist before any PUSH sends.
        audit_writer = AuditWriter(self.settings, self.sessions)
        publisher = ControlPublisher(self.settings)
        processor = EventProcessor(self.settings, self.sessions, self.clock)
        applier = ConfigApplier(self.settings, self.sessions)
        heartbeat = HeartbeatFilter(self.sessions, presence, limits.Caps.from_settings(self.settings))
        rabbit = RabbitSource(self.settings)
        self.web = WebServer(self.settings, self.make_web_app())
        started: list[threads.AppThread] = [
            audit_writer,
            publisher,
            processor,
            applier,
            heartbeat,
            rabbit,
            self.web,
        ]
        if self.settings.mqtt_enabled:
            started.append(MqttSource(self.settings))
        else:
            # A house without MQTT devices: nothing to connect to, nothing to alarm about.
            log.info("MQTT off: MQTT_SERVER_ADDRESS is empty; sensor boards and meters are not heard")
        # Optional integrations are imported only when configured: influxdb-client and requests
        # would cost a Pi ~15 MB of memory for nothing.
        if self.settings.influxdb_enabled:
            from app.outputs.meter_writer import MeterWriter

            with self.sessions() as session:
                layout = original.influx_layout(self.settings.influxdb_layout, session)
            started.append(MeterWriter(self.settings, layout))
        else:
            log.info("InfluxDB off: set INFLUXDB_URL, _TOKEN, _ORG and _BUCKET to write meter readings")
        if self.settings.telegram_enabled:
            from app.outputs.telegram.service import TelegramService

            started.append(TelegramService(self.settings, self.sessions))
        else:
            log.info("Telegram off: set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ROOM for alerts and commands")
        started.append(OfflineMonitor(self.settings, self.sessions, presence))
        started.append(AutoScheduler(self.settings, self.sessions))
        # Heartbeat row and Healthchecks/Cronitor pings: their own thread, off the event path.
        started.append(observability.HealthPinger(self.settings, self.sessions, self.clock))
        self._register_depths(started)
        if self.settings.backup_enabled:
            from app.ops.backup_schedule import BackupScheduler

            started.append(BackupScheduler(self.settings))
        if self.settings.mdash_enabled:
            from app.sources.mdash import MdashDiscovery

            started.append(MdashDiscovery(self.settings, presence))
        else:
            log.info("mDash discovery off: set MDASH_API_KEY to use it")
        if self.settings.cloudwatch_metrics:
            from app.ops.cloudwatch import CloudWatchMetrics  # boto3: only where AWS metrics are wanted

            started.append(CloudWatchMetrics(self.settings, presence))
        else:
            log.info(
                "CloudWatch metrics off: set AWS keys (CLOUDWATCH_METRICS=auto) or CLOUDWATCH_METRICS=true"
            )
        if self.settings.healthchecks_badges:
            from app.ops.badges import BadgePoller

            started.append(BadgePoller(self.settings))
        if self.settings.ngrok_enabled:
            from app.ops.remote_url import NgrokDiscovery

            started.append(NgrokDiscovery(self.settings))
        if self.settings.sqs_control_enabled:
            from app.sources.sqs_control import SqsControl  # boto3 costs ~30 MB: only when SQS control is on

            started.append(SqsControl(self.settings, self.sessions))
        else:
            log.info("SQS control off: set SNS_CONTROL_ENABLED=true to take control messages from SQS_QUEUE")
        gated = self._gate_for_standby(started)
        for thread in started:
            if thread not in gated:
                thread.start()

    def _gate_for_standby(self, started: list[threads.AppThread]) -> list[threads.AppThread]:
        """HA mode: add the RoleKeeper, which starts the active-only threads when this hub takes the lease."""
        if not self.settings.ha_enabled:
            return []
        assert self.sessions is not None
        from app.ops.role_keeper import RoleKeeper  # psycopg's lease connection: only for a standby pair

        gated = [t for t in started if t.name in ACTIVE_ONLY]
        started.append(RoleKeeper(self.settings, self.sessions, on_active=roles.active_only(gated)))
        log.info(
            "standby pair: %s starts as standby and acts once it holds the lease (%s wait)",
            self.settings.ha_node_name,
            ", ".join(t.name for t in gated),
        )
        return gated

    @staticmethod
    def _register_depths(started: list[threads.AppThread]) -> None:
        """Let /metrics read the queues that live inside thread objects, at scrape time."""
        observability.clear_depths()
        for thread in started:
            if isinstance(thread, AuditWriter):
                observability.register_depth("audit_held", thread.held)
            elif isinstance(thread, ControlPublisher):
                observability.register_depth("control_pending", thread.pending)
            elif isinstance(thread, MqttSource):
                observability.register_depth("mqtt_outbox", _mqtt_outbox(thread))
            elif type(thread).__name__ == "MeterWriter":  # its module is imported only when InfluxDB is on
                from app.outputs.meter_writer import MeterWriter  # (loaded already: the thread is one)

                if isinstance(thread, MeterWriter):
                    observability.register_depth("influxdb_buffer", thread.buffered)
            elif type(thread).__name__ == "TelegramService":  # likewise only with Telegram on
                from app.outputs.telegram.service import TelegramService

                if isinstance(thread, TelegramService):
                    observability.register_depth("telegram_outbox", _telegram_outbox(thread))

    def on_fatal(self) -> None:
        """A thread died: tell CloudWatch (Fatals=1) before the process exits, as the original did."""
        if self.settings.cloudwatch_metrics:
            from app.ops.cloudwatch import post_fatal

            post_fatal(self.settings)

    def stop(self, timeout: float = 4.0) -> None:
        """Stop every thread and release sockets; returns within about `timeout` seconds."""
        threads.shutting_down.set()
        if self.web is not None:
            self.web.stop()
        started = time.monotonic()
        deadline = started + timeout
        for thread in threads.tracked():
            if thread.is_alive():
                own = max(deadline, started + thread.stop_grace)
                thread.join(max(0.0, own - time.monotonic()))
        stuck = [t.name for t in threads.tracked() if t.is_alive()]
        if stuck:
            log.warning("threads still running at shutdown: %s", ", ".join(stuck))
        inproc.terminate()
        if self.engine is not None:
            self.engine.dispose()
        roles.reset()


def _mqtt_outbox(source: MqttSource) -> Callable[[], int]:
    return lambda: source.outbox_pending  # a property, read at each scrape


def _telegram_outbox(service: TelegramService) -> Callable[[], int]:
    # The notifier exists once the bot has started; until then nothing is queued.
    return lambda: service.notifier.pending() if service.notifier else 0
