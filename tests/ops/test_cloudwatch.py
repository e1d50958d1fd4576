"""CloudWatch metrics as the original posted them (Fatals, Heartbeat Age), boto3 against moto's server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core import aws, health
from app.engine.presence import Presence
from app.ops import cloudwatch
from tests.moto_server import aws_env, moto_server
from tests.support import wait_for


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


def statistics(client: Any, name: str, stat: str) -> list[float]:
    now = datetime.now(UTC)
    answer = client.get_metric_statistics(
        Namespace="automation",
        MetricName=name,
        Dimensions=[
            {"Name": "Application", "Value": "event_processor"},
            {"Name": "Device", "Value": "event-processor"},
        ],
        StartTime=now - timedelta(hours=1),
        EndTime=now + timedelta(minutes=5),
        Period=60,
        Statistics=[stat],
    )
    return [point[stat] for point in answer["Datapoints"]]


def test_cloudwatch_metrics_on_when_aws_is_configured(make_settings) -> None:
    assert make_settings().cloudwatch_metrics is False
    assert make_settings(AWS_ACCESS_KEY_ID="AKIA", AWS_SECRET_ACCESS_KEY="x").cloudwatch_metrics is True
    assert make_settings(AWS_ACCESS_KEY_ID="AKIA", CLOUDWATCH_METRICS="false").cloudwatch_metrics is False
    assert make_settings(CLOUDWATCH_METRICS="true").cloudwatch_metrics is True
    assert cloudwatch.device_name_base("event-processor-a") == "event-processor"
    assert cloudwatch.device_name_base("hub") == "hub"


def test_fatals_and_heartbeat_age_reach_cloudwatch(make_settings, moto: str) -> None:
    settings = make_settings(
        **aws_env(moto),
        CLOUDWATCH_METRICS="true",
        CLOUDWATCH_SECONDS="0.2",
        DEVICE_NAME="event-processor-a",
    )
    presence = Presence()
    now = time.time()
    presence.seen("ioboard", ["Front Door Motion (Hallway)"], when=now - 40)  # silent for 40 s
    presence.seen("sensor/garage", ["Garage Motion"], when=now - 2)
    thread = cloudwatch.CloudWatchMetrics(settings, presence)
    thread.start()
    wait_for(lambda: health.counters().get("cloudwatch.posts", 0) >= 2, 20, what="two posts")
    client = aws.client(settings, "cloudwatch")
    names = {m["MetricName"] for m in client.list_metrics(Namespace="automation")["Metrics"]}
    assert {"Fatals", "Heartbeat Age"} <= names
    assert set(statistics(client, "Fatals", "Maximum")) == {0.0}  # one point a minute
    ages = statistics(client, "Heartbeat Age", "Maximum")
    assert ages and 40 <= max(ages) < 120
    listed = client.list_metrics(Namespace="automation", MetricName="Heartbeat Age")["Metrics"][0]
    assert sorted((d["Name"], d["Value"]) for d in listed["Dimensions"]) == [
        ("Application", "event_processor"),
        ("Device", "event-processor"),
    ]
    # a thread death: Fatals=1, as the original's nanny posted
    cloudwatch.post_fatal(settings)
    wait_for(lambda: max(statistics(client, "Fatals", "Maximum")) == 1.0, what="Fatals=1")
    assert health.components()["cloudwatch"]["state"] == "ok"


def test_heartbeat_age_is_the_longest_silence_in_the_interval() -> None:
    presence = Presence()
    ages = cloudwatch.HeartbeatAges(presence)
    assert ages.take(1000.0) is None  # nothing heard: nothing to post
    presence.seen("ioboard", ["a"], when=1000.0)
    ages.sample(1001.0)
    presence.seen("ioboard", ["a"], when=1090.0)  # a 90 s gap between two messages
    ages.sample(1091.0)
    presence.seen("ioboard", ["a"], when=1100.0)
    assert ages.take(1105.0) == 90.0
    assert ages.take(1110.0) == 10.0  # a new interval: only the current silence


def test_unreachable_cloudwatch_is_counted_not_fatal(make_settings) -> None:
    from tests.support import free_port

    settings = make_settings(
        **aws_env(f"http://127.0.0.1:{free_port()}"), CLOUDWATCH_METRICS="true", CLOUDWATCH_SECONDS="0.1"
    )
    thread = cloudwatch.CloudWatchMetrics(settings, Presence())
    thread.post()
    assert health.counters()["cloudwatch.errors"] == 1
    assert health.components()["cloudwatch"]["state"] == "failing"
    cloudwatch.post_fatal(settings)  # logs, never raises
