"""ZeroMQ inproc PUSH/PULL helpers carrying typed messages encoded with msgpack (never pickle)."""

from __future__ import annotations

import dataclasses
import threading
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


def bind_pull(url: str) -> Socket:
    sock = context().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    return sock


def connect_push(url: str) -> Socket:
    sock = context().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    return sock


def made(sock: Socket | None) -> Socket:
    """A socket its thread makes in work(): None there means it was used before then (a bug)."""
    if sock is None:
        raise RuntimeError("a socket was used before its thread made it")
    return sock


def send(sock: Socket, msg: object) -> None:
    sock.send(encode(msg))


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


def recv(sock: Socket, timeout_ms: int | None = None) -> object | None:
    """Receive one message, or None when nothing arrives within timeout_ms."""
    frame = recv_frame(sock, timeout_ms)
    return None if frame is None else decode(frame)
