"""Bootstrap 5 and Font Awesome served from their PyPI packages, so the dashboard works without internet."""

from __future__ import annotations

from pathlib import Path

import flask_bootstrap
import fontawesomefree
from flask import Blueprint, Response, send_from_directory
from werkzeug.exceptions import NotFound

bp = Blueprint("assets", __name__, url_prefix="/assets")

ROOTS = {
    "bootstrap": Path(flask_bootstrap.__file__).resolve().parent / "static" / "bootstrap5",
    "fontawesome": Path(fontawesomefree.__file__).resolve().parent / "static" / "fontawesomefree",
}
# A week: the files only change when the package is upgraded, which restarts the hub anyway.
MAX_AGE = 7 * 24 * 3600


@bp.get("/<package>/<path:filename>")
def asset(package: str, filename: str) -> Response:
    root = ROOTS.get(package)
    if root is None:
        raise NotFound()
    return send_from_directory(root, filename, max_age=MAX_AGE)
