"""pylib.inproc's frames: every message type round-trips, only its fields travel, threads do not mix."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from app.core import channels
from pylib import inproc


def test_each_message_type_round_trips() -> None:
    messages = [
        channels.Envelope("ioboard", 1.5, {"timestamp": None, "data": {"a": [1, {"b": b"\x00"}]}}, "mqtt"),
        channels.Command("fire", {"input": 3}, reply_to="inproc://r"),
        channels.Reply(False, error="no", field="name", status=400),
        channels.ControlMessage("event.control.buzzer", b"\x81\xa1a\x01", 12.5, "buzzer"),
        channels.AuditRecord({"input_key": "k", "fired": True}, [{"output_key": "o"}]),
        channels.MqttPublish("t/1", b"payload", qos=0, retain=True),
        channels.StateWrite({"k": None, "j": {"x": 1}}, 3.25),
    ]
    for msg in messages:
        assert inproc.decode(inproc.encode(msg)) == msg


def test_only_the_fields_travel() -> None:
    msg = channels.ControlMessage("event.control.buzzer", b"body", 1.0)
    msg.note = "set beside the fields"  # type: ignore[attr-defined]
    back = inproc.decode(inproc.encode(msg))
    assert back == msg and not hasattr(back, "note")


def test_unregistered_types_and_unpackable_values_are_refused_and_the_next_frame_is_whole() -> None:
    @dataclass
    class Stranger:
        x: int

    with pytest.raises(inproc.MessageError):
        inproc.encode(Stranger(1))
    with pytest.raises(TypeError):
        inproc.encode(channels.ControlMessage("k", object(), 1.0))  # type: ignore[arg-type]
    # the thread's packer was left empty by the failure: the next frame carries nothing of it
    msg = channels.ControlMessage("k", b"b", 2.0)
    assert inproc.decode(inproc.encode(msg)) == msg


def test_threads_encoding_at_once_each_get_their_own_frames() -> None:
    failures: list[str] = []

    def encode_many(n: int) -> None:
        for i in range(2000):
            msg = channels.ControlMessage(f"event.control.{n}", bytes([n]) * (i % 50), float(i))
            if inproc.decode(inproc.encode(msg)) != msg:
                failures.append(f"thread {n}, message {i}")

    workers = [threading.Thread(target=encode_many, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
