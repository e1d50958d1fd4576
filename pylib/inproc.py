"""ZeroMQ inproc PUSH/PULL helpers carrying typed messages encoded with msgpack (never pickle)."""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from typing import TypeAlias, TypeVar

import msgpack
import zmq

# Socket[bytes]: these sockets send and receive plain frames (no send_string/recv_json).
Socket: TypeAlias = "zmq.Socket[bytes]"

_context: zmq.Context[Socket] | None = None
_context_lock = threading.Lock()
_registry: dict[str, type] = {}
_field_names: dict[str, tuple[str, ...]] = {}  # per registered type, looked up once

T = TypeVar("T")

# A frame that starts with this byte carries several frames. msgpack never starts a value with
# 0xc1, so no single message can be mistaken for a batch. A hop that drained a burst hands it on
# in one send: one wake-up (a system call and a GIL handover) for the burst instead of one each,
# which under load cost more than the messages' own work (docs/performance.md, session 5).
BATCH_MARK = b"\xc1"
# Messages a hop takes before it hands on what they produced: bounds the wait the first of them
# has for the last (a few milliseconds), and the size of one frame.
MAX_BATCH = 32
# Queued frames per side of a pipe that carries batches (ZeroMQ's inproc pipe holds the sender's
# send HWM plus the receiver's receive HWM). 32 + 32 frames of up to 32 messages keep a hop's
# queue at about the 2,000 messages that two default HWMs of single frames held.
BATCH_HWM = 32


def context() -> zmq.Context[Socket]:
    """The process-wide ZeroMQ context (inproc endpoints only work within one context)."""
    global _context
    with _context_lock:
        if _context is None or _context.closed:
            _context = zmq.Context()
            _context.setsockopt(zmq.LINGER, 0)
        return _context


def terminate() -> None:
    """Destroy the context, closing any socket a thread left open, so shutdown cannot hang."""
    global _context
    with _context_lock:
        if _context is not None and not _context.closed:
            _context.destroy(linger=0)
        _context = None


def message(cls: type[T]) -> type[T]:
    """Class decorator: register a dataclass as a message type that may cross an inproc socket."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    _registry[cls.__name__] = cls
    _field_names[cls.__name__] = tuple(f.name for f in dataclasses.fields(cls))
    return cls


class MessageError(ValueError):
    """A frame that does not decode to a registered message type."""


def encode(msg: object) -> bytes:
    name = type(msg).__name__
    if _registry.get(name) is not type(msg):
        raise MessageError(f"{name} is not a registered message type")
    fields = {f: getattr(msg, f) for f in _field_names[name]}
    frame: bytes = msgpack.packb([name, fields], use_bin_type=True)  # msgpack has no type hints
    return frame


def decode(frame: bytes) -> object:
    """The registered message a frame carries; callers narrow it with isinstance (types share sockets)."""
    try:
        name, fields = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        cls = _registry[name]
        return cls(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"undecodable inproc frame: {exc}") from exc


def bind_pull(url: str, hwm: int | None = None) -> Socket:
    """A PULL socket; `hwm`: the frames it queues, when not ZeroMQ's default (BATCH_HWM where its
    busy peers send batches)."""
    sock = context().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if hwm is not None:
        sock.setsockopt(zmq.RCVHWM, hwm)
    sock.bind(url)
    return sock


def connect_push(url: str, hwm: int | None = None) -> Socket:
    """A PUSH socket; `hwm`: the frames it queues, when not ZeroMQ's default."""
    sock = context().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
    sock.connect(url)
    return sock


def connect_outbox(url: str, hwm: int = BATCH_HWM) -> Outbox:
    """An Outbox on a PUSH socket that queues `hwm` frames (each up to MAX_BATCH messages)."""
    return Outbox(connect_push(url, hwm))


S = TypeVar("S", "zmq.Socket[bytes]", "Outbox")


def made(sock: S | None) -> S:
    """A socket its thread makes in work(): None there means it was used before then (a bug)."""
    if sock is None:
        raise RuntimeError("a socket was used before its thread made it")
    return sock


def send(sock: Socket | Outbox, msg: object) -> None:
    sock.send(encode(msg))


def pack_frames(frames: list[bytes]) -> bytes:
    """One frame for several: the frame itself when alone, else a batch frame."""
    if len(frames) == 1:
        return frames[0]
    packed: bytes = msgpack.packb(frames, use_bin_type=True)
    return BATCH_MARK + packed


