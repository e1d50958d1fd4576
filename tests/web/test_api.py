"""Tests for the JSON API and the WebServer thread, with the real change code behind a stand-in processor."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core import channels, health
from app.core.channels import Command, Reply
from app.core.settings import Settings
from app.engine import commands, config_changes
from app.engine.presence import Presence
from app.ops import backup_status
from app.store.models import Base, Decision, DecisionOutput, InputConfig, InputLink, OutputConfig, OutputLink
from app.web import api, create_app
from app.web.server import WebServer
from pylib import inproc, threads


class StandInProcessor(threads.AppThread):
    """Test scaffolding around the real config_changes.apply, in the place of the EventProcessor."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__("StandInProcessor")
        self._sessions = sessions
        self._pull = inproc.bind_pull(channels.PROCESSOR)
        self.done = threading.Event()
        self.commands: list[Command] = []

    def work(self) -> None:
        try:
            while not self.done.is_set() and not threads.shutting_down.is_set():
                cmd = inproc.recv(self._pull, timeout_ms=50)
                if cmd is None:
                    continue
                self.commands.append(cmd)
                with self._sessions() as session:
                    reply = config_changes.apply(session, cmd)
                commands.answer(cmd, reply)
        finally:
            self._pull.close(linger=0)
        if self.done.is_set():
            self.untrack()  # stopped by the fixture on purpose, not a death


@dataclass
class Hub:
    settings: Settings
    sessions: sessionmaker[Session]
    presence: Presence
    app: Flask
    client: FlaskClient
    processor: StandInProcessor
    ids: dict[str, int]


def naive_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC).replace(tzinfo=None)


@pytest.fixture
def hub(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Hub]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'api.db'}", connect_args={"check_same_thread": False})
    Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    settings = make_settings(MAX_HEARTBEAT_DELAY_SECONDS="300", DEVICE_NAME="the-hub")
    with sessions() as s:
        rows: list[Any] = [
            InputConfig(
                device_key="door",
                device_type="Contact",
                device_label="Door",
                device_enabled=True,
                location="Hall",
                origin="ioboard",
                group_name="Downstairs",
            ),
            InputConfig(device_key="hall", device_type="Motion", device_label="Hall", origin="ioboard"),
            InputConfig(device_key="panic", device_type="Panic Button", origin="the-hub"),
            OutputConfig(device_key="buzzer", device_type="Buzzer", origin="ioboard"),
            OutputConfig(device_key="cam", device_type="Camera", device_params="u:p@10.0.0.5:80"),
            OutputConfig(device_key="siren", device_type="switch", device_enabled=False),
        ]
        s.add_all(rows)
        s.commit()
        ids = {row.device_key: row.id for row in rows}
    processor = StandInProcessor(sessions)
    processor.start()
    presence = Presence()
    app = create_app(settings, sessions, presence)
    # These tests are about the API's behaviour; login and CSRF have tests of their own (test_auth).
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True)
    yield Hub(settings, sessions, presence, app, app.test_client(), processor, ids)
    processor.done.set()
    processor.join(timeout=5)
    engine.dispose()


def row_of(hub: Hub, model: type[Any], row_id: int) -> Any:
    with hub.sessions() as s:
        row = s.get(model, row_id)
        s.expunge(row)
        return row


# ---- health ---------------------------------------------------------------------------------


def test_health_is_503_until_ready(hub: Hub) -> None:
    health.set_state("rabbitmq_source", "connecting")
    health.count("processor.errors", 2)
    response = hub.client.get("/api/health")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["ready"] is False
    assert response.json["components"]["rabbitmq_source"]["state"] == "connecting"
    health.mark_ready()
    response = hub.client.get("/api/health")
    assert response.status_code == 200
    assert response.json == {
        "status": "degraded",
        "ready": True,
        "down": ["rabbitmq_source", "control_publisher", "mqtt", "event_processor", "database"],
        "unhealthy": {},
        "components": health.components(),
        "counters": {"processor.errors": 2},
        "backup": backup_status.read_status(hub.settings).as_dict(),
        "clocks": {"learned": 0, "warning_seconds": 30, "offsets": {}, "more": 0},
    }
    assert response.json["backup"]["state"] == "not configured"
    for name in ("rabbitmq_source", "control_publisher", "mqtt"):
        health.set_state(name, "connected")
    health.set_state("event_processor", "running")
    health.set_state("database", "ok")
    assert hub.client.get("/api/health").json["status"] == "ok"  # type: ignore[index]


