"""GET /metrics for Prometheus and GET/PUT /api/logging for the run-time log level, both behind login."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.core.settings import Settings
from app.ops import backup_status, hub_metrics, observability
from app.web.api import ApiError, json_body
from app.web.context import ctx

bp = Blueprint("observability", __name__)
_REGISTRY = "event_processor_metrics"


@bp.get("/metrics")
def get_metrics() -> Response:
    # auth's guard has already checked the session or the API bearer token: no public scrape.
    registry: CollectorRegistry = current_app.extensions[_REGISTRY]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


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


class BackupCollector(Collector):
    """The backup status file at scrape time: its age, and whether the state is ok."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = backup_status.read_status(self.settings)
        if status.state == "not configured":
            return
        if status.age_seconds is not None:
            yield GaugeMetricFamily(
                "event_processor_backup_age_seconds",
                "Seconds since the last good database backup to S3.",
                value=status.age_seconds,
            )
        yield GaugeMetricFamily(
            "event_processor_backup_ok",
            "1 when the last backup and the last restore drill succeeded and the backup is recent.",
            value=1.0 if status.state == "ok" else 0.0,
        )


def init_app(app: Flask) -> None:
    """Register the routes and the app's own metrics registry (read at scrape time, nothing stored)."""
    with app.app_context():
        presence = ctx().presence
        settings = ctx().settings
    registry = hub_metrics.make_registry(presence, settings)
    registry.register(BackupCollector(settings))
    app.extensions[_REGISTRY] = registry
    app.register_blueprint(bp)
