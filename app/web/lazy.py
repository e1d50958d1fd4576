"""The WSGI app the hub serves: anonymous health checks without Flask, the Flask app built on first need.

Flask, Werkzeug, Jinja, WTForms, Flask-Login and the dashboard's own modules cost a hub ~9 MB of
memory, and most hubs answer nothing but the container's health check for hours or days between two
looks at the dashboard. So the web server starts with this app: `GET /api/health` without a cookie
and without an Authorization header (the health check, a monitor) is answered here, byte for byte as
the Flask app's view answers it (app.web.health_status: the same body; the same headers); every other
request builds the Flask app (imports included), once, and goes to it. docs/performance.md says what
this saves and what the first page then costs.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.web import health_status, security

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

HEALTH_PATH = "/api/health"
STATUS_LINES = {200: "200 OK", 503: "503 SERVICE UNAVAILABLE"}  # as Werkzeug writes them
# What the Flask app adds to every answer: its security headers (app.web.security), and Vary: Cookie,
# which Flask sets because the login check reads the (empty) session.
EXTRA_HEADERS = [*security.HEADERS.items(), ("Vary", "Cookie")]


def is_anonymous_health(environ: WSGIEnvironment) -> bool:
    """GET /api/health from a caller with neither a cookie nor an Authorization header."""
    return (
        environ.get("REQUEST_METHOD") == "GET"
        and environ.get("PATH_INFO") == HEALTH_PATH
        and not environ.get("SCRIPT_NAME")
        and not environ.get("HTTP_COOKIE")
        and not environ.get("HTTP_AUTHORIZATION")
    )


class LazyWebApp:
    """Answers anonymous health checks itself; builds the full app with `build` on the first other request."""

    def __init__(
        self,
        build: Callable[[], WSGIApplication],
        settings: Settings,
        session_factory: Callable[[], Session],
    ) -> None:
        self._build = build
        self._settings = settings
        self._session_factory = session_factory
        self._app: WSGIApplication | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        """Whether the full app has been built (someone asked for more than the anonymous health)."""
        return self._app is not None

    def app(self) -> WSGIApplication:
        """The full app: built once, by whichever request thread needs it first; the others wait for it."""
        app = self._app
        if app is None:
            with self._lock:
                if self._app is None:
                    log.info("building the dashboard's web app on its first request")
                    self._app = self._build()
                    # The app and the modules it imported live as long as the process: out of the
                    # collector's generations, as start-up's are (app.__main__.tune_gc); else each full
                    # collection walks them all again while an event waits for the GIL.
                    gc.freeze()
                app = self._app
        return app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if is_anonymous_health(environ):
            answer = self._health()
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return [body]
        return self.app()(environ, start_response)

    def _health(self) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """The anonymous health answer; None when it cannot be made here (the full app then answers)."""
        try:
            body, code = health_status.answer(self._settings, self._session_factory, details=False)
            data = health_status.json_bytes(body)
        except Exception:  # the full app's error handling decides what such a failure answers
            log.debug("anonymous health answer left to the full app", exc_info=True)
            return None
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *EXTRA_HEADERS]
        return STATUS_LINES[code], headers, data