def frames_of(frame: bytes) -> list[bytes]:
    """The frames one received frame carries: itself, or a batch's.

    A batch that does not unpack comes back whole, so decoding it fails as any bad frame does
    (logged and counted by the thread that reads it).
    """
    if not frame.startswith(BATCH_MARK):
        return [frame]
    try:
        frames = msgpack.unpackb(frame[1:], raw=False)
    except (ValueError, TypeError):
        return [frame]
    if not isinstance(frames, list) or not all(isinstance(f, bytes) for f in frames):
        return [frame]
    return frames


class Outbox:
    """Frames for one PUSH socket, held until flush() hands them over as one frame.

    Its send() takes a frame as a socket's does, so code that sends messages (inproc.send) can send
    into it unchanged; the thread that owns it flushes once it has handled what it drained.
    """

    __slots__ = ("sock", "frames")

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.frames: list[bytes] = []

    def __len__(self) -> int:
        return len(self.frames)

    def send(self, frame: bytes, flags: int = 0) -> None:
        self.frames.append(frame)

    def add(self, frame: bytes, give_up: threading.Event | None = None) -> None:
        """send(), then flush() once a whole batch (MAX_BATCH) is held: a source reading a long burst
        hands it on a batch at a time instead of holding all of it."""
        self.frames.append(frame)
        if len(self.frames) >= MAX_BATCH:
            self.flush(give_up)

    def flush(self, give_up: threading.Event | None = None) -> bool:
        """Send what is held, waiting while the peer's queue is full (but not past `give_up`).

        Returns False when it gave up; the frames are then dropped, as a blocked send's would be.
        """
        if not self.frames:
            return True
        frame = pack_frames(self.frames)
        self.frames = []
        if give_up is None:
            self.sock.send(frame)
            return True
        return send_patiently(self.sock, frame, give_up)

    def close(self, linger: int | None = None) -> None:
        self.sock.close(linger)


def send_patiently(sock: Socket, frame: bytes, give_up: threading.Event, wait_ms: int = 100) -> bool:
    """Send a frame, waiting while the peer's queue is full, but never past `give_up` (shutdown).

    A plain blocking send into a stalled peer would keep its thread from ever seeing shutdown.
    Returns False when it gave up.
    """
    while True:
        try:
            sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            if give_up.is_set():
                return False
            sock.poll(wait_ms, zmq.POLLOUT)


def recv_frame(sock: Socket, timeout_ms: int | None = None) -> bytes | None:
    """Receive one frame, or None when nothing arrives within timeout_ms.

    A frame already waiting is taken at once: polling first would cost every message of a busy
    socket an extra system call (and a GIL handover), and only an empty socket needs the wait.
    """
    if timeout_ms is None:
        return sock.recv()
    try:
        return sock.recv(zmq.NOBLOCK)
    except zmq.Again:
        if timeout_ms == 0:
            return None
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    return sock.recv()


def recv_frames(sock: Socket, timeout_ms: int | None = None, limit: int = MAX_BATCH) -> list[bytes]:
    """What is waiting, batches unpacked, after waiting up to timeout_ms for the first frame.

    Stops taking more once `limit` messages are in hand (a batch is never split), so the thread
    hands on what the first of them produced within a few milliseconds even in a flood.
    """
    first = recv_frame(sock, timeout_ms)
    if first is None:
        return []
    out = frames_of(first)
    while len(out) < limit:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            break
        out.extend(frames_of(frame))
    return out


class Inbox:
    """A PULL socket read one message at a time, whether its peers sent them alone or in batches."""

    __slots__ = ("sock", "_frames")

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self._frames: deque[bytes] = deque()

    def recv_frame(self, timeout_ms: int | None = None) -> bytes | None:
        if self._frames:
            return self._frames.popleft()
        frame = recv_frame(self.sock, timeout_ms)
        if frame is None or not frame.startswith(BATCH_MARK):
            return frame
        self._frames.extend(frames_of(frame))
        return self._frames.popleft()

    def recv(self, timeout_ms: int | None = None) -> object | None:
        """The next message, or None when nothing arrives within timeout_ms."""
        frame = self.recv_frame(timeout_ms)
        return None if frame is None else decode(frame)

    def close(self, linger: int | None = None) -> None:
        self.sock.close(linger)


def recv(sock: Socket, timeout_ms: int | None = None) -> object | None:
    """Receive one message, or None when nothing arrives within timeout_ms."""
    frame = recv_frame(sock, timeout_ms)
    return None if frame is None else decode(frame)
