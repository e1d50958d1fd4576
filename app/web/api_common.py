"""The API's blueprint, its errors as JSON and the small helpers every part of the API shares."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

from app.core import health
from app.core.channels import Reply
from pylib import decoding

log = logging.getLogger(__name__)
# Any here is the wire boundary: JSON request bodies (checked before use) and JSON responses.

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_EVENT_LIMIT = 100
MAX_EVENT_LIMIT = 1000
MAX_EVENT_OFFSET = 10_000_000
MAX_DEVICE_LIMIT = 5000  # devices per list in one answer; above the default caps, so one call lists all
MAX_BODY_BYTES = 1024 * 1024


class ApiError(Exception):
    """An error answered as {"error": ..., "field": ...} with an HTTP status."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


# ---- errors ---------------------------------------------------------------------------------


def error(status: int, message: str, field: str | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return jsonify(body), status


def api_error(exc: ApiError) -> tuple[Response, int]:
    return error(exc.status, exc.message, exc.field)


def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response, _ = error(status, (exc.name or "error").lower())
    response.status_code = status
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def internal_error(exc: InternalServerError) -> tuple[Response, int]:
    original = getattr(exc, "original_exception", None) or exc
    log.error("%s %s failed", request.method, request.path, exc_info=original)
    return error(500, "internal error")


def database_error(exc: OperationalError) -> tuple[Response, int]:
    # A locked or vanished database is a passing condition, not a bug: the client should retry.
    log.warning("%s %s: database unavailable: %s", request.method, request.path, exc.orig)
    return error(503, "the database is busy or unavailable; try again")


def raise_for(reply: Reply) -> None:
    if not reply.ok:
        raise ApiError(reply.status if reply.status >= 400 else 500, reply.error or "failed", reply.field)


# ---- helpers --------------------------------------------------------------------------------


def json_body() -> Any:
    """The request body as JSON, decoded once within pylib.decoding's limits; None when it is not.

    Read whatever the Content-Type says: a client that forgets the header still gets its JSON read.
    """
    try:
        return decoding.loads(request.get_data(cache=True))
    except decoding.DecodeError:
        health.count("api.malformed")
        return None


def json_object() -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def iso_dt(value: datetime | None) -> str | None:
    if value is None:
        return None
    # The database holds naive UTC times.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def whole_param(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise ApiError(400, f"{name} must be a whole number from 0 to {maximum}", name)
    return int(raw)