def test_health_without_login_says_status_only(hub: Hub) -> None:
    hub.app.config["LOGIN_DISABLED"] = False
    health.set_state("rabbitmq_source", "connected", "guest@10.1.2.3:5672 vhost /house, RabbitMQ 3.13.1")
    health.set_state("mqtt", "disconnected", "mqtt-user@10.1.2.4:1883")
    health.set_state("control_publisher", "connected", "10.1.2.3:5672")
    health.set_state("event_processor", "running")
    health.set_state("database", "ok", "0008_history")
    health.count("processor.errors", 2)
    response = hub.client.get("/api/health")
    assert (response.status_code, response.json) == (
        503,
        {"status": "starting", "ready": False, "down": ["mqtt"], "unhealthy": {}},
    )
    health.mark_ready()
    response = hub.client.get("/api/health")
    assert (response.status_code, response.json) == (
        200,
        {"status": "degraded", "ready": True, "down": ["mqtt"], "unhealthy": {}},
    )
    text = response.get_data(as_text=True)
    for detail in ("10.1.2", "guest", "mqtt-user", "/house", "3.13", "counters", "backup"):
        assert detail not in text


def test_health_turns_503_when_a_broker_is_down_past_the_grace_and_200_when_it_returns(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'health.db'}", connect_args={"check_same_thread": False}
    )
    Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    patient = make_settings()  # HEALTH_DOWN_GRACE_SECONDS 120 by default
    assert patient.health_down_grace_seconds == 120
    strict = create_app(make_settings(HEALTH_DOWN_GRACE_SECONDS="0"), sessions, Presence()).test_client()
    client = create_app(patient, sessions, Presence()).test_client()
    health.mark_ready()
    health.set_state("rabbitmq_source", "connected", "127.0.0.1:5672")
    health.set_state("mqtt", "down", "connection refused")
    health.set_state("mqtt", "connecting", "127.0.0.1:1883")  # a retry does not restart the clock
    since = health.components()["mqtt"]["since"]
    assert client.get("/api/health").status_code == 200  # inside the grace: a broker restart
    assert health.critical_down(120, now=since + 119) == {}
    down = health.critical_down(120, now=since + 121)
    assert list(down) == ["mqtt"] and "grace 120 s" in down["mqtt"]

    response = strict.get("/api/health")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["ready"] is True and response.json["status"] == "unhealthy"
    assert list(response.json["unhealthy"]) == ["mqtt"]

    health.set_state("mqtt", "connected", "127.0.0.1:1883")
    response = strict.get("/api/health")
    assert response.status_code == 200
    assert (
        response.json is not None
        and response.json["unhealthy"] == {}
        and response.json["status"] != "unhealthy"
    )
    # a component that is not critical (Telegram, InfluxDB) never makes the hub unhealthy
    health.set_state("telegram", "down", "unreachable")
    assert strict.get("/api/health").status_code == 200
    engine.dispose()


# ---- devices --------------------------------------------------------------------------------


