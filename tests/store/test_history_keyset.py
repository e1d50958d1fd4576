"""The events timeline's keyset pages: every entry once in order on SQLite and PostgreSQL, and the
queries the events page and /api/events run read indexes (EXPLAIN QUERY PLAN), not whole tables."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.engine.presence import Presence
from app.store import db, history, registry
from app.store.models import ConfigChange, Decision, DecisionOutput, EventLog, InputConfig, OutputConfig
from tests import scale
from tests.store.test_db import any_url, engines  # noqa: F401  (fixtures)
from tests.web.test_pages import page_app

T0 = datetime(2024, 3, 1, 12, 0)


def _timeline(session: Session) -> dict[str, int]:
    """Decisions, the original's event_log rows (two without a time), the hub's own event_log rows
    and changes, with ties in time within a table and across tables (same time and same id)."""
    door = InputConfig(device_key="door", device_label="Front Door", device_type="Contact")
    siren = OutputConfig(device_key="siren", device_label="Siren", device_type="Buzzer")
    session.add_all([door, siren])
    session.flush()
    for i in range(1, 13):
        ts = T0 + timedelta(minutes=i // 3)  # three at each time
        outputs = [DecisionOutput(output_device_id=siren.id, output_key="siren", fired=True)] if i % 2 else []
        session.add(
            Decision(
                id=i,
                timestamp=ts,
                input_device_id=door.id if i % 4 else None,
                input_key="door" if i % 3 else "hall",
                fired=bool(outputs),
                outputs=outputs,
            )
        )
        if i % 2:
            session.add(
                EventLog(
                    id=200 + i, input_device="Front Door", output_device="Siren", timestamp=ts, decision_id=i
                )
            )
    for i in range(1, 9):
        # ids 1..8 as the decisions': the same (time, id) in two tables is ordered by kind
        when = None if i > 6 else T0 + timedelta(minutes=i // 3)
        session.add(EventLog(id=i, input_device="Front Door", output_device="Siren", timestamp=when))
    session.flush()
    for i in range(1, 6):
        session.add(
            ConfigChange(
                id=i,
                timestamp=T0 + timedelta(minutes=i // 3),
                actor="web:admin",
                action="update",
                target_kind="input",
                target_id=door.id,
                target_key="door",
                summary="device_enabled",
            )
        )
    session.commit()
    return {"door": door.id, "siren": siren.id}


def _walk(session: Session, f: history.Filters, size: int) -> list[history.Window]:
    shown = [history.window(session, f, size)]
    while shown[-1].older is not None:
        shown.append(history.window(session, f, size, before=shown[-1].older))
    return shown


def _keys(shown: history.Window) -> list[tuple[str, int]]:
    return [(e.kind, e.row.id) for e in shown.entries]


def test_keyset_pages_hold_every_entry_once_in_order(any_url: str, engines: Callable[..., Engine]) -> None:  # noqa: F811
    engine = engines(any_url)
    db.upgrade(engine)
    with db.session_factory(engine)() as session:
        ids = _timeline(session)
        door = history.device(session, InputConfig, str(ids["door"]))
        siren = history.device(session, OutputConfig, "siren")
        for f in (
            history.Filters(),
            history.Filters(kinds=("decision", "history")),
            history.Filters(kinds=("history",)),
            history.Filters(input=door),
            history.Filters(output=siren),
            history.Filters(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)),
        ):
            everything = [(e.kind, e.row.id) for e in history.window(session, f, 1000).entries]
            assert everything and history.count(session, f) == len(everything), f
            for size in (1, 2, 5):
                windows = _walk(session, f, size)
                pages = [_keys(w) for w in windows]
                assert [key for page in pages for key in page] == everything, (f, size)
                assert all(len(page) == size for page in pages[:-1])
                # and back: Newer from each page is the page before it
                for before, shown in zip(pages, windows[1:], strict=False):
                    assert shown.newer is not None
                    assert _keys(history.window(session, f, size, after=shown.newer)) == before, (f, size)
        full = [(e.kind, e.row.id) for e in history.window(session, history.Filters(), 1000).entries]
        # newest first; the same time and id: change, decision, history; rows without a time last
        assert full[0] == ("decision", 12)
        assert full.index(("change", 3)) < full.index(("decision", 3)) < full.index(("history", 3))
        assert full[-2:] == [("history", 8), ("history", 7)]


# ---- the query plans ------------------------------------------------------------------------


@dataclass
class Planned:
    client: FlaskClient
    engine: Engine
    statements: list[tuple[str, Any]]
    ids: dict[str, int]


@pytest.fixture
def planned(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[Planned]:
    settings = make_settings(TABLESPACE_PATH=str(tmp_path / "plans.db"), DEVICE_NAME="the-hub")
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        registry.ensure_builtin(s, settings.device_name)
        # 20 inputs, 2 outputs: every fired decision goes to output 0, so it has many decisions
        # (read newest first, keeping its own) and output 1 has none (read through its rows).
        scale.build_house(s, inputs=20, outputs=2, decisions=0)
        scale.add_history(s, 5000, migrated=200, changes=100, inputs=20, outputs=2)
        ids = {
            "input": s.scalar(select(InputConfig.id).where(InputConfig.device_key == scale.input_key(4)))
            or 0,
            "busy": s.scalar(select(OutputConfig.id).where(OutputConfig.device_key == scale.output_key(0)))
            or 0,
            "idle": s.scalar(select(OutputConfig.id).where(OutputConfig.device_key == scale.output_key(1)))
            or 0,
        }
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    client = page_app(settings, sessions, Presence()).test_client()
    yield Planned(client, engine, statements, ids)
    engine.dispose()


def plan(engine: Engine, statement: str, params: Any) -> list[tuple[int, int, str]]:
    """EXPLAIN QUERY PLAN rows as (id, parent id, detail)."""
    with engine.connect() as conn:
        return [(r[0], r[1], r[3]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]


TIMELINE_TABLES = ("decision", "decision_output", "event_log", "config_change")


def plans_of(planned: Planned, path: str) -> list[list[tuple[int, int, str]]]:
    """The plans of the timeline queries one request ran (each statement that reads its tables)."""
    planned.statements.clear()
    response = planned.client.get(path)
    assert response.status_code == 200, path
    found = []
    for statement, params in list(planned.statements):
        tables = set(re.findall(r"\bFROM (\w+)", statement))
        if tables & set(TIMELINE_TABLES):
            found.append(plan(planned.engine, statement, params))
    assert found, path
    return found


def assert_indexed(plans: list[list[tuple[int, int, str]]], sorted_legs_ok: bool = False) -> set[str]:
    """No table is read whole, and no part of the union sorts its rows (only the few the parts
    give are merged, at the top of the statement). Returns the indexes used."""
    used = set()
    for rows in plans:
        for _id, parent, detail in rows:
            scan = re.match(r"SCAN (\w+)", detail)
            if scan and scan.group(1) in TIMELINE_TABLES:
                assert "USING" in detail and "INDEX" in detail, (
                    detail
                )  # an index read in order, not the table
            if detail == "USE TEMP B-TREE FOR ORDER BY" and not sorted_legs_ok:
                assert parent == 0, rows  # the merge of the legs' rows (or the 50 rows loaded)
            used.update(re.findall(r"INDEX (\w+)", detail))
    return used


def older_link(html: str) -> str:
    found = re.search(r'rel="next" href="([^"#]+)">Older', html)
    assert found is not None
    return found.group(1).replace("&amp;", "&")


def test_events_page_and_api_read_the_timeline_from_indexes(planned: Planned) -> None:
    first = plans_of(planned, "/events")
    assert {
        "ix_decision_time_id",
        "ix_event_log_decision_time_id",
        "ix_config_change_time_id",
    } <= assert_indexed(first)
    # a deeper page: the same indexes, each read from the cursor on
    html = planned.client.get("/events").get_data(as_text=True)
    for _ in range(3):
        html = planned.client.get(older_link(html)).get_data(as_text=True)
    assert "ix_decision_time_id" in assert_indexed(plans_of(planned, older_link(html)))
    api = planned.client.get("/api/events?limit=20").get_json()
    assert "ix_decision_time_id" in assert_indexed(
        plans_of(planned, f"/api/events?limit=20&before={api['next']}")
    )
    for kind in history.KINDS:
        assert_indexed(plans_of(planned, f"/events?kind={kind}"))
        assert_indexed(plans_of(planned, f"/api/events?kind={kind}"))
    assert_indexed(plans_of(planned, "/events?from=2026-01-01T00:00&to=2026-12-01T00:00"))


def test_filtered_pages_read_the_device_indexes(planned: Planned) -> None:
    by_input = assert_indexed(plans_of(planned, f"/events?input={planned.ids['input']}"))
    assert {
        "ix_decision_input_time_id",
        "ix_decision_key_time_id",
        "ix_event_log_original_input",
        "ix_config_change_target",
        "ix_config_change_key_time_id",
    } <= by_input
    html = planned.client.get(f"/events?input={planned.ids['input']}").get_data(as_text=True)
    assert "ix_decision_input_time_id" in assert_indexed(plans_of(planned, older_link(html)))
    # an output with many decisions: decisions newest first, each checked against its outputs
    busy = assert_indexed(plans_of(planned, f"/events?output={planned.ids['busy']}"))
    assert {"ix_decision_time_id", "ix_decision_output_decision_id", "ix_event_log_original_output"} <= busy
    # an output with few: found through its own rows (by id or key), then those few sorted
    idle = assert_indexed(plans_of(planned, f"/api/events?output={planned.ids['idle']}"), sorted_legs_ok=True)
    assert {"ix_decision_output_output_device_id", "ix_decision_output_output_key"} <= idle


# ---- a search reads a bounded window a page ------------------------------------------------


def test_a_bounded_search_pages_through_every_match_once_in_order(
    any_url: str,  # noqa: F811
    engines: Callable[..., Engine],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a search text each page reads SEARCH_ROWS decisions (and migrated rows) at most and the
    next page starts where it stopped: walked to the end, the pages hold exactly what one unbounded
    read finds, in the same order, however the window falls across ties in time and id."""
    engine = engines(any_url)
    db.upgrade(engine)
    with db.session_factory(engine)() as session:
        ids = _timeline(session)
        door = history.device(session, InputConfig, str(ids["door"]))
        searches = [
            history.Filters(search="door"),
            history.Filters(search="siren"),
            history.Filters(search="hall"),
            history.Filters(search="Front", kinds=("decision", "history")),
            history.Filters(search="door", until=T0 + timedelta(minutes=3)),
            history.Filters(search="zzz"),
        ]
        everything: list[list[tuple[str, int]]] = []
        monkeypatch.setattr(history, "SEARCH_ROWS", 10_000)
        for f in searches:
            everything.append([(e.kind, e.row.id) for e in history.window(session, f, 1000).entries])
            assert history.window(session, f, 1000).searched_to is None  # fewer rows than the bound
        assert all(everything[:-1]) and everything[-1] == []
        for rows in (1, 2, 3, 5):
            monkeypatch.setattr(history, "SEARCH_ROWS", rows)
            for f, expected in zip(searches, everything, strict=True):
                for size in (1, 2, 50):
                    windows = _walk(session, f, size)
                    found = [key for w in windows for key in _keys(w)]
                    assert found == expected, (f, rows, size)
                    assert len(windows) > 1  # the bound made even a search with no match page
                    for shown, before in zip(windows, [None, *(w.older for w in windows)], strict=False):
                        assert len(shown.entries) <= size
                        if shown.searched_to is not None and shown.older == shown.searched_to:
                            # the page stopped at its floor: the count is of what it read
                            counted = history.count(session, f, before=before)
                            assert counted == len(shown.entries), (f, rows, size)
        # A device filter reads the device's own index ranges: no bound, one page.
        monkeypatch.setattr(history, "SEARCH_ROWS", 1)
        by_device = history.window(session, history.Filters(search="door", input=door), 1000)
        assert by_device.searched_to is None and by_device.older is None and by_device.entries


