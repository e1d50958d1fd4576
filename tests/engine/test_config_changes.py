"""Unit tests for app.engine.config_changes.apply on a temporary SQLite database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core.channels import Command, Reply
from app.engine import config_changes
from app.store.models import Base, GeneralConfig, InputConfig, InputLink, OutputConfig, OutputLink


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 'changes.db'}", connect_args={"check_same_thread": False}
    )
    Base.metadata.create_all(engine)
    yield sessionmaker(bind=engine)
    engine.dispose()


@pytest.fixture
def ids(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Three inputs and three outputs; returns their ids by device key."""
    with sessions() as s:
        rows: list[Any] = [
            InputConfig(device_key="door", device_type="Contact", device_label="Door", device_enabled=True),
            InputConfig(device_key="hall", device_type="Motion", device_label="Hall"),
            InputConfig(device_key="yard", device_type="Motion"),
            OutputConfig(device_key="buzzer", device_type="Buzzer"),
            OutputConfig(device_key="cam", device_type="Camera", device_params="admin:hunter2@10.0.0.5:80"),
            OutputConfig(device_key="siren", device_type="switch"),
        ]
        s.add_all(rows)
        s.commit()
        return {row.device_key: row.id for row in rows}


def run(sessions: sessionmaker[Session], action: str, args: Any, actor: str = "test") -> Reply:
    with sessions() as s:
        return config_changes.apply(s, Command(action=action, args=args, actor=actor))


def get_input(sessions: sessionmaker[Session], row_id: int) -> InputConfig:
    with sessions() as s:
        row = s.get(InputConfig, row_id)
        assert row is not None
        s.expunge(row)
        return row


def get_output(sessions: sessionmaker[Session], row_id: int) -> OutputConfig:
    with sessions() as s:
        row = s.get(OutputConfig, row_id)
        assert row is not None
        s.expunge(row)
        return row


def output_links(sessions: sessionmaker[Session], input_id: int) -> list[int]:
    with sessions() as s:
        stmt = sa.select(OutputLink.output_device_id).where(OutputLink.input_device_id == input_id)
        return sorted(s.scalars(stmt))


def input_links(sessions: sessionmaker[Session], input_id: int) -> list[int]:
    with sessions() as s:
        stmt = sa.select(InputLink.linked_device_id).where(InputLink.input_device_id == input_id)
        return sorted(s.scalars(stmt))


# ---- update_input ---------------------------------------------------------------------------


def test_update_input_saves_every_field(sessions: sessionmaker[Session], ids: dict[str, int]) -> None:
    fields = {
        "device_label": "  Front door  ",
        "device_enabled": False,
        "activation_interval": 30,
        "multi_trigger": True,
        "multi_trigger_rate": 3,
        "multi_trigger_interval": 60,
        "group_name": "  Downstairs ",
        "info_notify": True,
    }
    reply = run(sessions, "update_input", {"id": ids["door"], "fields": fields})
    assert reply == Reply(ok=True, result={"id": ids["door"]})
    row = get_input(sessions, ids["door"])
    assert row.device_label == "Front door"
    assert row.device_enabled is False
    assert row.activation_interval == 30
    assert row.multi_trigger is True
    assert row.multi_trigger_rate == 3
    assert row.multi_trigger_interval == 60
    assert row.group_name == "Downstairs"
    assert row.info_notify is True
    assert row.label_customized is True
    assert row.customized is True


