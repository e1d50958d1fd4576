"""(being written) charts pages of the dashboard."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("charts", __name__)