def test_a_search_page_reads_indexes_and_says_where_it_stopped(
    planned: Planned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "SEARCH_ROWS", 1000)  # the house holds 5,000 decisions
    assert_indexed(plans_of(planned, "/events?q=no-such-text"))
    html = planned.client.get("/events?q=no-such-text").get_data(as_text=True)
    assert "No events match." in html and "search-bound" in html and "Search older events" in html
    # the link goes on from where the page stopped, through the 5,000 decisions, to the end
    pages = 1
    while 'class="search-bound"' in html or "search-bound" in html:
        link = re.search(r'<a href="([^"]+)">Search older events', html)
        assert link is not None
        html = planned.client.get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
        pages += 1
        assert pages <= 6
    # five pages of 1,000 decisions each (the fifth ends at the oldest), then one that reads what is
    # left after it (rows without a time would be there) and finds nothing
    assert pages == 6
    answer = planned.client.get("/api/events?q=no-such-text").get_json()
    assert answer["events"] == [] and answer["searched_to"] is not None and answer["next"] is not None
    following = planned.client.get(f"/api/events?q=no-such-text&before={answer['next']}").get_json()
    assert following["searched_to"] is not None and following["searched_to"] < answer["searched_to"]
    # A search that fills its page before the bound did not read down to it: no "went back to".
    common = planned.client.get("/api/events?q=Sensor&limit=20").get_json()
    assert len(common["events"]) == 20 and common["searched_to"] is None and common["next"] is not None
    html = planned.client.get("/events?q=Sensor").get_data(as_text=True)
    assert "search-bound" not in html and "decisions this page searches" in html
