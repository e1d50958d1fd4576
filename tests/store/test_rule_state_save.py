"""rule_state.save_versions (the AuditWriter's batched form of save): newest version wins, None deletes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.store import db, rule_state
from tests.store.test_db import temporary_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    sqlite_url = f"sqlite:///{tmp_path / 'hub.db'}"
    with temporary_pg_database() if request.param == "postgresql" else nullcontext(sqlite_url) as url:
        engine = db.make_engine(url, timeout=10)
        try:
            db.upgrade(engine)
            yield db.session_factory(engine)
        finally:
            engine.dispose()


def saved(factory: sessionmaker[Session], held: dict[str, tuple[object, float]]) -> dict[str, object]:
    with factory() as session:
        rule_state.save_versions(session, held)
        session.commit()
        return rule_state.load(session, "t:")


def test_inserts_updates_and_deletes_in_one_call(factory: sessionmaker[Session]) -> None:
    assert saved(factory, {"t:a": ({"x": 1}, 100.0), "t:b": (2, 100.0), "t:gone": (None, 100.0)}) == {
        "t:a": {"x": 1},
        "t:b": 2,
    }
    assert saved(factory, {"t:a": ({"x": 2}, 200.0), "t:b": (None, 200.0), "t:c": ([1, 2], 50.0)}) == {
        "t:a": {"x": 2},
        "t:c": [1, 2],
    }


def test_an_older_version_leaves_a_newer_row_alone(factory: sessionmaker[Session]) -> None:
    saved(factory, {"t:a": ("new", 200.0), "t:b": ("kept", 200.0)})
    # arrived late through the queue: neither the older value nor the older delete may win
    assert saved(factory, {"t:a": ("old", 100.0), "t:b": (None, 100.0)}) == {"t:a": "new", "t:b": "kept"}
    assert saved(factory, {"t:a": ("same time", 200.0)}) == {"t:a": "same time", "t:b": "kept"}


def test_many_keys_span_several_chunks(factory: sessionmaker[Session]) -> None:
    n = rule_state.CHUNK * 2 + 7
    first = saved(factory, {f"t:{i}": (i, 100.0) for i in range(n)})
    assert first == {f"t:{i}": i for i in range(n)}
    again = saved(factory, {f"t:{i}": (None if i % 2 else -i, 200.0) for i in range(n)})
    assert again == {f"t:{i}": -i for i in range(0, n, 2)}
