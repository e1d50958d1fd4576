"""Bounds: registration caps, their refusal record, bounded presence, bounded decoding, short log lines."""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core import health, limits
from app.core.channels import AUDIT, Envelope, Registration
from app.core.settings import Settings, SettingsError
from app.engine.presence import Presence
from app.sources.heartbeat import HeartbeatFilter
from app.store import db, registry, store_writes
from app.store.models import InputConfig, OutputConfig
from pylib import decoding, inproc, ratelog, wire


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'limits.db'}")
    db.upgrade(engine)
    factory = db.session_factory(engine)
    with factory() as session:
        registry.ensure_builtin(session, "the-hub")  # two inputs and one output that count in the totals
    yield factory
    engine.dispose()


@pytest.fixture(autouse=True)
def audit_end() -> Iterator[None]:
    """The AuditWriter's end of the filter's registrations: a real inproc PULL, read by count()."""
    global _audit_pull
    _audit_pull = inproc.bind_pull(AUDIT)
    yield
    _audit_pull.close(linger=0)
    _audit_pull = None


_audit_pull: Any = None


def store_registrations(sessions: sessionmaker[Session]) -> None:
    """Store what the filter handed to the AuditWriter, as the writer does."""
    while (msg := inproc.recv(_audit_pull, 50)) is not None:
        if isinstance(msg, Registration):
            with sessions() as session:
                store_writes.register(session, msg)
                session.commit()


class Sink:
    """The PUSH side the HeartbeatFilter forwards to: a real inproc pair, read back here."""

    def __init__(self) -> None:
        self.pull = inproc.bind_pull("inproc://limits-test-sink")
        self.push = inproc.connect_push("inproc://limits-test-sink")

    def take(self) -> list[Envelope]:
        out = []
        while (msg := inproc.recv(self.pull, 50)) is not None:
            out.append(msg)
        return out


def make_filter(
    sessions: sessionmaker[Session], caps: limits.Caps, refusals: limits.Refusals | None = None
) -> tuple[HeartbeatFilter, Presence]:
    presence = Presence()
    hb = HeartbeatFilter(sessions, presence, caps, refusals or limits.Refusals())
    with sessions() as session:
        hb._learn_known(registry.load_known(session))
    return hb, presence


def inputs(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"device_key": f"{prefix} {i}", "type": "Motion"} for i in range(n)]


def envelope(device: str, described: list[dict], active: list[dict] | None = None) -> Envelope:
    data: dict = {"device_info": {"inputs": described}}
    if active is not None:
        data["active_devices"] = active
    return Envelope(
        origin="ioboard", received_at=1.0, payload={"timestamp": None, "data": data}, device=device
    )