def test_devices_lists_inputs_and_outputs_with_presence(hub: Hub) -> None:
    now = time.time()
    hub.presence.seen("ioboard", ["door"], when=now - 10)
    hub.presence.seen("ioboard", ["hall"], when=now - 1000)  # older than the 300 s heartbeat delay
    hub.presence.seen("ioboard", ["buzzer"], when=now - 900)
    with hub.sessions() as s:
        buzzer = s.get(OutputConfig, hub.ids["buzzer"])
        assert buzzer is not None
        buzzer.last_seen = naive_utc(now - 20)  # newer than presence: the column wins
        s.commit()
    response = hub.client.get("/api/devices")
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert [d["device_key"] for d in body["inputs"]] == ["door", "hall", "panic"]
    assert [d["device_key"] for d in body["outputs"]] == ["buzzer", "cam", "siren"]
    door, hall, panic = body["inputs"]
    assert door == {
        "id": hub.ids["door"],
        "device_key": "door",
        "device_label": "Door",
        "device_type": "Contact",
        "device_enabled": True,
        "online": True,
        "last_seen": datetime.fromtimestamp(now - 10, tz=UTC).isoformat(),
        "clock_offset": None,  # no heartbeats with timestamps seen, so no offset learned
        "location": "Hall",
        "origin": "ioboard",
        "group_name": "Downstairs",
    }
    assert door["last_seen"].endswith("+00:00")
    assert (hall["online"], hall["device_enabled"]) == (False, False)  # NULL input flag means off
    assert hall["last_seen"] is not None
    assert (panic["online"], panic["last_seen"]) == (True, None)  # built-in device
    buzzer_out, cam, siren = body["outputs"]
    assert buzzer_out["online"] is True
    assert abs(datetime.fromisoformat(buzzer_out["last_seen"]).timestamp() - (now - 20)) < 0.01
    assert "group_name" not in buzzer_out
    assert (cam["online"], cam["last_seen"], cam["device_enabled"]) == (False, None, True)  # NULL means on
    assert siren["device_enabled"] is False


# ---- inputs ---------------------------------------------------------------------------------


def test_get_input_returns_every_column_and_links(hub: Hub) -> None:
    with hub.sessions() as s:
        s.add_all(
            [
                OutputLink(input_device_id=hub.ids["door"], output_device_id=hub.ids["cam"]),
                OutputLink(input_device_id=hub.ids["door"], output_device_id=hub.ids["buzzer"]),
                InputLink(input_device_id=hub.ids["door"], linked_device_id=hub.ids["hall"]),
            ]
        )
        s.commit()
    hub.presence.seen("ioboard", ["door"])
    body = hub.client.get(f"/api/inputs/{hub.ids['door']}").json
    assert body is not None
    columns = {c.name for c in InputConfig.__table__.columns}
    assert columns <= set(body)
    assert body["device_key"] == "door" and body["group_name"] == "Downstairs"
    assert body["online"] is True and body["last_seen"].endswith("+00:00")
    assert body["output_ids"] == sorted([hub.ids["cam"], hub.ids["buzzer"]])
    assert body["input_ids"] == [hub.ids["hall"]]


def test_patch_input_returns_the_saved_row(hub: Hub) -> None:
    url = f"/api/inputs/{hub.ids['hall']}"
    patch = {"group_name": "  Upstairs ", "activation_interval": 30, "device_label": " Landing "}
    response = hub.client.patch(url, json=patch)
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert body["group_name"] == "Upstairs"  # as saved, not as sent
    assert body["device_label"] == "Landing"
    assert body["activation_interval"] == 30
    assert body["customized"] is True and body["label_customized"] is True
    assert hub.processor.commands[-1].action == "update_input"
    assert hub.processor.commands[-1].actor == "web"  # LOGIN_DISABLED here; with login it names the user
    assert row_of(hub, InputConfig, hub.ids["hall"]).group_name == "Upstairs"
    assert hub.client.get(url).json == body


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_enabled", "yes"),
        ("device_enabled", 1),
        ("activation_interval", 86401),
        ("activation_interval", "60"),
        ("multi_trigger", None),
        ("multi_trigger_rate", 0),
        ("multi_trigger_interval", 100000),
        ("group_name", 12),
        ("device_label", "x" * 101),
        ("info_notify", "on"),
        ("device_type", "Camera"),
    ],
)
def test_patch_input_validation_errors_name_the_field(hub: Hub, field: str, value: Any) -> None:
    response = hub.client.patch(f"/api/inputs/{hub.ids['door']}", json={field: value})
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["field"] == field
    assert field in response.json["error"]
    assert hub.processor.commands == []  # refused before the processor was asked


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"null", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"device_enabled=true", "application/x-www-form-urlencoded"),
    ],
)
def test_patch_needs_a_json_object(hub: Hub, body: bytes, content_type: str) -> None:
    for url in (f"/api/inputs/{hub.ids['door']}", f"/api/outputs/{hub.ids['cam']}"):
        response = hub.client.patch(url, data=body, content_type=content_type)
        assert response.status_code == 400
        assert response.json is not None and "JSON object" in response.json["error"]


