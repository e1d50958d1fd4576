"""(being written) config_pages pages of the dashboard."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("config_pages", __name__)
