"""The thread that serves the Flask app with waitress and stops within a second on shutdown."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server

from app.core import health
from app.core.settings import Settings
from pylib import threads

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)

# waitress logs nothing per request, but its queue-depth warning fires on ordinary bursts of
# dashboard requests; real faults still come through at ERROR.
logging.getLogger("waitress").setLevel(logging.WARNING)
logging.getLogger("waitress.queue").setLevel(logging.ERROR)

_POLL_SECONDS = 0.25
_DISPATCHER_GRACE_SECONDS = 1


class WebServer(threads.AppThread):
    """Serves `app` on settings.http_bind:http_port; port 0 binds a free port, exposed as self.port."""

    def __init__(self, settings: Settings, app: WSGIApplication) -> None:
        super().__init__("WebServer")
        # Our own socket map so the loop below can tell when every channel has gone.
        # Any: waitress keeps its dispatchers in this map, though its stubs type the values as sockets.
        self._map: dict[int, Any] = {}
        # Bound here, not in work(), so the port is known (and a busy port fails) before start().
        # waitress would strip every X-Forwarded-* header (it trusts no proxy by default), which also
        # hid them from the app; app.web.security believes them from APP_TRUSTED_PROXIES only.
        self.server = create_server(
            app,
            map=self._map,
            host=settings.http_bind,
            port=settings.http_port,
            threads=4,
            clear_untrusted_proxy_headers=False,
        )
        # A name such as "localhost" may bind several sockets (IPv4 and IPv6); report the first.
        self._listeners = [obj for obj in self._map.values() if isinstance(obj, BaseWSGIServer)]
        # (host, port) as waitress's own effective_host/effective_port read them (its stubs lack those)
        host, port = self._listeners[0].getsockname()
        self.host: str = str(host)
        self.port: int = int(port)
        self._stop_requested = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()

    def work(self) -> None:
        health.set_state("web", "listening", f"{self.host}:{self.port}")
        log.info("web server listening on http://%s:%s", self.host, self.port)
        try:
            # waitress's run() loops until its map is empty, which only another thread could
            # arrange, unsafely; polling in short steps lets this thread close its own sockets.
            while self._map and not self._stop_requested.is_set() and not threads.shutting_down.is_set():
                wasyncore.loop(
                    timeout=_POLL_SECONDS,
                    map=self._map,
                    use_poll=self.server.adj.asyncore_use_poll,
                    count=1,
                )
        finally:
            self._close()
            health.set_state("web", "stopped")
        if self._stop_requested.is_set() and not threads.shutting_down.is_set():
            # Stopped on purpose outside a process shutdown: not a death for the nanny to report.
            self.untrack()

    def stop(self) -> None:
        """Ask the server to stop; the thread closes its sockets and ends within a poll step."""
        self._stop_requested.set()
        if self.ident is None:
            self._close()  # never started: nothing else will release the port
            return
        # Wake the poll now rather than at its timeout; a closed trigger means the loop has ended.
        with contextlib.suppress(OSError):
            self._listeners[0].pull_trigger()

    def _close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            for listener in self._listeners:
                listener.close()  # listening socket and its trigger
            wasyncore.close_all(self._map, ignore_all=True)  # open client connections
        finally:
            self.server.task_dispatcher.shutdown(timeout=_DISPATCHER_GRACE_SECONDS)
