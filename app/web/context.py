"""What every request handler needs (settings, database sessions, presence), stored on the Flask app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app, request
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.engine.presence import Presence

_EXTENSION = "event_processor"


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    session_factory: Callable[[], Session]
    presence: Presence


def install(app: Flask, context: WebContext) -> None:
    app.extensions[_EXTENSION] = context


def ctx() -> WebContext:
    context: WebContext = current_app.extensions[_EXTENSION]
    return context


def is_api_request() -> bool:
    """JSON answers under /api, HTML pages everywhere else.

    /metrics counts as API: Prometheus scrapes it with a bearer token and needs a 401, not a
    redirect to the login page, when the token is wrong.
    """
    return request.path in ("/api", "/metrics") or request.path.startswith("/api/")
