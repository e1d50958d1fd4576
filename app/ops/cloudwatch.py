"""The original's CloudWatch metrics: Fatals (0 while running, 1 when a thread dies) and Heartbeat Age.

Namespace CLOUDWATCH_NAMESPACE ("automation"), dimensions Application=<APP_NAME> and Device=<the first
two parts of DEVICE_NAME>, as the original's pylib posted them; beside /metrics, not instead of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from app.core import aws, health
from app.core.settings import Settings
from app.engine.presence import Presence
from pylib import threads

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0  # how often device heartbeats are looked at between two posts
FATAL_TIMEOUT = 3.0  # the process is going down: a short wait for AWS at most


def device_name_base(device_name: str) -> str:
    """event-processor-a -> event-processor: the original's Device dimension."""
    parts = device_name.split("-")
    return "-".join(parts[:2]) if len(parts) > 2 else device_name


def dimensions(settings: Settings) -> list[dict[str, str]]:
    return [
        {"Name": "Application", "Value": settings.app_name},
        {"Name": "Device", "Value": device_name_base(settings.device_name)},
    ]


def _client(settings: Settings, timeout: float = 10.0) -> aws.Client:
    return aws.client(
        settings, "cloudwatch", connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2}
    )


def post_fatal(settings: Settings) -> None:
    """Fatals=1, as the original's thread nanny posted when a thread died; never raises."""
    try:
        _client(settings, FATAL_TIMEOUT).put_metric_data(
            Namespace=settings.cloudwatch_namespace,
            MetricData=[
                {"MetricName": "Fatals", "Dimensions": dimensions(settings), "Value": 1, "Unit": "Count"}
            ],
        )
    except Exception as exc:  # the process is exiting anyway; the reason is worth a line
        log.warning("could not post Fatals=1 to CloudWatch: %s", exc)


class HeartbeatAges:
    """The longest time any device origin went without a message in each reporting interval.

    The original measured the gap between two messages of one origin when the second arrived; this also
    counts an origin that is still silent at the end of the interval, so a device that died shows too.
    """

    def __init__(self, presence: Presence) -> None:
        self._presence = presence
        self._last: dict[str, float] = {}
        self._max: float | None = None

    def sample(self, now: float) -> None:
        origins = self._presence.origins()
        for origin, seen in origins.items():
            previous = self._last.get(origin)
            if previous is not None and seen > previous:
                self._note(seen - previous)
            self._last[origin] = seen
        # forget origins presence no longer holds (it is bounded; this follows it)
        for gone in set(self._last) - set(origins):
            del self._last[gone]

    def _note(self, age: float) -> None:
        self._max = age if self._max is None else max(self._max, age)

    def take(self, now: float) -> float | None:
        """The interval's maximum (the current silence of each origin included); then start afresh."""
        self.sample(now)
        for seen in self._last.values():
            self._note(max(0.0, now - seen))
        value, self._max = self._max, None
        return value


class CloudWatchMetrics(threads.AppThread):
    """Posts Fatals=0 and the interval's maximum heartbeat age every CLOUDWATCH_SECONDS."""

    def __init__(
        self, settings: Settings, presence: Presence, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__("CloudWatchMetrics")
        self._settings = settings
        self._clock = clock
        self._ages = HeartbeatAges(presence)
        self._client: aws.Client | None = None
        self._quiet = threads.QuietRepeats()

    def post(self) -> None:
        now = self._clock()
        dims = dimensions(self._settings)
        data: list[dict[str, Any]] = [
            {"MetricName": "Fatals", "Dimensions": dims, "Value": 0, "Unit": "Count"}
        ]
        age = self._ages.take(now)
        if age is not None:  # no device heard yet: nothing to say (the original sent -1)
            data.append(
                {"MetricName": "Heartbeat Age", "Dimensions": dims, "Value": round(age, 1), "Unit": "Seconds"}
            )
        try:
            if self._client is None:
                self._client = _client(self._settings)
            self._client.put_metric_data(Namespace=self._settings.cloudwatch_namespace, MetricData=data)
        except Exception as exc:  # botocore's errors have no one base class worth naming here
            health.count("cloudwatch.errors")
            health.set_state("cloudwatch", "failing", type(exc).__name__)
            if self._quiet.should_log(type(exc).__name__):
                log.warning("could not post metrics to CloudWatch: %s", exc)
            return
        health.count("cloudwatch.posts")
        health.set_state("cloudwatch", "ok")
        self._quiet.reset()

    def work(self) -> None:
        health.set_state("cloudwatch", "starting")
        interval = self._settings.cloudwatch_seconds
        next_post = time.monotonic()  # at start, as the original's first pass of its nanny did
        while not threads.shutting_down.is_set():
            if time.monotonic() >= next_post:
                self.post()
                next_post = time.monotonic() + interval
            else:
                self._ages.sample(self._clock())
            if threads.sleep(min(SAMPLE_SECONDS, interval, max(0.0, next_post - time.monotonic()))):
                break
