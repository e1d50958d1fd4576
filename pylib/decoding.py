"""Decoding of untrusted msgpack and JSON, once, with limits on sizes, item counts and nesting.

Every object a decoder builds costs memory whether or not it is used later, so the limits apply
while decoding: msgpack's own max_*_len arguments refuse a long string, binary, array or map at its
header, before anything is allocated; a hook on every map and array counts the items built so far
and stops at MAX_ITEMS (a 2 MiB body holds up to 2 million one-byte empty maps, which as Python
dicts would cost over 100 MB); and nesting deeper than MAX_DEPTH is refused (msgpack's own parser
stops at 1024 levels, JSON's at Python's recursion limit).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NoReturn, TypeVar

import msgpack

MAX_STR_LEN = 64 * 1024  # a device key is at most 100 characters; an event detail 255
MAX_ARRAY_LEN = 4096  # a device lists its inputs: at most MAX_INPUTS_PER_DEVICE are ever registered
MAX_MAP_LEN = 4096
MAX_EXT_LEN = 64  # msgpack's timestamp extension is 12 bytes; devices send no other
MAX_ITEMS = 50_000  # maps, arrays and their members, over the whole body
MAX_DEPTH = 32  # a real heartbeat nests 4 deep


class DecodeError(ValueError):
    """A body refused by a limit, or not msgpack / JSON at all."""


_Container = TypeVar("_Container", dict[Any, Any], list[Any])


class _Counter:
    """Counts the items of every map and array as the decoder finishes them; raises past the limit."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, container: _Container) -> _Container:
        self.left -= 1 + len(container)
        if self.left < 0:
            raise DecodeError(f"more than {MAX_ITEMS} maps, arrays and members")
        return container

    def pairs(self, pairs: list[tuple[str, object]]) -> dict[str, object]:
        self.left -= 1 + len(pairs)
        if self.left < 0:
            raise DecodeError(f"more than {MAX_ITEMS} maps, arrays and members")
        return dict(pairs)


def depth(value: object, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of decoded maps and lists; stops counting (returns limit + 1) past the limit.

    Iterative, over at most MAX_ITEMS containers already counted, so it costs little.
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


# unpack and loads return Any: this is the wire boundary, where untrusted bytes become Python values
# of unknown shape; callers check each value (isinstance) before it becomes a typed message.
def unpack(body: bytes, max_bin_len: int) -> Any:
    """msgpack bytes -> Python values (str keys may be any type); raises DecodeError."""
    counter = _Counter(MAX_ITEMS)
    try:
        value = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=False,
            max_str_len=MAX_STR_LEN,
            max_bin_len=max_bin_len,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=MAX_EXT_LEN,
            object_hook=counter.take,
            list_hook=counter.take,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage and for its limits
        # FormatError (a byte no msgpack value starts with) has no message of its own.
        why = str(exc)[:80] or "a byte no msgpack value starts with"
        raise DecodeError(f"not msgpack: {exc.__class__.__name__}: {why}") from None
    if depth(value) > MAX_DEPTH:
        raise DecodeError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def loads(text: str | bytes) -> Any:
    """JSON text -> Python values; NaN/Infinity, bad UTF-8, deep nesting and too many items refused."""
    counter = _Counter(MAX_ITEMS)
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=counter.pairs)
    except DecodeError:
        raise
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; deep nesting raises RecursionError
    except (ValueError, RecursionError, TypeError) as exc:
        raise DecodeError(f"not JSON: {type(exc).__name__}: {str(exc)[:80]}") from None
    if isinstance(value, list):
        counter.take(value)  # arrays have no hook in json; the top-level one is counted here
    if depth(value) > MAX_DEPTH:
        raise DecodeError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def json_object(value: object) -> dict[str, Any]:
    """`value` when it is a decoded JSON object, else an empty one: for reading optional nested maps.

    Its values stay Any: they are untrusted decoded data that each reader checks before use.
    """
    return value if isinstance(value, dict) else {}
