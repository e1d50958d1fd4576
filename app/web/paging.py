"""Pages of a long device list: a text filter and page numbers, so no page grows with the house."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from flask import request

PAGE_SIZE = 50
MAX_QUERY = 100  # characters of the filter text kept
MAX_PAGE = 100_000

T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """Which slice of a filtered list is shown, and what the page links need."""

    number: int
    pages: int
    total: int  # rows matching the filter
    query: str
    ids: list[int]  # row ids on this page, in order
    param: str = "page"  # the query argument holding the page number
    others: tuple[tuple[str, int], ...] = ()  # other lists' page numbers on the same page, kept in links

    def args(self, **extra: str | int) -> dict[str, str | int]:
        """Query arguments for a link that keeps the filter (and page unless given)."""
        out: dict[str, str | int] = dict(self.others)
        out[self.param] = self.number
        if self.query:
            out["q"] = self.query
        out.update(extra)
        return out

    def link(self, number: int) -> dict[str, str | int]:
        """Query arguments for page `number` of this list."""
        return self.args(**{self.param: number})


def query_text() -> str:
    return request.args.get("q", "").strip()[:MAX_QUERY]


def page_number(param: str = "page") -> int:
    raw = request.args.get(param, "").strip()
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        return 1
    return int(raw)


def paginate(
    rows: Sequence[tuple[int, str]],
    text_of: Callable[[tuple[int, str]], str] | None = None,
    open_id: int | None = None,
    size: int = PAGE_SIZE,
    keep_order: bool = False,
    param: str = "page",
) -> Page:
    """rows are (id, sort name) pairs, light to load for every row; returns the page to show.

    Sorted by name unless keep_order. The filter matches the name (or text_of(row)) case-insensitively.
    With open_id, the page holding that row is shown (the filter is kept only if the row matches
    it), so a link to one row works from anywhere.
    """
    query = query_text()
    ordered = list(rows) if keep_order else sorted(rows, key=lambda r: (r[1].lower(), r[0]))
    if query:
        needle = query.lower()
        matched = [r for r in ordered if needle in (text_of(r) if text_of else r[1]).lower()]
        if open_id is not None and all(r[0] != open_id for r in matched):
            query, matched = "", ordered
        ordered = matched
    pages = max(1, -(-len(ordered) // size))
    number = min(page_number(param), pages)
    if open_id is not None:
        for index, row in enumerate(ordered):
            if row[0] == open_id:
                number = index // size + 1
                break
    start = (number - 1) * size
    return Page(number, pages, len(ordered), query, [r[0] for r in ordered[start : start + size]], param)
