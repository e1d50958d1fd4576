"""The Flask app: the JSON API and the dashboard pages, all behind login.

Importing this package costs nothing: Flask, Jinja, WTForms and the pages are imported by create_app,
which the hub calls on the first request that needs them (app.web.lazy); anonymous GET /api/health
is answered without them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.settings import Settings
from app.engine import presence as presence_module

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent.parent
# Forms and JSON bodies: the largest real one (the links form of a 2,000-input house) is ~40 KiB.
MAX_BODY_BYTES = 256 * 1024


def create_app(
    settings: Settings,
    session_factory: Callable[[], Session],
    presence: presence_module.Presence = presence_module.presence,
) -> Flask:
    """The hub's web app; session_factory gives a new Session per call (e.g. a sessionmaker)."""
    # Here, not at the top: the hub imports this package at start-up and builds the app later.
    from flask import Flask
    from flask.json.provider import DefaultJSONProvider
    from flask_wtf.csrf import CSRFProtect

    from app.web import (
        api,
        assets,
        auth,
        charts,
        config_pages,
        dashboard,
        errors,
        events,
        formatting,
        legacy,
        metrics,
        schedule,
        standby,
    )
    from app.web import quiet_hours as quiet_hours_api
    from app.web.context import WebContext, install

    app = Flask("app", template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.secret_key = settings.secret_key or secrets.token_hex(32)
    if isinstance(app.json, DefaultJSONProvider):  # Flask's own, which sorts keys unless told
        app.json.sort_keys = False  # keep columns in table order (app.web.health_status writes the same)
    app.jinja_env.add_extension("jinja2.ext.loopcontrols")
    install(app, WebContext(settings, session_factory, presence))
    formatting.init_app(app)
    errors.init_app(app)
    CSRFProtect(app)  # every form and session-cookie JSON write carries a CSRF token
    auth.init_app(app)  # login and bearer tokens guard everything registered here
    # No blanket exemption for the API: auth's guard runs csrf.protect() for every request
    # except bearer-token calls, so session-cookie JSON writes must send X-CSRFToken.
    for blueprint in (
        api.bp,
        assets.bp,
        dashboard.bp,
        events.bp,
        charts.bp,
        config_pages.bp,
        schedule.bp,
        schedule.api_bp,
        legacy.bp,
    ):
        app.register_blueprint(blueprint)
    standby.init_app(app)  # a standby hub of a pair: banner and read-only (nothing with one hub)
    metrics.init_app(app)  # /metrics and /api/logging, behind the same login and bearer tokens
    app.register_blueprint(quiet_hours_api.bp)
    return app