def test_patch_without_content_type_still_reads_json(hub: Hub) -> None:
    response = hub.client.patch(f"/api/inputs/{hub.ids['hall']}", data=b'{"device_enabled": true}')
    assert response.status_code == 200
    assert response.json is not None and response.json["device_enabled"] is True


def test_patch_empty_object_is_400(hub: Hub) -> None:
    response = hub.client.patch(f"/api/inputs/{hub.ids['door']}", json={})
    assert response.status_code == 400
    assert response.json is not None and response.json["field"] == "fields"


def test_unknown_ids_are_json_404s(hub: Hub) -> None:
    for method, url, body in [
        ("get", "/api/inputs/9999", None),
        ("patch", "/api/inputs/9999", {"device_enabled": True}),
        ("get", "/api/outputs/9999", None),
        ("patch", "/api/outputs/9999", {"device_enabled": True}),
        ("put", "/api/inputs/9999/outputs", {"output_ids": []}),
        ("put", "/api/inputs/9999/inputs", {"input_ids": []}),
        ("get", "/api/inputs/not-a-number", None),
        ("get", f"/api/inputs/{2**64}", None),
        ("patch", f"/api/outputs/{2**64}", {"device_enabled": True}),
        ("get", "/api/nothing-here", None),
    ]:
        response = getattr(hub.client, method)(url, json=body)
        assert response.status_code == 404, url
        assert response.is_json and "error" in (response.json or {}), url


def test_wrong_method_is_a_json_405(hub: Hub) -> None:
    response = hub.client.delete(f"/api/inputs/{hub.ids['door']}")
    assert response.status_code == 405
    assert response.json == {"error": "method not allowed"}
    assert "PATCH" in response.headers["Allow"]


# ---- outputs --------------------------------------------------------------------------------


