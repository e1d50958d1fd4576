"""Login with growing delays, server-side sessions, CSRF checks and bearer API tokens (read-only or admin)."""

from __future__ import annotations

import logging
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select
from werkzeug.exceptions import NotFound
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response as BaseResponse

from app.engine import change_history
from app.store import accounts
from app.store.accounts import PASSWORD_METHOD, hash_password  # noqa: F401  (PASSWORD_METHOD: re-exported)
from app.store.models import ApiToken, User, WebSession
from app.web import auth_keys, security
from app.web.api_tokens import TOKEN_NAME_MAX, TOKEN_ROLES, TokenError, validate_token_name
from app.web.api_tokens import create_token as create_token  # re-exported for scripts and tests
from app.web.auth_keys import secret_key_path as secret_key_path  # re-exported for tests
from app.web.auth_users import (
    AuthState,
    bearer,
    forget_unsaved,
    load_session_user,
    load_token_user,
    state,
    utc,
    web_user,
)
from app.web.auth_users import (
    actor as actor,  # re-exported: pages and the API name who made a change with auth.actor()
)
from app.web.context import ctx, is_api_request
from app.web.login_check import check_login, client_ip, end_current_session, new_session
from app.web.login_throttle import IP_FAILURE_FACTOR, FailureWindow

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