def count(sessions: sessionmaker[Session], model: type) -> int:
    store_registrations(sessions)
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_settings_caps_have_defaults_and_refuse_nonsense(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert limits.Caps.from_settings(settings) == limits.Caps(64, 16, 2000, 500)
    assert settings.rabbitmq_max_message_bytes == 1024 * 1024
    assert make_settings(MAX_INPUTS="10").max_inputs == 10
    with pytest.raises(SettingsError, match="MAX_INPUTS_PER_DEVICE"):
        make_settings(MAX_INPUTS_PER_DEVICE="0")
    with pytest.raises(SettingsError, match="MAX_OUTPUTS"):
        make_settings(MAX_OUTPUTS="lots")


def test_per_device_cap_registers_the_first_keys_and_refuses_the_rest(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    refusals = limits.Refusals()
    hb, presence = make_filter(sessions, limits.Caps(inputs_per_device=5, inputs=100), refusals)
    sink = Sink()
    flood = inputs("Flood", 500)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # the same message again: still refused, logged only the first time
            hb._handle(envelope("ioboard.flooder", flood, active=flood[:1] + flood[-2:]), b"", sink.push)
    assert count(sessions, InputConfig) == 5 + 2  # five from the flooder, plus the two built-in buttons
    # Counted per refused key, per cap; logged once for the device (not once per key or per message).
    assert health.counters()[limits.COUNTER] == 3 * 495
    assert health.counters()[limits.CAP_COUNTER + "MAX_INPUTS_PER_DEVICE"] == 3 * 495
    lines = [r.getMessage() for r in caplog.records if "reached" in r.getMessage()]
    assert len(lines) == 1 and "ioboard.flooder" in lines[0] and "MAX_INPUTS_PER_DEVICE (5)" in lines[0]
    (entry,) = refusals.recent()
    assert (entry.device, entry.cap, entry.limit, entry.count) == (
        "ioboard.flooder",
        "MAX_INPUTS_PER_DEVICE",
        5,
        3 * 495,
    )
    # The known input still reaches the processor; the refused active ones are named, so it skips them.
    forwarded = sink.take()
    assert forwarded, "nothing was forwarded"
    assert set(forwarded[-1].refused_keys) == {f"Flood {i}" for i in range(5, 500)}
    # A message whose every active key was refused is not forwarded at all.
    hb._handle(envelope("ioboard.flooder", flood, active=flood[-2:]), b"", sink.push)
    assert sink.take() == []
    # Presence only tracks what was registered.
    assert set(presence.timings()) == {f"Flood {i}" for i in range(5)}
    # Another device still gets its own share.
    hb._handle(envelope("ioboard.other", inputs("Other", 3)), b"", sink.push)
    assert count(sessions, InputConfig) == 5 + 3 + 2


def test_total_cap_holds_across_devices_and_outputs_have_their_own(sessions: sessionmaker[Session]) -> None:
    refusals = limits.Refusals()
    caps = limits.Caps(inputs_per_device=10, outputs_per_device=2, inputs=2 + 25, outputs=1 + 3)
    hb, _ = make_filter(sessions, caps, refusals)
    sink = Sink()
    for n in range(10):  # ten devices of ten inputs and five outputs each
        env = envelope(f"dev{n}", inputs(f"D{n}", 10))
        env.payload["data"]["device_info"]["outputs"] = [
            {"device_key": f"D{n} out {i}", "type": "Buzzer"} for i in range(5)
        ]
        hb._handle(env, b"", sink.push)
    assert count(sessions, InputConfig) == 27  # the total, built-in buttons included
    assert count(sessions, OutputConfig) == 4
    counters = health.counters()
    assert counters[limits.CAP_COUNTER + "MAX_INPUTS"] == 100 - 25
    assert counters[limits.CAP_COUNTER + "MAX_OUTPUTS_PER_DEVICE"] >= 3
    assert counters[limits.CAP_COUNTER + "MAX_OUTPUTS"] > 0
    caps_seen = {r.cap for r in refusals.recent()}
    assert {"MAX_INPUTS", "MAX_OUTPUTS"} <= caps_seen
    # After a restart the totals are read back from the database (the per-device counts start
    # again): still nothing new.
    hb._per_device.clear()
    with sessions() as session:
        hb._learn_known(registry.load_known(session))
    hb._handle(envelope("newcomer", inputs("New", 3)), b"", sink.push)
    assert count(sessions, InputConfig) == 27


def test_refusal_record_is_bounded_and_logs_once_per_device_per_hour(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = limits.Refusals()
    with caplog.at_level(logging.WARNING, logger="app.core.limits"):
        for i in range(limits.MAX_ENTRIES * 5):
            refusals.refuse(f"device {i}", "MAX_INPUTS", 10, ["k"], now=1000.0 + i)
        refusals.refuse("device 99", "MAX_INPUTS", 10, ["k"], now=1000.0 + 120)  # within the hour
        refusals.refuse("device 99", "MAX_INPUTS", 10, ["k"], now=1000.0 + 99 + limits.LOG_SECONDS)
    recent = refusals.recent(now=1000.0 + 200)
    assert len(recent) == limits.MAX_ENTRIES
    assert recent[0].device == "device 99" and recent[0].count == 3
    # Thousands of devices, one refusal each: a few lines a minute, not a line per device.
    assert len(caplog.records) == ratelog.BURST
    assert refusals.recent(now=1000.0 + 200 + 2 * limits.BANNER_SECONDS) == []


def test_a_refusing_device_is_logged_again_after_an_hour(caplog: pytest.LogCaptureFixture) -> None:
    refusals = limits.Refusals()
    with caplog.at_level(logging.WARNING, logger="app.core.limits"):
        refusals.refuse("device 1", "MAX_INPUTS", 10, ["k"], now=1000.0)
        refusals.refuse("device 1", "MAX_INPUTS", 10, ["k"], now=1000.0 + 120)  # within the hour
        refusals.refuse("device 1", "MAX_INPUTS", 10, ["k"], now=1000.0 + limits.LOG_SECONDS)
    assert len(caplog.records) == 2
    assert all("device 'device 1' reached MAX_INPUTS (10)" in r.getMessage() for r in caplog.records)


def test_presence_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.engine import presence as presence_module

    monkeypatch.setattr(presence_module, "MAX_KEYS", 100)
    monkeypatch.setattr(presence_module, "MAX_ORIGINS", 10)
    presence = Presence()
    for i in range(1000):
        presence.seen(f"origin {i}", [f"key {i}", f"key {i} b"], when=float(i))
    assert len(presence.timings()) == 100
    assert len(presence.origins()) == 10
    assert presence.last_seen("key 999") == 999.0 and presence.last_seen("key 0") is None
    assert len(presence.take_dirty()) == 100
    assert health.counters()["presence.evicted"] == 2000 - 100 + 1000 - 10


# ---- decoding -------------------------------------------------------------------------------


def nested_empty_maps(size: int) -> bytes:
    """A body of `size` bytes made of empty maps: arrays of 4,000 maps, in arrays of such arrays."""
    inner = b"\xdc" + (4000).to_bytes(2, "big") + b"\x80" * 4000  # array16 of 4,000 fixmap(0)
    count = size // len(inner)
    return b"\xdc" + count.to_bytes(2, "big") + inner * count


def test_two_mib_of_nested_empty_maps_is_refused_cheaply() -> None:
    body = nested_empty_maps(2 * 1024 * 1024)
    assert len(body) > 2_000_000
    # Even with the size limit out of the way, the item limit refuses it, having built little.
    tracemalloc.start()
    try:
        with pytest.raises(wire.WireError, match="more than"):
            wire.decode_body(body, max_bytes=64 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"decoding cost {peak / 1e6:.1f} MB"
    # And at the default size limit it is refused before decoding at all.
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode_body(body, max_bytes=1024 * 1024)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (msgpack.packb({"data": {"k": "x" * (decoding.MAX_STR_LEN + 1)}}), "not msgpack"),
        (msgpack.packb({"data": {"k": list(range(decoding.MAX_ARRAY_LEN + 1))}}), "not msgpack"),
        (msgpack.packb({"data": {str(i): 0 for i in range(decoding.MAX_MAP_LEN + 1)}}), "not msgpack"),
        (msgpack.packb({"data": {"k": msgpack.ExtType(5, b"x" * 100)}}), "not msgpack"),
        (b"\x81\xa1a" * 40 + b"\xc0", "nested"),  # 40 maps deep
        (b"\x91" * 5000 + b"\xc0", "not msgpack"),  # deeper than msgpack's own stack
    ],
)
def test_msgpack_limits(body: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.decode_body(body, max_bytes=1024 * 1024)


def test_a_real_heartbeat_and_a_camera_picture_fit() -> None:
    inputs_ = [
        {"name": f"In {i}", "type": "Motion", "location": "Hall", "device_key": f"In {i}"} for i in range(64)
    ]
    heartbeat = wire.make_payload({"device_info": {"inputs": inputs_, "outputs": inputs_[:16]}})
    assert len(wire.decode_body(heartbeat, 1024 * 1024)["data"]["device_info"]["inputs"]) == 64
    image = wire.make_payload({"active_devices": [{"device_key": "Cam", "image": b"\xff" * 600_000}]})
    assert wire.decode_body(image, 1024 * 1024)["data"]["active_devices"][0]["image"][:1] == b"\xff"


def test_json_limits() -> None:
    assert decoding.loads(b'{"a": [1, 2, {"b": null}]}') == {"a": [1, 2, {"b": None}]}
    for text in (b"[" * 100_000 + b"]" * 100_000, b'{"a": NaN}', b"\xff", b"[" * 40 + b"]" * 40):
        with pytest.raises(decoding.DecodeError):
            decoding.loads(text)
    with pytest.raises(decoding.DecodeError, match="more than"):
        decoding.loads(b"[" + b",".join([b"{}"] * (decoding.MAX_ITEMS + 1)) + b"]")


# ---- log lines --------------------------------------------------------------------------------


def test_rate_limited_log_is_short_and_few(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = ratelog.RateLimitedLog(
        logging.getLogger("ratelog-test"), burst=3, interval=60, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="ratelog-test"):
        for _ in range(1000):
            limited.warning("bad message %s", "x" * 10_000)
        now[0] = 61.0
        limited.warning("after the window")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5
    assert all(len(m) < ratelog.MAX_LINE_CHARS + 50 for m in messages)
    assert messages[3] == "997 similar lines suppressed in 60 s" and messages[4] == "after the window"


def test_a_message_of_many_bad_entries_is_one_log_line(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    hb, _ = make_filter(sessions, limits.Caps())
    sink = Sink()
    bad = [{"device_key": ""}] * 50_000
    with caplog.at_level(logging.WARNING):
        hb._handle(envelope("ioboard.bad", bad), b"", sink.push)
    lines = [r for r in caplog.records if "bad device" in r.getMessage()]
    assert len(lines) == 1 and lines[0].getMessage().startswith("50000 bad device(s)")
    assert len(lines[0].getMessage()) <= ratelog.MAX_LINE_CHARS + 50
    assert health.counters()["heartbeat_filter.bad_device"] == 50_000
