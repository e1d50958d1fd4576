"""GET /metrics for Prometheus and GET/PUT /api/logging for the run-time log level, both behind login."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app

from app.ops import observability
from app.web.api import ApiError, json_body
from app.web.context import ctx

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

bp = Blueprint("observability", __name__)
_REGISTRY = "event_processor_metrics"


class LazyRegistry:
    """The app's metrics registry, built by the first scrape.

    prometheus_client and the hub's collectors (app.ops.hub_metrics) cost ~0.9 MB, which a hub whose
    dashboard is opened but never scraped would carry for nothing (docs/performance.md, session 6).
    """

    def __init__(self) -> None:
        self._registry: CollectorRegistry | None = None
        self._lock = threading.Lock()

    def get(self) -> CollectorRegistry:
        with self._lock:
            if self._registry is None:
                from app.ops import hub_metrics

                # in the scrape's request: its app's presence and settings
                self._registry = hub_metrics.make_registry(ctx().presence, ctx().settings)
            return self._registry


@bp.get("/metrics")
def get_metrics() -> Response:
    # auth's guard has already checked the session or the API bearer token: no public scrape.
    from app.ops import hub_metrics

    lazy: LazyRegistry = current_app.extensions[_REGISTRY]
    body, content_type = hub_metrics.exposition(lazy.get())
    return Response(body, mimetype=content_type)


@bp.get("/api/logging")
def get_logging() -> dict[str, Any]:
    return {"level": observability.current_level()}


@bp.put("/api/logging")
def put_logging() -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    level = body.get("level")
    if not isinstance(level, str) or level.strip().upper() not in observability.LEVELS:
        raise ApiError(400, f"level must be one of {', '.join(observability.LEVELS)}", "level")
    return {"level": observability.set_level(level)}


def init_app(app: Flask) -> None:
    """Register the routes and the app's own metrics registry (built by the first scrape, read at
    scrape time, nothing stored)."""
    app.extensions[_REGISTRY] = LazyRegistry()
    app.register_blueprint(bp)