FAILURE_MESSAGE = "Wrong username or password, or too many attempts; try again later."
USERNAME_MAX = 100
# Endpoints anyone may reach: the login form, the container health check, CSS/JS/fonts.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "api.get_health", "static"})
PUBLIC_BLUEPRINTS = frozenset({"assets"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NEW_PASSWORD_MIN = 12


def _is_public() -> bool:
    return request.endpoint in PUBLIC_ENDPOINTS or request.blueprint in PUBLIC_BLUEPRINTS


def _login_redirect() -> BaseResponse:
    target = request.path + ("?" + request.query_string.decode("latin-1") if request.query_string else "")
    return redirect(url_for("auth.login") + "?" + urlencode({"next": target}))


def _guard() -> BaseResponse | tuple[Response, int] | None:
    login_needed = not _is_public() and not current_app.config.get("LOGIN_DISABLED")
    if login_needed and not current_user.is_authenticated:
        if is_api_request():
            response = jsonify({"error": "login required"})
            response.headers["WWW-Authenticate"] = 'Bearer realm="event-processor"'
            return response, 401
        return _login_redirect()
    if current_app.config.get("WTF_CSRF_ENABLED", True):
        # A bearer token cannot be sent by another site's page, so token calls need no CSRF token;
        # everything else (forms, session-cookie JSON writes, the login form itself) does.
        if bearer() is not None and current_user.is_authenticated and g.get("auth_token_id") is not None:
            return _token_role_check()
        current_app.extensions["csrf"].protect(apply_exemptions=True)
    return None


def _token_role_check() -> tuple[Response, int] | None:
    if current_user.role != "admin" and request.method not in READ_METHODS:
        return jsonify({"error": "this API token is read-only"}), 403
    return None


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything pointing elsewhere becomes the home page."""
    default = "/"
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 32 for c in target) or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | str:
    next_url = safe_next(request.values.get("next"))
    if current_user.is_authenticated and not current_app.config.get("LOGIN_DISABLED"):
        return redirect(next_url)
    username = ""
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()[:USERNAME_MAX]
        password = request.form.get("password", "")
        code = request.form.get("unlock_code", "").strip()[:40]
        user = check_login(username, password, code) if username and password else None
        if user is not None:
            session.clear()  # nothing from before the login carries over
            login_user(user)
            return redirect(next_url)
        error = FAILURE_MESSAGE
    return render_template("login.html", username=username, error=error, next_url=next_url)


@bp.post("/logout")
def logout() -> BaseResponse:
    end_current_session()  # the cookie, should someone have copied it, is dead on the server too
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.post("/settings/sessions/end")
def end_all_sessions() -> BaseResponse:
    """Sign out everywhere: every browser session of this user ends, this one included."""
    if not current_user.is_authenticated:
        return _login_redirect()
    with ctx().session_factory() as s:
        forget_unsaved(user_id=current_user.id)
        count = accounts.end_sessions(s, current_user.id)
    log.info("%s signed out everywhere (%d session(s) ended)", actor(), count)
    logout_user()
    session.clear()
    flash(f"Signed out everywhere ({count} browser session(s) ended).", "info")
    return redirect(url_for("auth.login"))


def _password_problem(current: str, new: str, again: str, row: User) -> str | None:
    settings = ctx().settings
    if settings.admin_password_hash and row.username == settings.admin_user:
        return "This password is set by APP_ADMIN_PASSWORD_HASH; change that setting instead."
    if not check_password_hash(row.password_hash, current):
        return "The current password is wrong."
    if len(new) < NEW_PASSWORD_MIN:
        return f"The new password needs at least {NEW_PASSWORD_MIN} characters."
    if len(new) > 200:
        return "The new password may be at most 200 characters."
    if new != again:
        return "The two new passwords differ."
    return None


@bp.post("/settings/password")
def change_password() -> BaseResponse | tuple[str, int]:
    """A new password: every other browser is signed out; this one stays logged in."""
    if not current_user.is_authenticated:
        return _login_redirect()
    form = request.form
    with ctx().session_factory() as s:
        row = s.get(User, current_user.id)
        assert row is not None
        problem = _password_problem(
            form.get("current_password", ""),
            form.get("new_password", ""),
            form.get("new_password_again", ""),
            row,
        )
        if problem:
            s.rollback()
            return _tokens_page(password_error=problem)
        row.password_hash = hash_password(form["new_password"])
        row.failed_logins = 0
        row.locked_until = None
        diff = change_history.Diff()
        diff.note("password", change_history.HIDDEN, change_history.HIDDEN + " changed")
        summary = f"password of {row.username} changed; other browsers signed out"
        change_history.record_account(s, actor(), "password_changed", row.username, summary, diff)
        s.commit()
        forget_unsaved(user_id=row.id)
        ended = accounts.end_sessions(s, row.id)
        key = new_session(s, row.id, client_ip())
        user = web_user(row, session_key=key)
    login_user(user)
    log.info("%s changed the password (%d session(s) ended)", actor(), ended)
    flash("Password changed; every other browser is signed out.", "success")
    return redirect(url_for("auth.tokens"))


def _tokens_page(
    new_token: str | None = None,
    error: str | None = None,
    name: str = "",
    role: str = "read",
    password_error: str | None = None,
) -> tuple[str, int]:
    with ctx().session_factory() as s:
        rows = s.scalars(
            select(ApiToken).where(ApiToken.user_id == current_user.id).order_by(ApiToken.created_at.desc())
        ).all()
        sessions = s.scalar(
            select(func.count()).select_from(WebSession).where(WebSession.user_id == current_user.id)
        )
        s.expunge_all()
    status = 400 if error or password_error else 200
    page = render_template(
        "tokens.html",
        tokens=rows,
        new_token=new_token,
        error=error,
        name=name,
        role=role,
        roles=TOKEN_ROLES,
        sessions=sessions or 0,
        password_error=password_error,
    )
    return page, status


@bp.route("/settings/tokens", methods=["GET", "POST"])
def tokens() -> BaseResponse | tuple[str, int]:
    if not current_user.is_authenticated:
        return _login_redirect()  # only with LOGIN_DISABLED: tokens belong to a user
    if request.method == "GET":
        return _tokens_page()
    raw_name = request.form.get("name", "")
    role = request.form.get("role") or "read"  # the least a token can do, unless admin is chosen
    try:
        name = validate_token_name(raw_name)
        with ctx().session_factory() as s:
            token = create_token(s, current_user.username, name, role, actor=actor())
    except TokenError as exc:
        return _tokens_page(error=str(exc), name=raw_name[:TOKEN_NAME_MAX], role=role)
    log.info("API token %r (%s) created by %s", name, role, actor())
    # Shown in this response only; never flashed, as the flash message travels in the cookie.
    return _tokens_page(new_token=token)


@bp.post("/settings/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int) -> BaseResponse:
    if not current_user.is_authenticated:
        return _login_redirect()
    with ctx().session_factory() as s:
        row = s.get(ApiToken, token_id) if token_id < 2**63 else None
        if row is None or row.user_id != current_user.id:
            raise NotFound()
        if row.revoked_at is None:
            row.revoked_at = utc(state().clock())
            diff = change_history.Diff()
            diff.note("revoked", False, True)
            summary = f"API token {row.name!r} of {current_user.username} revoked"
            change_history.record_account(s, actor(), "token_revoked", row.name, summary, diff)
            s.commit()
            log.info("API token %r revoked by %s", row.name, actor())
        name = row.name
    flash(f"Token {name!r} revoked.", "success")
    return redirect(url_for("auth.tokens"))


class _SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose Secure flag can follow the request's scheme ('auto')."""

    def __init__(self, secure: str) -> None:
        self.secure = secure

    def get_cookie_secure(self, app: Flask) -> bool:
        if self.secure == "auto":
            return request.is_secure  # X-Forwarded-Proto from a trusted proxy, via security.ProxyHeaders
        return self.secure == "true"


def init_app(app: Flask) -> None:
    """Install login, the request guard and the auth pages; create the admin user and secret key."""
    with app.app_context():
        context = ctx()
    settings = context.settings
    # The admin row, and the signing key (a setting, or its own 0600 file); the hub has made both at start.
    app.secret_key = auth_keys.start_up(settings, context.session_factory)

    # The client address and scheme (for Secure cookies) from X-Forwarded-* of trusted proxies only.
    security.init_app(app, security.TrustedProxies(settings.trusted_proxies))
    app.session_interface = _SessionInterface(settings.session_cookie_secure)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # The guard below calls csrf.protect() itself, so that bearer-token calls can skip it.
        WTF_CSRF_CHECK_DEFAULT=False,
        # The token is bound to the session cookie; a time limit would only break a login page
        # left open on the phone for an hour.
        WTF_CSRF_TIME_LIMIT=None,
    )

    auth_state = AuthState(
        FailureWindow(settings.login_max_failures * IP_FAILURE_FACTOR, settings.login_lockout_seconds)
    )
    app.extensions["event_processor_auth"] = auth_state
    manager = auth_state.login_manager
    manager.login_view = "auth.login"
    manager.user_loader(load_session_user)
    manager.request_loader(load_token_user)
    manager.init_app(app)
    app.before_request(_guard)
    app.register_blueprint(bp)
