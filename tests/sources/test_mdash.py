"""MdashDiscovery against a local mDash stand-in: tags, topics, presence, failures, recovery, key hidden."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from app.core import health
from app.core.settings import Settings
from app.engine.presence import presence
from app.sources import mdash
from app.sources.mdash import MdashDiscovery
from pylib import threads
from tests.http_standin import MdashStandIn
from tests.support import free_port, wait_for

KEY = "mdash-key-Pq7/Zx+9&w=="  # characters that URL-encode differently, to catch an encoded leak
GARAGE_SEEN = "2023-11-20T10:00:00Z"


def config(topic: str) -> dict[str, Any]:
    return {"app": {"mqtt_pub_topic": topic}}


DEVICES: list[Any] = [
    # tags as a dict at the top level, config in the reported shadow
    {
        "id": "esp32_5A1B2C",
        "online": True,
        "last_seen": 1700000000,
        "tags": {"meter": True},
        "shadow": {
            "state": {"reported": {"config": config("meter/electricity"), "ota": {"fw_version": "1.0"}}}
        },
    },
    # tags as a list in the shadow, config at the top level, last_seen as ISO text
    {
        "id": "esp32_7D8E9F",
        "online": False,
        "last_seen": GARAGE_SEEN,
        "shadow": {"tags": ["sensor"]},
        "config": config("sensor/garage/esp32_7D8E9F"),
    },
    # the original hub's form: a CSV string in shadow.tags.labels; a flat dotted config key
    {
        "id": "esp32_0C0FFE",
        "online": True,
        "last_seen": 1700000500000,  # milliseconds
        "shadow": {
            "tags": {"labels": "Sensor,porch"},
            "state": {"reported": {"config": {"app.mqtt_pub_topic": "sensor/porch"}}},
        },
    },
    # a wanted tag but no topic in its config: listed, but no topic and no presence
    {"id": "esp32_NOCONF", "online": True, "last_seen": 1700000600, "tags": ["meter"]},
    # not wanted: another tag, a tag switched off, no tags at all
    {
        "id": "esp32_SWITCH",
        "online": True,
        "tags": {"switch": True},
        "config": config("switch/state/esp32_SWITCH"),
    },
    {"id": "esp32_OFFTAG", "online": True, "tags": {"sensor": False}, "config": config("sensor/attic")},
    {"id": "esp32_NOTAGS", "online": True, "config": config("sensor/cellar")},
    # junk an API might one day return
    "not a device",
    {"online": True, "tags": ["sensor"]},
]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mdash, "RETRY_INITIAL", 0.05)
    monkeypatch.setattr(mdash, "RETRY_MAX", 0.2)


@pytest.fixture
def standin() -> Iterator[MdashStandIn]:
    """The stand-in on a free port, not started yet."""
    server = MdashStandIn(KEY, free_port())
    server.devices = DEVICES
    yield server
    server.stop()


@pytest.fixture
def mdash_settings(make_settings: Callable[..., Settings], standin: MdashStandIn) -> Callable[..., Settings]:
    def make(poll_seconds: int = 1, **env: str) -> Settings:
        base = {"MDASH_API_KEY": KEY, "MDASH_API_BASE_URL": standin.url}
        base.update(env)
        # below the 10 s minimum a person may configure, so a test sees several polls quickly
        return dataclasses.replace(make_settings(**base), mdash_poll_seconds=poll_seconds)

    return make


@pytest.fixture
def start_discovery() -> Iterator[Callable[..., MdashDiscovery]]:
    started: list[MdashDiscovery] = []

    def start(settings: Settings, **kwargs: Any) -> MdashDiscovery:
        discovery = MdashDiscovery(settings, **kwargs)
        discovery.start()
        started.append(discovery)
        return discovery

    yield start
    threads.shutting_down.set()
    for discovery in started:
        discovery.join(timeout=10)
        assert not discovery.is_alive(), "MdashDiscovery did not stop after shutdown"


def mdash_state() -> dict[str, Any]:
    return health.components().get("mdash", {})


def counter(name: str) -> int:
    return health.counters().get(f"mdash.{name}", 0)


def test_tagged_devices_give_topics_devices_and_presence(
    standin: MdashStandIn,
    mdash_settings: Callable[..., Settings],
    start_discovery: Callable[..., MdashDiscovery],
) -> None:
    standin.start()
    discovery = start_discovery(mdash_settings(poll_seconds=60))
    assert discovery.name == "MdashDiscovery"
    wait_for(discovery.polled.is_set, what="first poll")

    assert discovery.topics() == {
        "meter/electricity": "esp32_5A1B2C",
        "sensor/garage/esp32_7D8E9F": "esp32_7D8E9F",
        "sensor/porch": "esp32_0C0FFE",
    }
    devices = discovery.devices()
    assert set(devices) == {"esp32_5A1B2C", "esp32_7D8E9F", "esp32_0C0FFE", "esp32_NOCONF"}
    assert devices["esp32_7D8E9F"].origin == "sensor/garage"
    assert devices["esp32_0C0FFE"].tags == {"sensor", "porch"}
    assert devices["esp32_NOCONF"].topic is None and devices["esp32_NOCONF"].origin is None

    garage_seen = datetime(2023, 11, 20, 10, tzinfo=UTC).timestamp()
    assert presence.reported("meter/electricity") == (True, 1700000000.0)
    assert presence.reported("sensor/garage") == (False, garage_seen)
    assert presence.reported("sensor/porch") == (True, 1700000500.0)
    for origin in ("switch/state", "sensor/attic", "sensor/cellar"):
        assert presence.reported(origin) is None

    request = standin.requests[0]
    assert request["query"]["access_token"] == [KEY]
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert mdash_state()["state"] == "ok"
    assert counter("polls") == 1
    assert counter("errors") == 0


def test_later_polls_follow_devices_going_offline_and_retagged(
    standin: MdashStandIn,
    mdash_settings: Callable[..., Settings],
    start_discovery: Callable[..., MdashDiscovery],
) -> None:
    standin.start()
    discovery = start_discovery(mdash_settings(poll_seconds=1, MDASH_DEVICE_TAGS_CSV="meter"))
    wait_for(discovery.polled.is_set, what="first poll")
    assert discovery.topics() == {"meter/electricity": "esp32_5A1B2C"}  # only the meter tag is wanted now
    assert presence.reported("meter/electricity") == (True, 1700000000.0)
    assert presence.reported("sensor/garage") is None

    meter = dict(DEVICES[0], online=False, last_seen=1700003600)
    standin.devices = [meter]
    wait_for(lambda: presence.reported("meter/electricity") == (False, 1700003600.0), what="offline reported")

    standin.devices = [dict(meter, tags={"meter": False})]
    wait_for(lambda: discovery.topics() == {}, what="untagged device forgotten")
    assert discovery.devices() == {}
    assert discovery.is_alive()


def test_failures_are_retried_with_backoff_and_recovered_from_without_leaking_the_key(
    standin: MdashStandIn,
    mdash_settings: Callable[..., Settings],
    start_discovery: Callable[..., MdashDiscovery],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # in case another library turned it down
    # mDash down at start-up: a warning and retries, never a dead thread
    discovery = start_discovery(mdash_settings(poll_seconds=1), timeout=0.5)
    wait_for(lambda: counter("errors") >= 2, what="connection refused, retried")
    assert mdash_state()["state"] == "unreachable"
    assert "cannot connect" in mdash_state()["detail"]
    assert discovery.topics() == {}

    standin.start()
    wait_for(lambda: mdash_state().get("state") == "ok", what="first successful poll")
    topics = discovery.topics()
    assert len(topics) == 3

    for mode, detail in [
        ("500", "HTTP 500"),
        ("hang", "no answer within 0.5 s"),
        ("badjson", "bad JSON"),
        ("object", "expected a JSON list"),
    ]:
        errors = counter("errors")
        standin.mode = mode
        wait_for(lambda n=errors: counter("errors") >= n + 2, what=f"{mode}: failed and retried")
        assert mdash_state()["state"] == "unreachable"
        assert detail in mdash_state()["detail"]
        assert discovery.topics() == topics  # the last good answer stands while mDash misbehaves
        standin.release.set()
        standin.mode = "ok"
        standin.release.clear()
        wait_for(lambda: mdash_state().get("state") == "ok", timeout=15, what=f"recovery after {mode}")

    standin.stop()  # mDash going away mid-run
    wait_for(lambda: mdash_state().get("state") == "unreachable", what="unreachable after stop")
    standin.start()
    wait_for(lambda: mdash_state().get("state") == "ok", what="recovery after restart")

    assert discovery.is_alive()
    assert threads.failures() == []
    assert counter("polls") > counter("errors") > 0
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "app.sources.mdash"
    ]
    assert any("cannot connect" in w for w in warnings)
    assert any("HTTP 500" in w for w in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # urllib3 did log request lines at DEBUG: they were there to leak, and they did not
    request_lines = [
        r.getMessage() for r in caplog.records if r.name.startswith("urllib3") and "GET " in r.getMessage()
    ]
    assert request_lines and all("access_token=***" in line for line in request_lines)
    assert_no_key(caplog)


def test_a_wrong_key_is_reported_without_the_key(
    standin: MdashStandIn,
    mdash_settings: Callable[..., Settings],
    start_discovery: Callable[..., MdashDiscovery],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.key = "the-right-key"
    standin.start()
    discovery = start_discovery(mdash_settings())
    wait_for(lambda: counter("errors") >= 2, what="401 retried")
    assert mdash_state()["detail"] == "HTTP 401 Unauthorized (check MDASH_API_KEY)"
    assert discovery.is_alive()
    assert_no_key(caplog)


def assert_no_key(caplog: pytest.LogCaptureFixture) -> None:
    from urllib.parse import quote, quote_plus

    forms = {KEY, quote(KEY, safe=""), quote_plus(KEY)}
    texts = [caplog.text] + [r.getMessage() for r in caplog.records]
    texts += [r.exc_text or "" for r in caplog.records]
    texts += [str(c.get("detail")) for c in health.components().values()]
    for form in forms:
        assert all(form not in text for text in texts), f"the key ({form}) reached a log line"


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({"meter": True, "Sensor": 1, "off": False, "none": None}, {"meter", "sensor"}),
        (["meter", " sensor "], {"meter", "sensor"}),
        ({"labels": "meter, sensor"}, {"meter", "sensor"}),
        ("meter,sensor", {"meter", "sensor"}),
        (None, set()),
        (42, set()),
    ],
)
def test_tag_names_accepts_each_shape(value: Any, names: set[str]) -> None:
    assert mdash.tag_names(value) == names


def test_lookup_and_origin() -> None:
    assert mdash.lookup({"app": {"mqtt_pub_topic": "a/b"}}, "app.mqtt_pub_topic") == "a/b"
    assert mdash.lookup({"app.mqtt_pub_topic": "a/b"}, "app.mqtt_pub_topic") == "a/b"
    assert mdash.lookup({"app": "x"}, "app.mqtt_pub_topic") is None
    assert mdash.lookup(None, "app.mqtt_pub_topic") is None
    assert mdash.origin_of("sensor/garage/esp32_7D8E9F") == "sensor/garage"
    assert mdash.origin_of("meter/electricity") == "meter/electricity"
    assert mdash.origin_of("meter") == "meter"


def test_parse_devices_rejects_a_non_list() -> None:
    with pytest.raises(mdash.PollError):
        mdash.parse_devices({"devices": []}, ["meter"], "app.mqtt_pub_topic")