def test_get_and_patch_output(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    url = f"/api/outputs/{hub.ids['cam']}"
    body = hub.client.get(url).json
    assert body is not None
    assert {c.name for c in OutputConfig.__table__.columns} <= set(body)
    assert body["device_enabled"] is None and body["online"] is False
    assert body["device_params"] == "u:••••••@10.0.0.5:80"  # write-only: the password never comes back
    patch = {
        "device_label": "Porch camera",
        "device_params": " admin:n3wpass@10.0.0.6:80 ",
        "trigger_topic": "event.trigger.porch",
        "trigger_interval": 20,
        "device_enabled": False,
    }
    response = hub.client.patch(url, json=patch)
    assert response.status_code == 200
    saved = response.json
    assert saved is not None
    assert saved["device_params"] == "admin:••••••@10.0.0.6:80"
    assert row_of(hub, OutputConfig, hub.ids["cam"]).device_params == "admin:n3wpass@10.0.0.6:80"
    assert "n3wpass" not in response.get_data(as_text=True)
    # What GET showed, sent back with another change, keeps the stored password.
    response = hub.client.patch(url, json={"device_params": saved["device_params"], "trigger_interval": 30})
    assert response.status_code == 200, response.json
    assert row_of(hub, OutputConfig, hub.ids["cam"]).device_params == "admin:n3wpass@10.0.0.6:80"
    # Edited around the mask (a new address): the hidden password is put back.
    response = hub.client.patch(url, json={"device_params": "admin:••••••@10.0.0.7:80"})
    assert response.status_code == 200, response.json
    assert row_of(hub, OutputConfig, hub.ids["cam"]).device_params == "admin:n3wpass@10.0.0.7:80"
    response = hub.client.patch(url, json={"device_params": "root:••••••@10.0.0.7:80,ab•"})
    assert response.status_code == 400 and response.json["field"] == "device_params"  # type: ignore[index]
    assert saved["trigger_topic"] == "event.trigger.porch"
    assert (saved["trigger_interval"], saved["device_enabled"]) == (20, False)
    assert (saved["device_label"], saved["label_customized"]) == ("Porch camera", True)
    assert "n3wpass" not in caplog.text and "u:p@" not in caplog.text
    assert "device_params changed" in caplog.text
    # Empty strings are saved as null.
    cleared = hub.client.patch(url, json={"trigger_topic": "", "device_params": ""}).json
    assert cleared is not None
    assert (cleared["trigger_topic"], cleared["device_params"]) == (None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_enabled", "false"),
        ("device_params", 123),
        ("trigger_topic", "has space"),
        ("trigger_topic", "event.#"),
        ("trigger_topic", "t" * 256),
        ("trigger_interval", -1),
        ("trigger_interval", 3.5),
        ("device_label", ["x"]),
        ("group_name", "outputs have none"),
    ],
)
def test_patch_output_validation_errors_name_the_field(hub: Hub, field: str, value: Any) -> None:
    response = hub.client.patch(f"/api/outputs/{hub.ids['siren']}", json={field: value})
    assert response.status_code == 400
    assert response.json is not None and response.json["field"] == field


# ---- links ----------------------------------------------------------------------------------


def test_put_output_links_is_atomic_and_idempotent(hub: Hub) -> None:
    url = f"/api/inputs/{hub.ids['door']}/outputs"
    wanted = [hub.ids["cam"], hub.ids["buzzer"], hub.ids["cam"]]
    expected = {"input_id": hub.ids["door"], "output_ids": sorted([hub.ids["cam"], hub.ids["buzzer"]])}
    first = hub.client.put(url, json={"output_ids": wanted})
    assert (first.status_code, first.json) == (200, expected)
    again = hub.client.put(url, json={"output_ids": wanted})
    assert (again.status_code, again.json) == (200, expected)
    bad = hub.client.put(url, json={"output_ids": [hub.ids["siren"], 8888]})
    assert bad.status_code == 400
    assert bad.json is not None and bad.json["field"] == "output_ids" and "8888" in bad.json["error"]
    assert hub.client.get(f"/api/inputs/{hub.ids['door']}").json["output_ids"] == expected["output_ids"]  # type: ignore[index]
    cleared = hub.client.put(url, json={"output_ids": []})
    assert cleared.json == {"input_id": hub.ids["door"], "output_ids": []}


@pytest.mark.parametrize(
    "body",
    [{}, {"output_ids": "1"}, {"output_ids": [1, "2"]}, {"output_ids": [None]}, {"output_ids": [2**64]}],
)
def test_put_output_links_checks_the_body(hub: Hub, body: dict[str, Any]) -> None:
    response = hub.client.put(f"/api/inputs/{hub.ids['door']}/outputs", json=body)
    assert response.status_code == 400
    assert response.json is not None and response.json["field"] == "output_ids"


