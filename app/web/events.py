"""(being written) events pages of the dashboard."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("events", __name__)
