"""pylib.inproc's frames: every message type round-trips, only its fields travel, threads do not mix."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import zmq

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


def _control(i: int) -> channels.ControlMessage:
    return channels.ControlMessage(f"event.control.o{i}", b"\x81\xa1a\x01", float(i), f"o{i}")


def test_an_outbox_hands_over_what_it_holds_in_one_frame_and_an_inbox_reads_it_back_in_order() -> None:
    pull = inproc.bind_pull("inproc://test-outbox")
    box = inproc.Outbox(inproc.connect_push("inproc://test-outbox"))
    try:
        assert box.flush() is True  # nothing held: nothing sent
        for i in range(5):
            inproc.send(box, _control(i))
        assert len(box) == 5
        box.flush()
        assert len(box) == 0
        frame = inproc.recv_frame(pull, 1000)
        assert frame is not None and frame.startswith(inproc.BATCH_MARK)
        assert inproc.recv_frame(pull, 0) is None  # five messages, one frame
        assert [inproc.decode(f) for f in inproc.frames_of(frame)] == [_control(i) for i in range(5)]
        # one message alone travels as it always did, so older readers and single sends still match
        inproc.send(box, _control(9))
        box.flush()
        alone = inproc.recv_frame(pull, 1000)
        assert alone == inproc.encode(_control(9)) and inproc.frames_of(alone) == [alone]
        inbox = inproc.Inbox(pull)
        inproc.send(box, _control(1))
        box.flush()
        for i in (2, 3):
            inproc.send(box, _control(i))
        box.flush()
        assert [inbox.recv(1000) for _ in range(3)] == [_control(1), _control(2), _control(3)]
        assert inbox.recv(0) is None
        # add(): a long burst goes on a whole batch at a time, the rest waits for the flush
        for i in range(inproc.MAX_BATCH + 3):
            box.add(inproc.encode(_control(i)))
        assert len(box) == 3
        batch = inproc.recv_frame(pull, 1000)
        assert batch is not None and len(inproc.frames_of(batch)) == inproc.MAX_BATCH
        assert inproc.recv_frame(pull, 0) is None
        box.flush()
        rest = inproc.recv_frame(pull, 1000)
        assert rest is not None
        left = [_control(i) for i in range(inproc.MAX_BATCH, inproc.MAX_BATCH + 3)]
        assert [inproc.decode(f) for f in inproc.frames_of(rest)] == left
    finally:
        box.close(linger=0)
        pull.close(linger=0)


def test_recv_frames_takes_what_waits_up_to_its_limit_and_never_splits_a_batch() -> None:
    pull = inproc.bind_pull("inproc://test-recv-frames")
    push = inproc.connect_push("inproc://test-recv-frames")
    box = inproc.Outbox(push)
    try:
        assert inproc.recv_frames(pull, 0) == []
        for i in range(3):
            push.send(inproc.encode(_control(i)))
        for i in range(3, 8):
            inproc.send(box, _control(i))
        box.flush()
        push.send(inproc.encode(_control(8)))
        first = inproc.recv_frames(pull, 1000, limit=4)
        # three single frames, then the batch of five whole: seven, past the limit of four
        assert [inproc.decode(f) for f in first] == [_control(i) for i in range(8)]
        assert [inproc.decode(f) for f in inproc.recv_frames(pull, 1000)] == [_control(8)]
    finally:
        push.close(linger=0)
        pull.close(linger=0)


def test_a_batch_that_does_not_unpack_fails_to_decode_like_any_bad_frame_and_the_next_is_whole() -> None:
    pull = inproc.bind_pull("inproc://test-bad-batch")
    push = inproc.connect_push("inproc://test-bad-batch")
    try:
        for bad in (inproc.BATCH_MARK, inproc.BATCH_MARK + b"\x92\x01\x02", inproc.BATCH_MARK + b"\xff"):
            assert inproc.frames_of(bad) == [bad]
            with pytest.raises(inproc.MessageError):
                inproc.decode(bad)
        inbox = inproc.Inbox(pull)
        push.send(inproc.BATCH_MARK + b"\x92\x01\x02")  # a list, but not of frames
        push.send(inproc.encode(_control(1)))
        with pytest.raises(inproc.MessageError):
            inbox.recv(1000)
        assert inbox.recv(1000) == _control(1)
    finally:
        push.close(linger=0)
        pull.close(linger=0)


@pytest.mark.parametrize("hwm", [inproc.BATCH_HWM, channels.AUDIT_HWM])
def test_a_batched_pipe_queues_a_bounded_number_of_frames(hwm: int) -> None:
    url = f"inproc://test-batched-hwm-{hwm}"
    pull = inproc.bind_pull(url, hwm)
    box = inproc.connect_outbox(url, hwm=hwm)
    try:
        frames = 0
        while True:
            for i in range(inproc.MAX_BATCH):
                inproc.send(box, _control(i))
            try:
                box.sock.send(inproc.pack_frames(box.frames), zmq.NOBLOCK)
            except zmq.Again:
                break
            box.frames = []
            frames += 1
            assert frames <= 10 * hwm, "the pipe did not fill up"
        # ZeroMQ's inproc pipe holds the sender's HWM plus the receiver's: for the hops, 64 frames of
        # 32 messages, about the 2,000 single frames two default HWMs held before batches; for the
        # AuditWriter's pipe (it stops reading while it writes) 500 frames, 16,000 records at most
        assert frames == 2 * hwm
        assert frames * inproc.MAX_BATCH <= 16_000
        # a full pipe stops the sender (send_patiently waits, a plain send blocks); nothing is lost
        taken = 0
        while inproc.recv_frame(pull, 0) is not None:
            taken += 1
        assert taken == frames
    finally:
        box.close(linger=0)
        pull.close(linger=0)