def test_enabling_an_input_does_not_mark_it_customised(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    reply = run(sessions, "update_input", {"id": ids["hall"], "fields": {"device_enabled": True}})
    assert reply.ok
    row = get_input(sessions, ids["hall"])
    assert row.device_enabled is True
    assert row.customized is None
    assert row.label_customized is None


@pytest.mark.parametrize("field", ["activation_interval", "group_name", "info_notify", "multi_trigger"])
def test_a_rule_field_marks_the_input_customised(
    sessions: sessionmaker[Session], ids: dict[str, int], field: str
) -> None:
    value = {"activation_interval": 5, "group_name": "G", "info_notify": False, "multi_trigger": False}[field]
    assert run(sessions, "update_input", {"id": ids["hall"], "fields": {field: value}}).ok
    row = get_input(sessions, ids["hall"])
    assert row.customized is True
    assert row.label_customized is None


def test_empty_group_name_and_nulls_clear_values(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    first = {"group_name": "G", "activation_interval": 10, "multi_trigger_rate": 2}
    assert run(sessions, "update_input", {"id": ids["hall"], "fields": first}).ok
    cleared = {"group_name": "   ", "activation_interval": None, "multi_trigger_rate": None}
    assert run(sessions, "update_input", {"id": ids["hall"], "fields": cleared}).ok
    row = get_input(sessions, ids["hall"])
    assert (row.group_name, row.activation_interval, row.multi_trigger_rate) == (None, None, None)


def test_clearing_the_label_hands_it_back_to_heartbeats(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    assert run(sessions, "update_input", {"id": ids["hall"], "fields": {"device_label": "Mine"}}).ok
    assert get_input(sessions, ids["hall"]).label_customized is True
    assert run(sessions, "update_input", {"id": ids["hall"], "fields": {"device_label": ""}}).ok
    row = get_input(sessions, ids["hall"])
    assert row.device_label is None
    assert row.label_customized is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_label", 5),
        ("device_label", "x" * 101),
        ("device_enabled", "yes"),
        ("device_enabled", 1),
        ("device_enabled", None),
        ("activation_interval", -1),
        ("activation_interval", 86401),
        ("activation_interval", "30"),
        ("activation_interval", 1.5),
        ("activation_interval", True),
        ("multi_trigger", "true"),
        ("multi_trigger_rate", 0),
        ("multi_trigger_rate", 121),
        ("multi_trigger_interval", 0),
        ("multi_trigger_interval", 86401),
        ("group_name", ["a"]),
        ("group_name", "g" * 101),
        ("info_notify", 0),
        ("customized", True),
        ("device_key", "renamed"),
    ],
)
def test_update_input_rejects_bad_values(
    sessions: sessionmaker[Session], ids: dict[str, int], field: str, value: Any
) -> None:
    fields = {"activation_interval": 7, field: value}  # the good one must not be saved either
    reply = run(sessions, "update_input", {"id": ids["door"], "fields": fields})
    assert not reply.ok
    assert reply.status == 400
    assert reply.field == field
    assert field in (reply.error or "")
    row = get_input(sessions, ids["door"])
    assert row.activation_interval is None
    assert row.customized is None


@pytest.mark.parametrize(
    ("args", "field", "status"),
    [
        ({"id": 999, "fields": {"device_enabled": True}}, "id", 404),
        ({"id": 2**64, "fields": {"device_enabled": True}}, "id", 404),
        ({"id": -1, "fields": {"device_enabled": True}}, "id", 404),
        ({"id": "1", "fields": {"device_enabled": True}}, "id", 400),
        ({"id": True, "fields": {"device_enabled": True}}, "id", 400),
        ({"fields": {"device_enabled": True}}, "id", 400),
        ({"id": 1, "fields": []}, "fields", 400),
        ({"id": 1, "fields": {}}, "fields", 400),
        ({"id": 1}, "fields", 400),
    ],
)
def test_update_input_rejects_bad_arguments(
    sessions: sessionmaker[Session], ids: dict[str, int], args: dict[str, Any], field: str, status: int
) -> None:
    reply = run(sessions, "update_input", args)
    assert (reply.ok, reply.field, reply.status) == (False, field, status)


# ---- update_output --------------------------------------------------------------------------


def test_update_output_saves_every_field(sessions: sessionmaker[Session], ids: dict[str, int]) -> None:
    fields = {
        "device_label": "Hall buzzer",
        "device_params": " admin:secret@10.0.0.9:80 ",
        "device_enabled": False,
        "trigger_topic": "event.trigger.buzzer-2",
        "trigger_interval": 15,
    }
    reply = run(sessions, "update_output", {"id": ids["buzzer"], "fields": fields})
    assert reply == Reply(ok=True, result={"id": ids["buzzer"]})
    row = get_output(sessions, ids["buzzer"])
    assert row.device_label == "Hall buzzer"
    assert row.label_customized is True
    assert row.device_params == "admin:secret@10.0.0.9:80"
    assert row.device_enabled is False
    assert row.trigger_topic == "event.trigger.buzzer-2"
    assert row.trigger_interval == 15


def test_update_output_empty_strings_become_null(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    fields = {"device_params": "", "trigger_topic": "  ", "trigger_interval": None}
    assert run(sessions, "update_output", {"id": ids["cam"], "fields": fields}).ok
    row = get_output(sessions, ids["cam"])
    assert (row.device_params, row.trigger_topic, row.trigger_interval) == (None, None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_label", False),
        ("device_label", "x" * 101),
        ("device_params", 42),
        ("device_enabled", "no"),
        ("trigger_topic", "event trigger"),
        ("trigger_topic", "event.#"),
        ("trigger_topic", "event.*"),
        ("trigger_topic", "a" * 256),
        ("trigger_topic", 7),
        ("trigger_interval", -5),
        ("trigger_interval", 86401),
        ("trigger_interval", "10"),
        ("device_type", "Camera"),
    ],
)
def test_update_output_rejects_bad_values(
    sessions: sessionmaker[Session], ids: dict[str, int], field: str, value: Any
) -> None:
    reply = run(
        sessions, "update_output", {"id": ids["siren"], "fields": {"trigger_interval": 3, field: value}}
    )
    assert (reply.ok, reply.status, reply.field) == (False, 400, field)
    assert get_output(sessions, ids["siren"]).trigger_interval is None


def test_update_output_unknown_id_is_404(sessions: sessionmaker[Session], ids: dict[str, int]) -> None:
    reply = run(sessions, "update_output", {"id": 4242, "fields": {"device_enabled": True}})
    assert (reply.ok, reply.status, reply.field) == (False, 404, "id")


def test_device_params_never_reach_the_log(
    sessions: sessionmaker[Session], ids: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.engine.config_changes")
    fields = {"device_params": "admin:topsecret@10.0.0.5:80", "device_enabled": False}
    assert run(sessions, "update_output", {"id": ids["cam"], "fields": fields}, actor="api").ok
    assert run(sessions, "update_output", {"id": ids["cam"], "fields": {"device_params": None}}).ok
    text = caplog.text
    assert "topsecret" not in text and "hunter2" not in text
    assert "'cam'" in text and "device_params changed" in text and "device_params cleared" in text
    assert "by api" in text and "device_enabled None -> False" in text


# ---- links ----------------------------------------------------------------------------------


def test_set_output_links_replaces_and_collapses_duplicates(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    door = ids["door"]
    reply = run(sessions, "set_output_links", {"input_id": door, "output_ids": [ids["buzzer"], ids["cam"]]})
    assert reply == Reply(ok=True, result={"id": door})
    assert output_links(sessions, door) == sorted([ids["buzzer"], ids["cam"]])
    wanted = [ids["cam"], ids["siren"], ids["cam"]]
    assert run(sessions, "set_output_links", {"input_id": door, "output_ids": wanted}).ok
    assert output_links(sessions, door) == sorted([ids["cam"], ids["siren"]])
    # Idempotent: the same request again changes nothing and does not trip the unique constraint.
    assert run(sessions, "set_output_links", {"input_id": door, "output_ids": wanted}).ok
    assert output_links(sessions, door) == sorted([ids["cam"], ids["siren"]])
    assert run(sessions, "set_output_links", {"input_id": door, "output_ids": []}).ok
    assert output_links(sessions, door) == []


def test_set_output_links_is_all_or_nothing(sessions: sessionmaker[Session], ids: dict[str, int]) -> None:
    door = ids["door"]
    assert run(sessions, "set_output_links", {"input_id": door, "output_ids": [ids["buzzer"]]}).ok
    reply = run(sessions, "set_output_links", {"input_id": door, "output_ids": [ids["cam"], 777, 778]})
    assert (reply.ok, reply.status, reply.field) == (False, 400, "output_ids")
    assert "777" in (reply.error or "") and "778" in (reply.error or "")
    assert output_links(sessions, door) == [ids["buzzer"]]


@pytest.mark.parametrize(
    ("args", "field", "status"),
    [
        ({"input_id": 999, "output_ids": []}, "input_id", 404),
        ({"input_id": "x", "output_ids": []}, "input_id", 400),
        ({"output_ids": []}, "input_id", 400),
        ({"input_id": 1, "output_ids": "1,2"}, "output_ids", 400),
        ({"input_id": 1, "output_ids": [1, "2"]}, "output_ids", 400),
        ({"input_id": 1, "output_ids": [True]}, "output_ids", 400),
        ({"input_id": 1, "output_ids": [2**63]}, "output_ids", 400),
        ({"input_id": 1, "output_ids": [0]}, "output_ids", 400),
        ({"input_id": 1}, "output_ids", 400),
        ({"input_id": 1, "output_ids": list(range(config_changes.MAX_LINKS + 1))}, "output_ids", 400),
    ],
)
def test_set_output_links_rejects_bad_arguments(
    sessions: sessionmaker[Session], ids: dict[str, int], args: dict[str, Any], field: str, status: int
) -> None:
    reply = run(sessions, "set_output_links", args)
    assert (reply.ok, reply.field, reply.status) == (False, field, status)


def test_set_output_links_removes_duplicate_rows_from_an_old_database(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    # A database restored from elsewhere might lack the unique constraint; the replace still converges.
    with sessions() as s:
        s.execute(sa.text("DROP TABLE output_link"))
        s.execute(
            sa.text(
                "CREATE TABLE output_link (id INTEGER PRIMARY KEY, input_device_id INTEGER NOT NULL, "
                "output_device_id INTEGER NOT NULL)"
            )
        )
        s.execute(
            sa.text("INSERT INTO output_link (input_device_id, output_device_id) VALUES (:i, :o), (:i, :o)"),
            {"i": ids["door"], "o": ids["cam"]},
        )
        s.commit()
    assert run(sessions, "set_output_links", {"input_id": ids["door"], "output_ids": [ids["cam"]]}).ok
    assert output_links(sessions, ids["door"]) == [ids["cam"]]


def test_set_input_links(sessions: sessionmaker[Session], ids: dict[str, int]) -> None:
    door = ids["door"]
    wanted = [ids["hall"], ids["yard"], ids["hall"]]
    reply = run(sessions, "set_input_links", {"input_id": door, "input_ids": wanted})
    assert reply == Reply(ok=True, result={"id": door})
    assert input_links(sessions, door) == sorted([ids["hall"], ids["yard"]])
    assert run(sessions, "set_input_links", {"input_id": door, "input_ids": [ids["yard"]]}).ok
    assert input_links(sessions, door) == [ids["yard"]]


@pytest.mark.parametrize(
    ("wanted", "field", "status"),
    [
        ("self", "input_ids", 400),
        ("missing", "input_ids", 400),
        ("not-a-list", "input_ids", 400),
    ],
)
def test_set_input_links_rejects(
    sessions: sessionmaker[Session], ids: dict[str, int], wanted: str, field: str, status: int
) -> None:
    door = ids["door"]
    assert run(sessions, "set_input_links", {"input_id": door, "input_ids": [ids["yard"]]}).ok
    value: Any = {
        "self": [ids["hall"], door],
        "missing": [ids["hall"], 555],
        "not-a-list": {"id": 1},
    }[wanted]
    reply = run(sessions, "set_input_links", {"input_id": door, "input_ids": value})
    assert (reply.ok, reply.field, reply.status) == (False, field, status)
    assert input_links(sessions, door) == [ids["yard"]]


def test_set_input_links_unknown_input_is_404(sessions: sessionmaker[Session], ids: dict[str, int]) -> None:
    reply = run(sessions, "set_input_links", {"input_id": 31337, "input_ids": []})
    assert (reply.ok, reply.field, reply.status) == (False, "input_id", 404)


def test_link_changes_are_logged_with_device_keys(
    sessions: sessionmaker[Session], ids: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.engine.config_changes")
    assert run(sessions, "set_output_links", {"input_id": ids["door"], "output_ids": [ids["cam"]]}).ok
    assert run(sessions, "set_output_links", {"input_id": ids["door"], "output_ids": [ids["siren"]]}).ok
    assert "added ['siren'], removed ['cam']" in caplog.text
    assert "by test" in caplog.text


# ---- outputs enabled ------------------------------------------------------------------------


def test_outputs_enabled_defaults_on_and_is_persisted(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    with sessions() as s:
        assert config_changes.outputs_enabled(s) is True
    assert run(sessions, "set_outputs_enabled", {"enabled": False}) == Reply(
        ok=True, result={"enabled": False}
    )
    with sessions() as s:
        assert config_changes.outputs_enabled(s) is False
    assert run(sessions, "set_outputs_enabled", {"enabled": True}).ok
    assert run(sessions, "set_outputs_enabled", {"enabled": False}).ok
    with sessions() as s:
        rows = s.scalars(sa.select(GeneralConfig).where(GeneralConfig.config_key == "outputs-enabled")).all()
        assert [r.config_value for r in rows] == ["0"]  # one row, updated in place


def test_outputs_enabled_reads_an_existing_row(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        s.add(GeneralConfig(config_key="outputs-enabled", config_value="1"))
        s.add(GeneralConfig(config_key="auto-scheduler", config_value="0"))
        s.commit()
        assert config_changes.outputs_enabled(s) is True
    assert run(sessions, "set_outputs_enabled", {"enabled": False}).ok
    with sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(GeneralConfig)) == 2
        assert config_changes.outputs_enabled(s) is False


@pytest.mark.parametrize("args", [{}, {"enabled": "false"}, {"enabled": 0}, {"enabled": None}])
def test_set_outputs_enabled_needs_a_boolean(sessions: sessionmaker[Session], args: dict[str, Any]) -> None:
    reply = run(sessions, "set_outputs_enabled", args)
    assert (reply.ok, reply.field, reply.status) == (False, "enabled", 400)
    with sessions() as s:
        assert config_changes.outputs_enabled(s) is True


# ---- dispatch and failures ------------------------------------------------------------------


def test_unknown_action_and_bad_args(sessions: sessionmaker[Session]) -> None:
    reply = run(sessions, "drop_tables", {})
    assert (reply.ok, reply.field, reply.status) == (False, "action", 400)
    reply = run(sessions, "update_input", ["not", "a", "dict"])
    assert (reply.ok, reply.field, reply.status) == (False, "args", 400)


def test_a_locked_database_is_a_503_and_rolls_back(
    sessions: sessionmaker[Session], ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    with sessions() as s:

        def locked() -> None:
            raise OperationalError("COMMIT", {}, Exception("database is locked"))

        monkeypatch.setattr(s, "commit", locked)
        cmd = Command(action="update_input", args={"id": ids["door"], "fields": {"device_enabled": False}})
        reply = config_changes.apply(s, cmd)
        assert (reply.ok, reply.status) == (False, 503)
        assert "locked" not in (reply.error or "")
    assert get_input(sessions, ids["door"]).device_enabled is True


def test_an_unexpected_error_is_a_500_without_details(
    sessions: sessionmaker[Session], ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(session: Session, args: dict[str, Any]) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setitem(config_changes._ACTIONS, "update_input", broken)
    reply = run(sessions, "update_input", {"id": ids["door"], "fields": {"device_enabled": False}})
    assert (reply.ok, reply.status, reply.error) == (False, 500, "internal error")


def test_apply_sees_rows_committed_by_another_session_meanwhile(
    sessions: sessionmaker[Session], ids: dict[str, int]
) -> None:
    # The processor may keep one session for long; a heartbeat-filter write in between must not be undone.
    with sessions() as processor:
        processor.get(InputConfig, ids["hall"])  # cached in the processor's identity map
        with sessions() as other:
            row = other.get(InputConfig, ids["hall"])
            assert row is not None
            row.device_label = "Hall (renamed by device)"
            other.commit()
        cmd = Command(action="update_input", args={"id": ids["hall"], "fields": {"info_notify": True}})
        assert config_changes.apply(processor, cmd).ok
    row = get_input(sessions, ids["hall"])
    assert (row.device_label, row.info_notify) == ("Hall (renamed by device)", True)