def test_put_input_links(hub: Hub) -> None:
    url = f"/api/inputs/{hub.ids['door']}/inputs"
    response = hub.client.put(url, json={"input_ids": [hub.ids["hall"], hub.ids["panic"], hub.ids["hall"]]})
    expected = {"input_id": hub.ids["door"], "input_ids": sorted([hub.ids["hall"], hub.ids["panic"]])}
    assert (response.status_code, response.json) == (200, expected)
    assert hub.client.put(url, json={"input_ids": [hub.ids["hall"], hub.ids["panic"]]}).json == expected
    itself = hub.client.put(url, json={"input_ids": [hub.ids["door"]]})
    assert itself.status_code == 400 and itself.json is not None and itself.json["field"] == "input_ids"
    missing = hub.client.put(url, json={"input_ids": [hub.ids["hall"], 7777]})
    assert missing.status_code == 400 and missing.json is not None and missing.json["field"] == "input_ids"
    not_a_list = hub.client.put(url, json={"input_ids": 3})
    assert not_a_list.status_code == 400
    assert hub.client.get(f"/api/inputs/{hub.ids['door']}").json["input_ids"] == expected["input_ids"]  # type: ignore[index]


# ---- outputs enabled ------------------------------------------------------------------------


def test_outputs_enabled_switch(hub: Hub) -> None:
    assert hub.client.get("/api/outputs-enabled").json == {"enabled": True}
    response = hub.client.put("/api/outputs-enabled", json={"enabled": False})
    assert (response.status_code, response.json) == (200, {"enabled": False})
    assert hub.client.get("/api/outputs-enabled").json == {"enabled": False}
    with hub.sessions() as s:
        assert config_changes.outputs_enabled(s) is False
    for bad in ({"enabled": "false"}, {"enabled": 0}, {}):
        response = hub.client.put("/api/outputs-enabled", json=bad)
        assert response.status_code == 400
        assert response.json is not None and response.json["field"] == "enabled"
    assert hub.client.put("/api/outputs-enabled", json={"enabled": True}).json == {"enabled": True}


# ---- events ---------------------------------------------------------------------------------

BASE = datetime(2024, 1, 1, 12, 0, 0)


@pytest.fixture
def decisions(hub: Hub) -> dict[str, int]:
    door, hall = hub.ids["door"], hub.ids["hall"]
    buzzer, cam = hub.ids["buzzer"], hub.ids["cam"]
    with hub.sessions() as s:
        first = Decision(
            timestamp=BASE,
            input_device_id=door,
            input_key="door",
            input_label="Door",
            origin="ioboard",
            event_detail="Tamper",
            fired=True,
            outputs=[
                DecisionOutput(output_device_id=buzzer, output_key="buzzer", fired=True),
                DecisionOutput(
                    output_device_id=cam,
                    output_key="cam",
                    output_label="Cam",
                    reason="disabled",
                    detail="off",
                ),
            ],
        )
        second = Decision(
            timestamp=BASE + timedelta(minutes=30),
            input_device_id=hall,
            input_key="hall",
            fired=False,
            reason="latched",
            detail="latched until 12:31",
        )
        third = Decision(
            timestamp=BASE + timedelta(hours=1),
            input_device_id=door,
            input_key="door",
            fired=True,
            outputs=[DecisionOutput(output_device_id=cam, output_key="cam", fired=True)],
        )
        s.add_all([first, second, third])
        s.commit()
        return {"first": first.id, "second": second.id, "third": third.id}


def events(hub: Hub, query: str = "") -> list[dict[str, Any]]:
    response = hub.client.get(f"/api/events{query}")
    assert response.status_code == 200, response.json
    assert response.json is not None
    return response.json["events"]


def test_events_newest_first_with_outputs(hub: Hub, decisions: dict[str, int]) -> None:
    got = events(hub)
    assert [e["id"] for e in got] == [decisions["third"], decisions["second"], decisions["first"]]
    first = got[2]
    assert first == {
        "kind": "decision",
        "id": decisions["first"],
        "timestamp": "2024-01-01T12:00:00+00:00",
        "input_id": hub.ids["door"],
        "input_key": "door",
        "input_label": "Door",
        "origin": "ioboard",
        "event_detail": "Tamper",
        "fired": True,
        "reason": None,
        "detail": None,
        "outputs": [
            {
                "output_id": hub.ids["buzzer"],
                "output_key": "buzzer",
                "output_label": None,
                "fired": True,
                "reason": None,
                "detail": None,
            },
            {
                "output_id": hub.ids["cam"],
                "output_key": "cam",
                "output_label": "Cam",
                "fired": False,
                "reason": "disabled",
                "detail": "off",
            },
        ],
    }
    assert got[1]["reason"] == "latched" and got[1]["outputs"] == []


