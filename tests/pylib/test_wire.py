"""The device envelope: pylib make_payload compatibility, both inbound layouts, and refusals."""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
import pytest

from pylib import wire


def test_make_payload_matches_pylib() -> None:
    when = datetime(2023, 11, 25, 9, 7, 7, 123456, tzinfo=UTC)
    body = msgpack.unpackb(wire.make_payload(["Hallway Buzzer", None], when))
    assert body == {"timestamp": "2023-11-25T09:07:07.123456+0000", "data": ["Hallway Buzzer", None]}
    assert msgpack.unpackb(wire.make_payload(None, when)) == {"timestamp": "2023-11-25T09:07:07.123456+0000"}


def test_timestamps_parse_in_every_form_the_clients_use() -> None:
    expected = datetime(2023, 11, 25, 9, 7, 7, 123456, tzinfo=UTC)
    assert wire.parse_timestamp("2023-11-25T09:07:07.123456+0000") == expected
    assert wire.parse_timestamp(expected.timestamp()) == expected
    assert wire.parse_timestamp("2023-11-25T09:07:07") == expected.replace(microsecond=0)
    assert wire.parse_timestamp(None) is None
    for bad in ("yesterday", True, [1]):
        with pytest.raises(wire.WireError):
            wire.parse_timestamp(bad)


def test_both_layouts_normalise_to_data() -> None:
    nov = msgpack.packb(
        {"timestamp": "2023-11-25T09:07:07.123456+0000", "data": {"device_info": {"inputs": []}}}
    )
    dec = msgpack.packb({"timestamp": "2023-11-25T09:07:07.123456+0000", "device_info": {"inputs": []}})
    assert wire.decode_body(nov, 1024) == wire.decode_body(dec, 1024)
    image = msgpack.packb(
        {"data": {"active_devices": [{"device_key": "Front Camera", "image": b"\xff\xd8"}]}}
    )
    assert wire.decode_body(image, 1024)["data"]["active_devices"][0]["image"] == b"\xff\xd8"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00garbage",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({1: 2}, strict_types=False),
        msgpack.packb({"data": "a string"}),
        msgpack.packb({"timestamp": ["x"], "data": {}}),
        msgpack.packb({"data": {"k": b"x" * 2000}}),
    ],
)
def test_refusals(body: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_body(body, 1024)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"\xc1not msgpack", "FormatError: a byte no msgpack value starts with"),
        (b"\x93\x01\x02", "ValueError: Unpack failed: incomplete input"),
    ],
)
def test_a_refusal_says_why(body: bytes, says: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.decode_body(body, 1024)
    assert str(caught.value) == f"not msgpack: {says}"


def test_preview_is_truncated() -> None:
    text = wire.preview(b"x" * 10_000)
    assert len(text) < 200 and "10000 bytes" in text
