"""Ask the EventProcessor to make a change and wait for its Reply (used by the API, bot, scheduler)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import zmq

from app.core.channels import PROCESSOR, Command, Reply
from pylib import inproc

_local = threading.local()


# Any here: a command's args, checked by the processor as untrusted input (see config_changes).


def _push() -> inproc.Socket:
    # One long-lived PUSH per calling thread: closing a socket right after send could lose the message.
    sock = getattr(_local, "push", None)
    if sock is None or sock.closed or sock.context is not inproc.context():
        sock = inproc.connect_push(PROCESSOR)
        _local.push = sock
    return sock


def send(action: str, args: dict[str, Any], actor: str = "api") -> None:
    """Fire and forget."""
    inproc.send(_push(), Command(action=action, args=args, actor=actor))


def request(action: str, args: dict[str, Any], actor: str = "api", timeout: float = 5.0) -> Reply:
    """Send a Command and wait for the processor's Reply; a timeout becomes a 503 Reply."""
    url = f"inproc://reply-{uuid.uuid4().hex}"
    pull = inproc.bind_pull(url)
    try:
        inproc.send(_push(), Command(action=action, args=args, actor=actor, reply_to=url))
        reply = inproc.recv(pull, timeout_ms=int(timeout * 1000))
    finally:
        pull.close(linger=0)
    if reply is None:
        return Reply(ok=False, error="the event processor did not answer in time", status=503)
    if not isinstance(reply, Reply):  # only the processor knows this private reply address
        what = type(reply).__name__
        return Reply(ok=False, error=f"the event processor answered with a {what}", status=500)
    return reply


def answer(cmd: Command, reply: Reply) -> None:
    """Processor side: send a Reply to the caller's reply URL (if it asked for one)."""
    if not cmd.reply_to:
        return
    sock = inproc.connect_push(cmd.reply_to)
    try:
        # Give the pipe a moment to take the frame before the socket goes away.
        sock.setsockopt(zmq.LINGER, 200)
        inproc.send(sock, reply)
    finally:
        sock.close()