def test_events_filters(hub: Hub, decisions: dict[str, int]) -> None:
    both_door = [decisions["third"], decisions["first"]]
    assert [e["id"] for e in events(hub, f"?input={hub.ids['door']}")] == both_door
    assert [e["id"] for e in events(hub, "?input=door")] == both_door
    assert [e["id"] for e in events(hub, "?input=nobody")] == []
    assert [e["id"] for e in events(hub, f"?input={2**70}&output=%C2%B2")] == []  # not ids, only keys
    assert [e["id"] for e in events(hub, f"?output={hub.ids['cam']}")] == both_door
    assert [e["id"] for e in events(hub, "?output=buzzer")] == [decisions["first"]]
    assert [e["id"] for e in events(hub, f"?input=door&output={hub.ids['buzzer']}")] == [decisions["first"]]
    assert [e["id"] for e in events(hub, "?since=2024-01-01T12:30:00Z")] == [
        decisions["third"],
        decisions["second"],
    ]
    assert [e["id"] for e in events(hub, "?since=2024-01-01T14:30:00%2B02:00")] == [
        decisions["third"],
        decisions["second"],
    ]
    unix = int(BASE.replace(tzinfo=UTC).timestamp()) + 1
    assert [e["id"] for e in events(hub, f"?since={unix}")] == [decisions["third"], decisions["second"]]
    assert [e["id"] for e in events(hub, "?limit=1")] == [decisions["third"]]
    assert [e["id"] for e in events(hub, "?limit=2&input=door")] == both_door


def test_events_limit_defaults_to_100(hub: Hub) -> None:
    with hub.sessions() as s:
        s.add_all(
            Decision(timestamp=BASE + timedelta(seconds=i), input_key="door", fired=False) for i in range(120)
        )
        s.commit()
    got = events(hub)
    assert len(got) == 100
    assert got[0]["timestamp"] == (BASE + timedelta(seconds=119)).replace(tzinfo=UTC).isoformat()
    assert len(events(hub, "?limit=1000")) == 120


def test_events_next_cursor_pages_through_everything_once(hub: Hub) -> None:
    with hub.sessions() as s:
        # ten at each time: ties in time go by id
        s.add_all(
            Decision(timestamp=BASE + timedelta(seconds=i // 10), input_key="door", fired=False)
            for i in range(45)
        )
        s.commit()
    everything = events(hub, "?limit=1000")
    pages, query = [], "?limit=10"
    while True:
        answer = hub.client.get(f"/api/events{query}").get_json()
        pages.append([e["id"] for e in answer["events"]])
        if answer["next"] is None:
            break
        query = f"?limit=10&before={answer['next']}"
    assert [len(p) for p in pages] == [10, 10, 10, 10, 5]
    assert [i for p in pages for i in p] == [e["id"] for e in everything]
    # the old offset still pages, and its answer's next leads on from there
    answer = hub.client.get("/api/events?limit=10&offset=10").get_json()
    assert [e["id"] for e in answer["events"]] == pages[1]
    assert [e["id"] for e in events(hub, f"?limit=10&before={answer['next']}")] == pages[2]
    # filters hold across pages
    assert hub.client.get("/api/events?limit=45&kind=change").get_json() == {
        "events": [],
        "next": None,
        "searched_to": None,
    }


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=1.5", "limit"),
        ("?since=yesterday", "since"),
        ("?since=2024-13-01", "since"),
        ("?since=nan", "since"),
        ("?since=1e30", "since"),
        ("?until=soon", "until"),
        ("?kind=decision,gossip", "kind"),
        ("?kind=,", "kind"),
        ("?q=" + "x" * 101, "q"),
        ("?before=yesterday", "before"),
        ("?before=20240101T000000.000000-1-gossip", "before"),
        ("?before=20241301T000000.000000-1-decision", "before"),
        ("?before=20240101T000000.000000-99999999999999999999-decision", "before"),
        ("?before=20240101T000000.000000-1-decision&offset=5", "offset"),
    ],
)
def test_events_bad_query_values_are_400(hub: Hub, query: str, param: str) -> None:
    response = hub.client.get(f"/api/events{query}")
    assert response.status_code == 400
    assert response.json is not None and response.json["field"] == param


