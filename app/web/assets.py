"""Bootstrap 5 served from its PyPI package, so the dashboard works without internet (icons: icons.svg)."""

from __future__ import annotations

from pathlib import Path

import flask_bootstrap
from flask import Blueprint, Response, send_from_directory
from werkzeug.exceptions import NotFound

bp = Blueprint("assets", __name__, url_prefix="/assets")

ROOTS = {
    "bootstrap": Path(flask_bootstrap.__file__).resolve().parent / "static" / "bootstrap5",
}
# A week: the files only change when the package is upgraded, which restarts the hub anyway.
MAX_AGE = 7 * 24 * 3600


@bp.get("/<package>/<path:filename>")
def asset(package: str, filename: str) -> Response:
    root = ROOTS.get(package)
    if root is None:
        raise NotFound()
    return send_from_directory(root, filename, max_age=MAX_AGE)
