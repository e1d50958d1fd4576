"""Security headers on every response, and the client address from X-Forwarded-For of trusted proxies only.

Flask only for type hints: app.web.lazy sends the same headers with the health answer it gives without Flask.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask, Response

log = logging.getLogger(__name__)

# No 'unsafe-inline' anywhere: every script and style is a file under /static or /assets. Bootstrap's
# CSS draws a few icons (the navbar toggler, form validation marks) as data: SVG images.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "same-origin",
}
# A proxy named by host name (the compose service `ngrok`) is looked up again after this long, so a
# restarted container with a new address is followed.
RESOLVE_SECONDS = 60.0
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The configured proxies: addresses, networks (CIDR) and host names resolved now and then."""

    def __init__(self, entries: Iterable[str], resolve: Callable[[str], list[str]] | None = None) -> None:
        self.networks: list[Network] = []
        self.names: list[str] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.append(entry)
        self._resolve = resolve or _resolve
        self._resolved: list[Network] = []
        self._resolved_at = -RESOLVE_SECONDS
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    def _named(self) -> list[Network]:
        if not self.names:
            return []
        with self._lock:
            now = time.monotonic()
            if now - self._resolved_at >= RESOLVE_SECONDS:
                found: list[Network] = []
                for name in self.names:
                    for text in self._resolve(name):
                        address = _parse_ip(text)
                        if address is not None:
                            found.append(ipaddress.ip_network(address))
                self._resolved, self._resolved_at = found, now
            return self._resolved

    def trusts(self, text: str | None) -> bool:
        address = _parse_ip(text or "")
        if address is None:
            return False
        return any(address in network for network in (*self.networks, *self._named()))


def _resolve(name: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(name, None)})
    except OSError as exc:
        log.debug("trusted proxy %r does not resolve: %s", name, exc)
        return []


def client_address(peer: str | None, forwarded_for: str, proxies: TrustedProxies) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the right-most address
    in X-Forwarded-For that is not itself a trusted proxy (what each proxy appended, read backwards)."""
    peer = peer or ""
    if not proxies.trusts(peer):
        return peer
    client = peer
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        address = _parse_ip(hop)
        if address is None:
            break  # garbage from the client's side of the chain: stop at the last proxy we trust
        client = str(address)
        if not proxies.trusts(client):
            break
    return client


class ProxyHeaders:
    """WSGI middleware: REMOTE_ADDR and the scheme from X-Forwarded-For/-Proto, only from trusted proxies."""

    def __init__(self, wsgi_app: WSGIApplication, proxies: TrustedProxies) -> None:
        self.wsgi_app = wsgi_app
        self.proxies = proxies

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        peer = environ.get("REMOTE_ADDR")
        if self.proxies.trusts(peer):
            environ["event_processor.proxy_peer"] = peer
            forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
            environ["REMOTE_ADDR"] = client_address(peer, forwarded, self.proxies)
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask, proxies: TrustedProxies) -> None:
    """Every response gets the security headers; the client address honours only trusted proxies."""
    app.after_request(add_headers)
    # Flask's documented way to wrap the app in middleware; its hints declare wsgi_app a method.
    app.wsgi_app = ProxyHeaders(app.wsgi_app, proxies)  # type: ignore[method-assign]
