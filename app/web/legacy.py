"""The original's page URLs as redirects, the log-level page, Sentry's test event and user feedback."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from app.ops import observability
from app.web import auth
from app.web.context import ctx

log = logging.getLogger(__name__)

bp = Blueprint("legacy", __name__)

# The original's pages and where they live now; bookmarks and home-screen icons keep working.
MOVED = {
    "/event_log": "events.index",
    "/config": "schedule.page",  # the original's /config was the daily auto-schedule editor
    "/input_config": "config_pages.inputs",
    "/input_link": "config_pages.links",
    "/output_config": "config_pages.outputs",
    "/output_link": "config_pages.links",
}
FEEDBACK_MAX = {"name": 100, "email": 200, "comments": 4000}
_EVENT_ID = re.compile(r"[0-9a-f]{32}")


def _moved(endpoint: str) -> Callable[[], Response]:
    def view() -> Response:
        # 303 after a POST (the original's forms posted to the page itself): the new page is fetched with GET.
        return redirect(url_for(endpoint), 301 if request.method == "GET" else 303)

    return view


for _path, _endpoint in MOVED.items():
    bp.add_url_rule(
        _path,
        endpoint=f"moved{_path.replace('/', '_')}",
        view_func=_moved(_endpoint),
        methods=["GET", "POST"],
    )


@bp.get("/logging")
def old_logging() -> Response:
    """The original set the level on a GET; here the page asks first (a link must not change anything)."""
    level = request.args.get("level", "").strip().upper()
    target = url_for("legacy.logging_page", level=level) if level else url_for("legacy.logging_page")
    return redirect(target, 302)


@bp.route("/settings/logging", methods=["GET", "POST"])
def logging_page() -> ResponseReturnValue:
    error = None
    wanted = request.args.get("level", "").strip().upper()
    if request.method == "POST":
        level = request.form.get("level", "").strip().upper()
        try:
            name = observability.set_level(level)
        except ValueError:
            error = f"{level or 'nothing'!r} is not one of {', '.join(observability.LEVELS)}."
            wanted = level
        else:
            log.info("log level set to %s by %s", name, auth.actor())
            flash(f"The log level is now {name}.", "success")
            return redirect(url_for("legacy.logging_page"))
    elif wanted and wanted not in observability.LEVELS:
        error = f"{wanted!r} is not one of {', '.join(observability.LEVELS)}."
    status = 400 if error else 200
    html = render_template(
        "logging.html",
        current=observability.current_level(),
        wanted=wanted if wanted in observability.LEVELS else "",
        levels=observability.LEVELS,
        error=error,
    )
    return html, status


# ---- Sentry: a test event, and the user-feedback form of the 500 page ---------------------------


@bp.route("/debug-sentry", methods=["GET", "POST"])
def debug_sentry() -> ResponseReturnValue:
    """GET: a page with the button; POST: fail on purpose, so Sentry gets an event and the 500 page shows."""
    if not ctx().settings.sentry_enabled:
        return render_template("debug_sentry.html", enabled=False), 200
    if request.method == "GET":
        return render_template("debug_sentry.html", enabled=True), 200
    log.warning("Sentry test event requested by %s", auth.actor())
    # The original's test: a ZeroDivisionError (as its 1 / 0 raised), reported through the 500 handler.
    raise ZeroDivisionError("division by zero")


def last_event_id() -> str | None:
    """The id of the Sentry event this request just sent, for the feedback form (None without Sentry)."""
    if not ctx().settings.sentry_enabled:
        return None
    import sentry_sdk

    event_id = sentry_sdk.last_event_id()
    return event_id if isinstance(event_id, str) and _EVENT_ID.fullmatch(event_id) else None


def send_feedback(event_id: str, name: str, email: str, comments: str) -> bool:
    """Send a person's words about an error to Sentry as a feedback envelope linked to that event."""
    import sentry_sdk
    from sentry_sdk.envelope import Envelope, Item, PayloadRef

    client = sentry_sdk.get_client()
    transport = getattr(client, "transport", None)
    if not client.is_active() or transport is None:
        return False
    feedback_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    contact = {"name": name, "contact_email": email} if email else {"name": name}
    payload = {
        "event_id": feedback_id,
        "timestamp": now.timestamp(),
        "platform": "other",
        "level": "info",
        "type": "feedback",
        "environment": ctx().settings.sentry_environment or "production",
        "contexts": {
            "feedback": {
                "message": comments,
                "associated_event_id": event_id,
                "source": "event-processor error page",
                **{k: v for k, v in contact.items() if v},
            }
        },
    }
    envelope = Envelope(headers={"event_id": feedback_id, "sent_at": now.isoformat()})
    envelope.add_item(Item(payload=PayloadRef(json=payload), type="feedback"))
    transport.capture_envelope(envelope)
    return True


@bp.post("/sentry-feedback")
def sentry_feedback() -> ResponseReturnValue:
    event_id = request.form.get("event_id", "").strip().lower()
    if not _EVENT_ID.fullmatch(event_id):
        abort(400)
    fields = {name: request.form.get(name, "").strip() for name in FEEDBACK_MAX}
    errors = {
        name: f"At most {limit} characters."
        for name, limit in FEEDBACK_MAX.items()
        if len(fields[name]) > limit
    }
    if not fields["comments"]:
        errors["comments"] = "Say what happened."
    if errors:
        return render_template("feedback.html", event_id=event_id, fields=fields, errors=errors), 400
    if not ctx().settings.sentry_enabled or not send_feedback(
        event_id, fields["name"], fields["email"], fields["comments"]
    ):
        flash("Sentry is off: the feedback was not sent.", "warning")
    else:
        log.info("Sentry feedback sent for event %s", event_id)
        flash("Thank you: your feedback was sent with the error report.", "success")
    return redirect(url_for("dashboard.index"))
