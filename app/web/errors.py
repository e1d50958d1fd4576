"""Error answers: JSON under /api, an HTML page everywhere else; never a traceback, never a bare 500."""

from __future__ import annotations

import logging

from flask import Flask, Response, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from app.web import api, legacy
from app.web.context import is_api_request

log = logging.getLogger(__name__)

MESSAGES = {
    400: "That request could not be understood.",
    403: "That is not allowed.",
    404: "There is nothing here. The device or page may have been removed.",
    405: "That action is not allowed here.",
    413: "That upload is too large.",
    503: "The database is busy; try again in a moment.",
}


def _page(status: int, title: str, event_id: str | None = None) -> tuple[str, int]:
    message = MESSAGES.get(status, "Something went wrong; it has been logged.")
    html = render_template("error.html", status=status, title=title, message=message, event_id=event_id)
    return html, status


def _http(exc: HTTPException) -> Response | tuple[str, int]:
    if is_api_request():
        return api.http_error(exc)
    return _page(exc.code or 500, exc.name or "Error")


def _internal(exc: InternalServerError) -> Response | tuple[Response | str, int]:
    if is_api_request():
        return api.internal_error(exc)
    original = getattr(exc, "original_exception", None) or exc
    log.error("%s %s failed", request.method, request.path, exc_info=original)
    # With Sentry on, the page offers the feedback form for the event just sent (as the original did).
    return _page(500, "Internal error", legacy.last_event_id())


def _database(exc: OperationalError) -> tuple[Response | str, int]:
    if is_api_request():
        return api.database_error(exc)
    log.warning("%s %s: database unavailable: %s", request.method, request.path, exc.orig)
    return _page(503, "Database busy")


def init_app(app: Flask) -> None:
    app.register_error_handler(api.ApiError, api.api_error)
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(InternalServerError, _internal)
    app.register_error_handler(OperationalError, _database)
