"""A local stand-in for mDash's device list API that can also fail on demand (500, hang, bad JSON, down)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.serving import Serving

PATH = "/api/v2/devices"
MODES = ("ok", "500", "hang", "badjson", "object")


class MdashStandIn:
    """Serves `devices` as JSON at PATH to a caller that sends the key (query and Bearer header).

    mode: ok | 500 | hang (answers only after release or 30 s) | badjson | object (a dict, not a list).
    stop() and start() again keep the port, so a client sees connection refused in between.
    """

    def __init__(self, key: str, port: int) -> None:
        self.key = key
        self.port = port
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.devices: list[Any] = []
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._serving: Serving | None = None

    def start(self) -> None:
        self.release.clear()
        self._serving = Serving(self.port, self._handle, "MdashStandIn")

    def stop(self) -> None:
        self.release.set()
        if self._serving is not None:
            self._serving.stop()
            self._serving = None

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        query = parse_qs(parts.query)
        self.requests.append({"path": parts.path, "query": query, "headers": dict(req.headers)})
        if parts.path != PATH:
            return self._send(req, 404, b'{"error": "not found"}')
        if (
            query.get("access_token") != [self.key]
            or req.headers.get("Authorization") != f"Bearer {self.key}"
        ):
            return self._send(req, 401, b'{"error": "unauthorized"}')
        mode = self.mode
        if mode == "500":
            return self._send(req, 500, b'{"error": "internal"}')
        if mode == "hang":
            self.release.wait(30)
            return self._send(req, 200, json.dumps(self.devices).encode())
        if mode == "badjson":
            return self._send(req, 200, b'[{"id": "esp32_')
        if mode == "object":
            return self._send(req, 200, b'{"devices": []}')
        return self._send(req, 200, json.dumps(self.devices).encode())

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout) before the answer
