"""GET /api/health's answer, without Flask: the API's view and the web server's light path both use it.

The container's health check and a monitor call /api/health anonymously every few seconds, long before
(and often without) anyone opening the dashboard; app.web.lazy answers them from here, so the Flask
app is imported and built only for the first request that needs it (docs/performance.md, session 5).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from app.core import health
from app.core.settings import Settings
from app.engine import clocks
from app.ops import backup_status, observability
from app.store import roles


def answer(
    settings: Settings, session_factory: Callable[[], Session], details: bool
) -> tuple[dict[str, Any], int]:
    """(body, status code): status for anyone; broker details, counters, backup and clocks with details."""
    ready = health.is_ready()
    components = health.components()
    down = observability.down_components(components, settings)
    # RabbitMQ or MQTT down for longer than HEALTH_DOWN_GRACE_SECONDS: what turns this (and the
    # container's health check) into a 503; a shorter outage (a broker restart) is only "degraded"
    unhealthy = health.critical_down(settings.health_down_grace_seconds)
    body: dict[str, Any] = {
        "status": "starting" if not ready else "unhealthy" if unhealthy else "degraded" if down else "ok",
        "ready": ready,
        "down": down,
        "unhealthy": unhealthy,
    }
    if details:
        # addresses, users, vhosts and versions sit in the components' details and the counters
        body.update(
            components=components,
            counters=health.counters(),
            # shown, never part of the status code: a stale backup must not make Docker restart the hub
            backup=backup_status.read_status(settings).as_dict(),
            # device clocks that differ from the hub's, learned from heartbeats (app.engine.clocks)
            clocks=clocks.offsets.summary(),
        )
    if settings.ha_enabled:  # the standby pair: both hubs, which is active and since when
        pair = roles.status(session_factory, settings)
        if not details:
            # which hub is active is status (a monitor asks it); where each hub is reached is not
            for node in (*pair.get("nodes", []), pair.get("active") or {}):
                node.pop("url", None)
        body["ha"] = pair
    return body, 200 if ready and not unhealthy else 503


def json_bytes(body: dict[str, Any]) -> bytes:
    """The body as the Flask app's jsonify writes it (app.web.create_app: keys in order, compact, a newline).

    Only for the anonymous answer, whose values are str, bool, numbers, lists and dicts: Flask's own
    default= for dates and the like is not needed (a TypeError here makes the caller ask Flask).
    """
    return (json.dumps(body, ensure_ascii=True, sort_keys=False, separators=(",", ":")) + "\n").encode()
