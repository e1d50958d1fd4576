"""Prometheus metrics: counters, component states, presence, queue depths and RSS, read at scrape time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core import health, limits
from app.core.settings import Settings
from app.engine.output_triggers import TRIGGERS_BY_TYPE
from app.engine.presence import Presence
from app.ops import backup_status, queue_depths
from app.ops.health_pinger import HEALTHY_STATES, critical_components

# logs as app.ops.observability, whichever of its modules speaks
log = logging.getLogger("app.ops.observability")


# Counter name endings that mean something was thrown away (the part before the dot is the stage).
DROP_REASONS = frozenset(
    {"malformed", "lost", "dropped", "unroutable", "outbox_dropped", "rejected", "invalid", "refused"}
)
# Counters that are work the hub sent out, by kind.
OUTPUT_COUNTERS = {
    "processor.triggers": "trigger",
    "processor.notifications": "notification",
    "control.published": "control_message",
    "telegram.sent": "telegram_message",
    "offline.alerts": "offline_alert",
}
SOURCE_COUNTERS = {"rabbitmq_source.received": "rabbitmq", "mqtt.received": "mqtt"}


def rss_bytes(path: str = "/proc/self/status") -> int | None:
    """Resident set size from /proc (VmRSS, in kB); None off Linux."""
    try:
        with open(path, encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class HubCollector(Collector):
    """Reads health counters, component states, presence and queue depths at scrape time."""

    def __init__(
        self, presence: Presence, clock: Callable[[], float] = time.time, settings: Settings | None = None
    ) -> None:
        self.presence = presence
        self.clock = clock
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        counts = health.counters()
        states = health.components()
        now = self.clock()

        received = CounterMetricFamily(
            "event_processor_events_received", "Messages received, by source.", labels=["source"]
        )
        for name, source in SOURCE_COUNTERS.items():
            received.add_metric([source], counts.get(name, 0))
        yield received

        sent = CounterMetricFamily(
            "event_processor_outputs",
            "Work sent out (triggers, notifications, messages), by type.",
            labels=["type"],
        )
        for name, kind in OUTPUT_COUNTERS.items():
            sent.add_metric([kind], counts.get(name, 0))
        yield sent

        by_type = CounterMetricFamily(
            "event_processor_triggers",
            "Output triggers published, by output type (ioboard, snapshot, tts, bluetooth, topic) "
            "and the built-in Telegram notifications (sms).",
            labels=["type"],
        )
        for name, value in sorted(counts.items()):
            if name.startswith(TRIGGERS_BY_TYPE):
                by_type.add_metric([name[len(TRIGGERS_BY_TYPE) :]], value)
        by_type.add_metric(["sms"], counts.get("processor.notifications", 0))
        yield by_type

        dropped = CounterMetricFamily(
            "event_processor_dropped",
            "Messages or work thrown away, by stage and reason.",
            labels=["stage", "reason"],
        )
        for name, value in sorted(counts.items()):
            stage, _, rest = name.partition(".")
            if (stage == "processor" and rest.startswith("blocked.")) or rest in DROP_REASONS:
                dropped.add_metric([stage, rest], value)
        yield dropped

        refused = CounterMetricFamily(
            "event_processor_registrations_refused",
            "New device keys not registered because a registration cap was reached, by cap.",
            labels=["cap"],
        )
        for cap in limits.CAPS:
            refused.add_metric([cap], counts.get(limits.CAP_COUNTER + cap, 0))
        yield refused

        every = CounterMetricFamily(
            "event_processor_health_counter",
            "Every health counter, as /api/health shows it.",
            labels=["name"],
        )
        for name, value in sorted(counts.items()):
            every.add_metric([name], value)
        yield every

        up = GaugeMetricFamily(
            "event_processor_component_up",
            "1 when the component is connected/running/ok.",
            labels=["component"],
        )
        for component in sorted(set(states) | set(critical_components(self.settings))):
            up.add_metric([component], 1.0 if health.state_of(states, component) in HEALTHY_STATES else 0.0)
        yield up

        depth = GaugeMetricFamily(
            "event_processor_queue_depth", "Items waiting in a queue.", labels=["queue"]
        )
        for queue, read in queue_depths.readers():
            try:
                depth.add_metric([queue], float(read()))
            except Exception:  # a thread mid-shutdown: leave this queue out of the scrape
                log.debug("could not read the depth of %s", queue, exc_info=True)
        yield depth

        age = GaugeMetricFamily(
            "event_processor_device_last_seen_age_seconds",
            "Seconds since a device key was heard.",
            labels=["device_key"],
        )
        for key, timing in sorted(self.presence.timings().items()):
            age.add_metric([key], max(0.0, now - timing.last_seen))
        yield age

        heartbeat = states.get("heartbeat_row")
        if heartbeat is not None:
            yield GaugeMetricFamily(
                "event_processor_heartbeat_row_age_seconds",
                "Seconds since the heartbeat row was last written.",
                value=max(0.0, time.time() - heartbeat["since"]),
            )

        yield GaugeMetricFamily(
            "event_processor_ready", "1 once start-up completed.", value=float(health.is_ready())
        )

        rss = rss_bytes()
        if rss is not None:
            yield GaugeMetricFamily(
                "event_processor_process_rss_bytes",
                "Resident memory (VmRSS of /proc/self/status).",
                value=rss,
            )


class BackupCollector(Collector):
    """The backup status file at scrape time: its age, and whether the state is ok."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = backup_status.read_status(self.settings)
        if status.state == "not configured":
            return
        if status.age_seconds is not None:
            yield GaugeMetricFamily(
                "event_processor_backup_age_seconds",
                "Seconds since the last good database backup to S3.",
                value=status.age_seconds,
            )
        yield GaugeMetricFamily(
            "event_processor_backup_ok",
            "1 when the last backup and the last restore drill succeeded and the backup is recent.",
            value=1.0 if status.state == "ok" else 0.0,
        )


def make_registry(presence: Presence, settings: Settings | None = None) -> CollectorRegistry:
    """A registry of its own per web app, so tests can run several hubs in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(presence, settings=settings))
    if settings is not None:
        registry.register(BackupCollector(settings))
    ProcessCollector(registry=registry)  # the standard process_* metrics (CPU, fds, start time)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and that format's content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