# ---- failures -------------------------------------------------------------------------------


def test_processor_timeout_is_a_503(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(action: str, args: dict[str, Any], actor: str = "api", timeout: float = 5.0) -> Reply:
        return Reply(ok=False, error="the event processor did not answer in time", status=503)

    monkeypatch.setattr(api.commands, "request", silent)
    response = hub.client.put("/api/outputs-enabled", json={"enabled": False})
    assert response.status_code == 503
    assert response.json == {"error": "the event processor did not answer in time"}


def test_unexpected_errors_are_logged_and_answered_without_details(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(hub.settings, hub.sessions, hub.presence)
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True)

    def boom() -> str:
        raise RuntimeError("password=hunter2 in an exception message")

    def locked() -> str:
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    app.add_url_rule("/api/boom", view_func=boom)
    app.add_url_rule("/api/locked", view_func=locked)
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="app.web.api"):
        response = client.get("/api/boom")
    assert response.status_code == 500
    assert response.json == {"error": "internal error"}
    assert "RuntimeError" in caplog.text  # the traceback is in the log, not the response
    response = client.get("/api/locked")
    assert response.status_code == 503
    assert response.json is not None and "hunter2" not in json.dumps(response.json)


def test_oversized_body_is_a_json_413(hub: Hub) -> None:
    big = b'{"device_label": "' + b"x" * (api.MAX_BODY_BYTES + 10) + b'"}'
    response = hub.client.patch(f"/api/inputs/{hub.ids['door']}", data=big, content_type="application/json")
    assert response.status_code == 413
    assert response.is_json


# ---- through the real web server ------------------------------------------------------------


def fetch(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_web_server_serves_and_stops_quickly(hub: Hub) -> None:
    server = WebServer(hub.settings, hub.app)
    assert server.port > 0  # known before start()
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    status, body = fetch(f"{base}/api/health")
    assert (status, body["ready"]) == (503, False)
    assert body["components"]["web"] == {
        "state": "listening",
        "detail": f"127.0.0.1:{server.port}",
        "since": body["components"]["web"]["since"],
    }
    health.mark_ready()
    assert fetch(f"{base}/api/health")[0] == 200
    status, body = fetch(f"{base}/api/inputs/{hub.ids['door']}")
    assert (status, body["device_key"]) == (200, "door")
    request = urllib.request.Request(
        f"{base}/api/inputs/{hub.ids['hall']}",
        data=b'{"info_notify": true}',
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["info_notify"] is True
    started = time.monotonic()
    server.stop()
    server.join(timeout=2)
    assert not server.is_alive()
    assert time.monotonic() - started < 2
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/api/health", timeout=1)
    assert threads.failures() == []  # a requested stop is not a thread death
    assert health.components()["web"]["state"] == "stopped"


def test_web_server_stops_on_process_shutdown(make_settings: Callable[..., Settings]) -> None:
    app = Flask("idle")
    server = WebServer(make_settings(), app)
    server.start()
    started = time.monotonic()
    threads.shutting_down.set()
    server.join(timeout=2)
    assert not server.is_alive()
    assert time.monotonic() - started < 2


def test_web_server_stop_before_start_releases_the_port(make_settings: Callable[..., Settings]) -> None:
    server = WebServer(make_settings(), Flask("never"))
    port = server.port
    server.stop()
    again = WebServer(make_settings(APP_FLASK_HTTP_PORT=str(port)), Flask("again"))
    assert again.port == port
    again.stop()
