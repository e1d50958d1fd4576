"""The msgpack envelope the real companion devices put on RabbitMQ (wire-format.md §2)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgpack

from pylib import decoding

# pylib datetime.py: '%Y-%m-%dT%H:%M:%S.%f%z', e.g. '2023-11-25T09:07:07.123456+0000'.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"


class WireError(ValueError):
    """A body that is not a valid device envelope."""


def format_timestamp(when: datetime | None = None) -> str:
    """Format a time the way pylib's make_timestamp does (UTC, microseconds, +0000)."""
    when = when or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(value: object) -> datetime | None:
    """Parse an envelope timestamp (ISO string, or a unix number as the 2024 clients send)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise WireError(f"timestamp has wrong type {type(value).__name__}")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise WireError(f"timestamp out of range: {value!r}") from exc
    if isinstance(value, str):
        # fromisoformat reads pylib's '...123456+0000' too, and is far cheaper than strptime.
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise WireError(f"timestamp is not a time: {value[:64]!r}") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise WireError(f"timestamp has wrong type {type(value).__name__}")


def make_payload(data: object = None, when: datetime | None = None) -> bytes:
    """Pack {'timestamp', 'data'} exactly as pylib 0.1.8 make_payload does ('data' left out when empty)."""
    body: dict[str, object] = {"timestamp": format_timestamp(when)}
    if data:
        body["data"] = data
    packed: bytes = msgpack.packb(body)  # msgpack has no type hints
    return packed


def decode_body(body: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode (once, within pylib.decoding's limits) and normalise a device body to {'timestamp', 'data'}.

    Accepts the Nov 2023 layout ({timestamp, data: {...}}) and the Dec 2023 flat layout, where
    a dict payload is merged into the envelope root. Raises WireError for anything else.
    """
    if len(body) > max_bytes:
        raise WireError(f"body of {len(body)} bytes exceeds the {max_bytes} byte limit")
    try:
        decoded = decoding.unpack(body, max_bin_len=max_bytes)
    except decoding.DecodeError as exc:
        raise WireError(str(exc)) from None
    if not isinstance(decoded, dict):
        raise WireError(f"body is a {type(decoded).__name__}, not a map")
    if any(not isinstance(k, str) for k in decoded):
        raise WireError("body has non-string keys")
    timestamp = decoded.get("timestamp")
    parse_timestamp(timestamp)
    if "data" in decoded:
        data = decoded["data"]
        if data is None:
            data = {}
        if not isinstance(data, dict):
            # tuples (control messages) travel under 'data'; devices never send them to the hub
            raise WireError(f"'data' is a {type(data).__name__}, not a map")
        extra = {k: v for k, v in decoded.items() if k not in ("timestamp", "data")}
        data = {**extra, **data}
    else:
        data = {k: v for k, v in decoded.items() if k != "timestamp"}
    if any(not isinstance(k, str) for k in data):
        raise WireError("'data' has non-string keys")
    return {"timestamp": timestamp, "data": data}


def preview(body: bytes, limit: int = 120) -> str:
    """A short printable excerpt of a body for log lines (never the whole thing)."""
    head = body[:limit]
    suffix = f"... ({len(body)} bytes)" if len(body) > limit else ""
    return repr(head) + suffix
