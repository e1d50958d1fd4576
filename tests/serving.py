"""The HTTP serving loop shared by the stand-ins: start on a port in a thread, stop and free the port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Serving:
    """A ThreadingHTTPServer on 127.0.0.1:port in a daemon thread, passing each request to handle.

    The handler logs nothing: request lines carry keys and tokens, and a stand-in should show that
    the client keeps them out of logs, not leak them itself. stop() then a new Serving keeps the port.
    """

    def __init__(
        self,
        port: int,
        handle: Callable[[BaseHTTPRequestHandler], None],
        name: str,
        methods: Sequence[str] = ("GET",),
        protocol: str = "HTTP/1.0",
    ) -> None:
        def dispatch(request: BaseHTTPRequestHandler) -> None:
            handle(request)

        def quiet(_request: BaseHTTPRequestHandler, _format: str, *_args: Any) -> None:
            pass

        attributes: dict[str, Any] = {f"do_{method}": dispatch for method in methods}
        handler = type(
            f"{name}Handler",
            (BaseHTTPRequestHandler,),
            {**attributes, "log_message": quiet, "protocol_version": protocol},
        )
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
