"""Replacing an input's output links and input links with exactly the ids asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.engine.change_history import Diff
from app.engine.change_validation import ChangeError
from app.store.models import InputConfig, InputLink, OutputConfig, OutputLink


def _keys(session: Session, model: type[InputConfig] | type[OutputConfig], ids: set[int]) -> list[str]:
    if not ids:
        return []
    return sorted(session.scalars(select(model.device_key).where(model.id.in_(ids))))


def _check_exist(
    session: Session, model: type[InputConfig] | type[OutputConfig], ids: list[int], field: str, what: str
) -> None:
    found = set(session.scalars(select(model.id).where(model.id.in_(ids)))) if ids else set()
    missing = sorted(set(ids) - found)
    if missing:
        raise ChangeError(field, f"there is no {what} with id {', '.join(map(str, missing))}")


def _replace_links(
    links: list[Any], id_of: Callable[[Any], int], make: Callable[[int], Any], wanted: list[int]
) -> tuple[set[int], set[int]]:
    """Make the relationship list hold exactly one link per wanted id; returns (added, removed) ids.

    A diff rather than delete-all-then-insert: the unit of work flushes inserts before deletes,
    so re-inserting a kept link would trip the unique constraint.
    """
    wanted_set = set(wanted)
    kept: set[int] = set()
    removed: set[int] = set()
    for link in list(links):
        linked = id_of(link)
        if linked in wanted_set and linked not in kept:
            kept.add(linked)
        else:
            links.remove(link)  # delete-orphan turns this into a DELETE
            if linked not in wanted_set:
                removed.add(linked)
    added = [i for i in wanted if i not in kept]
    links.extend(make(i) for i in added)
    return set(added), removed


def _linked_output_keys(session: Session, row: InputConfig) -> list[str]:
    return _keys(session, OutputConfig, {link.output_device_id for link in row.output_links})


def _linked_input_keys(session: Session, row: InputConfig) -> list[str]:
    return _keys(session, InputConfig, {link.linked_device_id for link in row.input_links})


def replace_output_links(session: Session, row: InputConfig, wanted: list[int], diff: Diff) -> str:
    _check_exist(session, OutputConfig, wanted, "output_ids", "output")
    before = _linked_output_keys(session, row)
    added, removed = _replace_links(
        row.output_links, lambda link: link.output_device_id, lambda i: OutputLink(output_device_id=i), wanted
    )
    if added or removed:
        diff.note("outputs", before, sorted(_keys(session, OutputConfig, set(wanted))))
    return (
        f"output links: added {_keys(session, OutputConfig, added)}, "
        f"removed {_keys(session, OutputConfig, removed)}"
    )


def replace_input_links(session: Session, row: InputConfig, wanted: list[int], diff: Diff) -> str:
    if row.id in wanted:
        raise ChangeError("input_ids", "an input cannot link to itself")
    _check_exist(session, InputConfig, wanted, "input_ids", "input")
    before = _linked_input_keys(session, row)
    added, removed = _replace_links(
        row.input_links, lambda link: link.linked_device_id, lambda i: InputLink(linked_device_id=i), wanted
    )
    if added or removed:
        diff.note("inputs", before, sorted(_keys(session, InputConfig, set(wanted))))
    added_keys, removed_keys = _keys(session, InputConfig, added), _keys(session, InputConfig, removed)
    return f"input links: added {added_keys}, removed {removed_keys}"
