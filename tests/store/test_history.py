"""History: the original's event_log rows in the timeline; every config change kept with who and what."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.channels import Command
from app.engine import config_changes
from app.engine.presence import Presence
from app.store import audit, db, registry
from app.store.models import ConfigChange, Decision, DecisionOutput, EventLog, InputConfig, OutputConfig
from tests.store.test_db import ORIGINAL_SCHEMA
from tests.web.test_api import StandInProcessor
from tests.web.test_pages import page_app, text_of

# As the original left them: its schema, its rows, times written by SQLAlchemy from aware UTC datetimes
# (stored naive, no zone), one row per triggered output.
ORIGINAL_INPUTS = [
    (
        1,
        "Front Door Motion (Hallway)",
        "Motion",
        "Front Door Motion",
        0,
        None,
        None,
        None,
        None,
        1,
        0,
        None,
        0,
    ),
    (2, "Garage Contact (Garage)", "Contact", None, 0, None, None, None, None, 1, 0, "Outside", 0),
]
ORIGINAL_OUTPUTS = [
    (1, "Hallway Buzzer", "Buzzer", None, None),
    (2, "Porch Camera", "Camera", "Porch Cam", "u:p@cam"),
]
ORIGINAL_EVENTS = [
    (1, "Front Door Motion", "Hallway Buzzer", "2023-11-26 09:07:07.123456"),
    (2, "Front Door Motion", "Porch Cam", "2023-11-26 09:07:07.123456"),
    (3, "Garage Contact (Garage)", "Hallway Buzzer", "2023-11-27 22:15:00.000000"),
    (4, "Front Door Motion", "Hallway Buzzer", None),  # possible in the original: no time
]


def make_original(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(ORIGINAL_SCHEMA.read_text())
        conn.executemany(
            "INSERT INTO input_config (id, device_key, device_type, device_label, customized,"
            " activation_interval,"
            " auto_schedule, auto_schedule_enable, auto_schedule_disable, device_enabled, multi_trigger,"
            " group_name, info_notify) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ORIGINAL_INPUTS,
        )
        conn.executemany(
            "INSERT INTO output_config (id, device_key, device_type, device_label, device_params)"
            " VALUES (?, ?, ?, ?, ?)",
            ORIGINAL_OUTPUTS,
        )
        conn.executemany(
            "INSERT INTO event_log (id, input_device, output_device, timestamp) VALUES (?, ?, ?, ?)",
            ORIGINAL_EVENTS,
        )
    conn.close()


@dataclass
class Migrated:
    sessions: sessionmaker[Session]
    client: FlaskClient
    processor: StandInProcessor


@pytest.fixture
def migrated(tmp_path: Path, make_settings) -> Iterator[Migrated]:
    path = tmp_path / "event_processor.db"
    make_original(path)
    settings = make_settings(TABLESPACE_PATH=str(path), USER_TZ="Europe/London")
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        registry.ensure_builtin(s, settings.device_name)
    processor = StandInProcessor(sessions)
    processor.start()
    client = page_app(settings, sessions, Presence()).test_client()
    yield Migrated(sessions, client, processor)
    processor.done.set()
    processor.join(timeout=5)
    engine.dispose()


def api_events(client: FlaskClient, query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/api/events{query}")
    assert response.status_code == 200, response.json
    assert response.json is not None
    return response.json["events"]


def test_migrated_event_log_rows_are_history_with_their_meaning(migrated: Migrated) -> None:
    history = api_events(migrated.client, "?kind=history")
    # newest first; the row without a time last; times are UTC, as the original wrote them
    assert [(e["id"], e["timestamp"]) for e in history] == [
        (3, "2023-11-27T22:15:00+00:00"),
        (2, "2023-11-26T09:07:07.123456+00:00"),
        (1, "2023-11-26T09:07:07.123456+00:00"),
        (4, None),
    ]
    assert history[0] == {
        "kind": "history",
        "id": 3,
        "timestamp": "2023-11-27T22:15:00+00:00",
        "input_device": "Garage Contact (Garage)",
        "output_device": "Hallway Buzzer",
    }
    # an input is found by the name the original logged it under: its label, or its key when it had none
    assert [e["id"] for e in api_events(migrated.client, "?kind=history&input=1")] == [2, 1, 4]
    assert [e["id"] for e in api_events(migrated.client, "?input=Garage Contact (Garage)")] == [3]
    assert [e["id"] for e in api_events(migrated.client, "?kind=history&output=2")] == [2]
    assert [e["id"] for e in api_events(migrated.client, "?q=porch")] == [2]
    assert [e["id"] for e in api_events(migrated.client, "?since=2023-11-27T00:00:00Z&kind=history")] == [3]
    assert [e["id"] for e in api_events(migrated.client, "?until=2023-11-26T12:00:00Z&kind=history")] == [
        2,
        1,
    ]


def test_one_timeline_of_decisions_history_and_changes(migrated: Migrated) -> None:
    with migrated.sessions() as s:
        s.add(
            Decision(
                timestamp=datetime(2023, 11, 27, 8, 0),
                input_device_id=1,
                input_key="Front Door Motion (Hallway)",
                input_label="Front Door Motion",
                fired=True,
                outputs=[DecisionOutput(output_device_id=1, output_key="Hallway Buzzer", fired=True)],
            )
        )
        s.commit()
    # a change made now: newest of all
    assert migrated.client.post("/inputs/1/enabled", data={"enabled": "0"}).status_code == 302
    timeline = api_events(migrated.client)
    assert [(e["kind"], e["id"]) for e in timeline][:5] == [
        ("change", 1),
        ("history", 3),
        ("decision", 1),
        ("history", 2),
        ("history", 1),
    ]
    assert timeline[-1] == {**timeline[-1], "kind": "history", "id": 4}
    assert [e["kind"] for e in api_events(migrated.client, "?kind=decision,change")] == ["change", "decision"]

    page = migrated.client.get("/events")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    text = text_of(html)
    assert "6 events" in text  # four migrated rows, one decision, one change
    assert 'data-history="3"' in html and 'data-decision="1"' in html and 'data-change="1"' in html
    # migrated rows shown in USER_TZ (London: GMT in November), marked as the original's
    assert "Garage Contact (Garage)" in text and "2023-11-27 22:15:00" in text
    assert "recorded by the original event-processor" in text and "time unknown" in text
    assert "device_enabled: on → off" in text and "by web" in text
    filtered = text_of(migrated.client.get("/events?kind=history&q=cam").get_data(as_text=True))
    assert "1 event" in filtered and "Porch Cam" in filtered
    by_input = migrated.client.get("/events?input=1").get_data(as_text=True)
    assert (
        'data-history="1"' in by_input
        and 'data-history="3"' not in by_input
        and 'data-change="1"' in by_input
    )
    bad = migrated.client.get("/events?kind=gossip&q=" + "x" * 101)
    assert bad.status_code == 400 and "is not a kind of entry" in bad.get_data(as_text=True)


def test_retention_never_deletes_the_migrated_history(migrated: Migrated) -> None:
    now = datetime(2026, 12, 6, 12, 0)  # three years after the original wrote them
    with migrated.sessions() as s:
        s.add(
            EventLog(input_device="x", output_device="y", timestamp=now - timedelta(days=200), decision_id=9)
        )
        s.commit()
    counts = audit.prune(migrated.sessions, retention_days=90, max_rows=100, now=now)
    assert counts["event_log"] == 1  # only the hub's own old row
    with migrated.sessions() as s:
        kept = s.execute(
            select(EventLog.id, EventLog.input_device, EventLog.timestamp).order_by(EventLog.id)
        ).all()
    assert [(i, name) for i, name, _ in kept] == [(row[0], row[1]) for row in ORIGINAL_EVENTS]
    assert kept[0][2] == datetime(2023, 11, 26, 9, 7, 7, 123456)


# ---- configuration changes ---------------------------------------------------------------------


def apply(sessions: sessionmaker[Session], action: str, args: dict[str, Any], actor: str) -> None:
    with sessions() as s:
        reply = config_changes.apply(s, Command(action=action, args=args, actor=actor))
    assert reply.ok, reply.error


def test_every_change_is_stored_with_who_and_before_and_after(migrated: Migrated) -> None:
    sessions = migrated.sessions
    apply(sessions, "update_input", {"id": 1, "fields": {"activation_interval": 30}}, "web:admin")
    apply(sessions, "update_output", {"id": 2, "fields": {"device_params": "u:new@cam"}}, "token:admin/ha")
    apply(sessions, "update_input", {"id": 2, "fields": {"device_enabled": False}}, "telegram:111")
    apply(
        sessions,
        "set_schedule",
        {"kind": "input", "id": 1, "auto_schedule": True, "enable": "7:00", "disable": "22:30"},
        "scheduler",
    )
    apply(sessions, "set_outputs_enabled", {"enabled": False}, "sqs")
    apply(
        sessions, "update_input", {"id": 1, "fields": {"activation_interval": 30}}, "web:admin"
    )  # no change
    with sessions() as s:
        rows = s.scalars(select(ConfigChange).order_by(ConfigChange.id)).all()
        got = [
            (
                r.actor,
                r.action,
                r.target_kind,
                r.target_key,
                json.loads(r.before or "{}"),
                json.loads(r.after or "{}"),
            )
            for r in rows
        ]
    assert got == [
        (
            "web:admin",
            "update_input",
            "input",
            "Front Door Motion (Hallway)",
            {"activation_interval": None},
            {"activation_interval": 30},
        ),
        # camera credentials never reach the history
        (
            "token:admin/ha",
            "update_output",
            "output",
            "Porch Camera",
            {"device_params": "(hidden)"},
            {"device_params": "(hidden) changed"},
        ),
        (
            "telegram:111",
            "update_input",
            "input",
            "Garage Contact (Garage)",
            {"device_enabled": True},
            {"device_enabled": False},
        ),
        (
            "scheduler",
            "set_schedule",
            "input",
            "Front Door Motion (Hallway)",
            {"auto_schedule": None, "auto_schedule_enable": None, "auto_schedule_disable": None},
            {"auto_schedule": True, "auto_schedule_enable": "07:00", "auto_schedule_disable": "22:30"},
        ),
        (
            "sqs",
            "set_outputs_enabled",
            "general",
            "outputs-enabled",
            {"outputs-enabled": None},
            {"outputs-enabled": "0"},
        ),
    ]
    changes = api_events(migrated.client, "?kind=change")
    assert [c["actor"] for c in changes] == [
        "sqs",
        "scheduler",
        "telegram:111",
        "token:admin/ha",
        "web:admin",
    ]
    assert changes[-1]["before"] == {"activation_interval": None} and changes[-1]["after"] == {
        "activation_interval": 30
    }
    assert "u:new" not in json.dumps(changes) and "u:p" not in json.dumps(changes)
    assert [c["actor"] for c in api_events(migrated.client, "?kind=change&output=2")] == ["token:admin/ha"]
    assert [c["actor"] for c in api_events(migrated.client, "?kind=change&q=telegram")] == ["telegram:111"]


def test_a_refused_change_leaves_no_history(migrated: Migrated) -> None:
    with migrated.sessions() as s:
        reply = config_changes.apply(
            s,
            Command(
                action="update_input",
                args={"id": 1, "fields": {"activation_interval": -1}},
                actor="web:admin",
            ),
        )
        assert not reply.ok
        assert s.scalars(select(ConfigChange)).all() == []


def test_a_group_toggle_is_all_or_nothing(migrated: Migrated, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = migrated.sessions
    with sessions() as s:
        for key in ("Front Door Motion (Hallway)", "Garage Contact (Garage)"):
            s.scalars(select(InputConfig).where(InputConfig.device_key == key)).one().group_name = "Outside"
        s.commit()

    def fail(*_args: Any) -> None:
        raise RuntimeError("disk went away after the first member")

    calls = {"n": 0}
    real = config_changes._drop_timed_reenable

    def second_fails(session: Session, kind: str, row_id: int) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            fail()
        real(session, kind, row_id)

    monkeypatch.setattr(config_changes, "_drop_timed_reenable", second_fails)
    with sessions() as s:
        reply = config_changes.apply(
            s, Command("set_group_enabled", {"group": "Outside", "enabled": False}, "web:a")
        )
    assert not reply.ok and reply.status == 500
    with sessions() as s:
        assert [
            r.device_enabled
            for r in s.scalars(select(InputConfig).where(InputConfig.group_name == "Outside"))
        ] == [True, True]
        assert s.scalars(select(ConfigChange)).all() == []
    monkeypatch.setattr(config_changes, "_drop_timed_reenable", real)
    apply(sessions, "set_group_enabled", {"group": "Outside", "enabled": False}, "web:a")
    with sessions() as s:
        assert [
            r.device_enabled
            for r in s.scalars(select(InputConfig).where(InputConfig.group_name == "Outside"))
        ] == [False, False]
        (change,) = s.scalars(select(ConfigChange)).all()
        assert json.loads(change.after) == {
            "Front Door Motion (Hallway)": False,
            "Garage Contact (Garage)": False,
        }
    with sessions() as s:
        missing = config_changes.apply(
            s, Command("set_group_enabled", {"group": "Nowhere", "enabled": True}, "web:a")
        )
    assert missing.status == 404 and missing.field == "group"


def test_changes_are_shown_on_the_events_page_with_who(migrated: Migrated) -> None:
    apply(migrated.sessions, "update_output", {"id": 1, "fields": {"trigger_interval": 300}}, "telegram:222")
    html = migrated.client.get("/events?kind=change").get_data(as_text=True)
    text = text_of(html)
    assert "Hallway Buzzer" in text and "by telegram:222" in text and "trigger_interval: (none) → 300" in text
    with migrated.sessions() as s:
        assert s.get(OutputConfig, 1) is not None
