"""The dashboard's public address: ngrok's tunnel URL (local agent API) or a configured one (Tailscale)."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from app.core import health
from app.core.settings import Settings
from pylib import threads

log = logging.getLogger(__name__)

COMPONENT = "ngrok"
REQUEST_TIMEOUT = 5.0
SEARCH_SECONDS = 10.0  # as the original polled until the tunnel was up
RECHECK_SECONDS = 60.0  # a free ngrok tunnel gets a new address whenever the agent restarts
MAX_BODY = 1024 * 1024

_lock = threading.Lock()
_discovered: str | None = None


def set_discovered(url: str | None) -> None:
    global _discovered
    with _lock:
        _discovered = url


def dashboard_url(settings: Settings) -> str | None:
    """The address to hand a person: ngrok's current public URL when known, else DASHBOARD_PUBLIC_URL.

    Never with credentials in it (the original put the basic-auth user and password into the chat).
    """
    with _lock:
        found = _discovered
    return found or settings.public_url or None


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def pick_tunnel(answer: Any, name: str) -> str | None:
    """The public URL of the named tunnel in ngrok's GET /api/tunnels answer (https preferred)."""
    tunnels = answer.get("tunnels") if isinstance(answer, dict) else None
    if not isinstance(tunnels, list):
        return None
    candidates: list[str] = []
    for tunnel in tunnels:
        if not isinstance(tunnel, dict):
            continue
        tunnel_name = tunnel.get("name")
        url = tunnel.get("public_url")
        if not isinstance(tunnel_name, str) or not isinstance(url, str):
            continue
        # ngrok names an http tunnel's second scheme "<name> (http)"
        named = tunnel_name == name or tunnel_name.startswith(f"{name} (")
        if named and url.startswith(("https://", "http://")):
            candidates.append(url)
    candidates.sort(key=lambda u: not u.startswith("https://"))
    return _without_credentials(candidates[0]) if candidates else None


class NgrokDiscovery(threads.AppThread):
    """Asks ngrok's local agent API for the tunnel's public URL, then keeps it current."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("NgrokDiscovery")
        self._settings = settings
        self._url = f"http://{settings.ngrok_client_api_host}:{settings.ngrok_client_api_port}/api/tunnels"
        self._quiet = threads.QuietRepeats()

    def poll(self) -> str | None:
        """One look at the agent; the tunnel's URL, or None (the reason is logged, throttled)."""
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310
                answer = json.loads(response.read(MAX_BODY))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._problem(f"ngrok's agent API at {self._url} did not answer: {exc}")
            return None
        url = pick_tunnel(answer, self._settings.ngrok_tunnel_name)
        if url is None:
            self._problem(f"ngrok has no tunnel named {self._settings.ngrok_tunnel_name!r} yet")
        return url

    def _problem(self, message: str) -> None:
        health.set_state(COMPONENT, "searching", message)
        if self._quiet.should_log(message):
            log.warning("%s; retrying", message)

    def work(self) -> None:
        health.set_state(COMPONENT, "searching")
        known: str | None = None
        while not threads.shutting_down.is_set():
            url = self.poll()
            if url is not None:
                if url != known:
                    log.info("ngrok public URL: %s", url)
                    known = url
                set_discovered(url)
                health.set_state(COMPONENT, "ok", url)
                self._quiet.reset()
            # Not threads.Backoff: ngrok's agent is local and cheap to ask, and a tunnel that appears
            # should be found within SEARCH_SECONDS however long it was missing.
            if threads.sleep(RECHECK_SECONDS if url else SEARCH_SECONDS):
                break
