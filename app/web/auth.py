"""Login, lock-out, CSRF checks and bearer API tokens: every page and API call needs a logged-in user."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
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
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import NotFound
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response as BaseResponse

from app.models import ApiToken, GeneralConfig, User
from app.settings import Settings
from app.web.context import ctx, is_api_request

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

FAILURE_MESSAGE = "Wrong username or password, or too many attempts; try again later."
SECRET_KEY_CONFIG = "flask-secret-key"
TOKEN_PREFIX = "ep_"
TOKEN_NAME_MAX = 100
USERNAME_MAX = 100
# Endpoints anyone may reach: the login form, the container health check, CSS/JS/fonts.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "api.get_health", "static"})
PUBLIC_BLUEPRINTS = frozenset({"assets"})
# One address may fail this many times the per-user limit within the lock-out period: enough
# for a household sharing one address, too few to walk through a list of usernames.
IP_FAILURE_FACTOR = 4
MAX_TRACKED_ADDRESSES = 10_000
# last_used is a hint for the tokens page; writing it on every call would contend with the
# EventProcessor for the SQLite write lock, so it is refreshed at most once a minute.
LAST_USED_RESOLUTION = timedelta(seconds=60)


# ---- state ----------------------------------------------------------------------------------


class FailureWindow:
    """Failed logins per client address within a sliding window, in memory, thread-safe."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _prune(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def blocked(self, address: str, now: float) -> bool:
        with self._lock:
            times = self._prune(address, now)
            return times is not None and len(times) >= self.limit

    def record(self, address: str, now: float) -> None:
        with self._lock:
            times = self._prune(address, now)
            if times is None:
                if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                    # Bounded memory: forget the address that failed longest ago.
                    del self._failures[next(iter(self._failures))]
                times = self._failures[address] = deque()
            times.append(now)


@dataclass
class AuthState:
    """Per-app login state; tests replace clock to move time forward."""

    failures: FailureWindow
    clock: Callable[[], float] = time.time
    login_manager: LoginManager = field(default_factory=LoginManager)


def state() -> AuthState:
    auth_state: AuthState = current_app.extensions["event_processor_auth"]
    return auth_state


def _utc(epoch: float) -> datetime:
    # The database holds naive UTC times.
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


# ---- users ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebUser(UserMixin):  # type: ignore[misc]
    """The logged-in user as flask-login sees it; `token_name` is set for bearer-token calls."""

    id: int
    username: str
    fingerprint: str
    token_name: str | None = None

    def get_id(self) -> str:
        # The fingerprint of the password hash ends every session when the password changes.
        return f"{self.id}:{self.fingerprint}"


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _web_user(row: User, token_name: str | None = None) -> WebUser:
    return WebUser(row.id, row.username, _fingerprint(row.password_hash), token_name)


def _bearer() -> str | None:
    """The bearer token of an API call; pages never accept one (a token is for scripts)."""
    header = request.headers.get("Authorization", "")
    if not is_api_request() or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def _load_session_user(user_id: str) -> WebUser | None:
    if _bearer() is not None:
        return None  # an API call carrying a token is authenticated by that token alone
    row_id, _, fingerprint = user_id.partition(":")
    if not row_id.isdigit():
        return None
    with ctx().session_factory() as s:
        row = s.get(User, int(row_id))
        if row is None or _fingerprint(row.password_hash) != fingerprint:
            return None
        return _web_user(row)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _load_token_user(_request: Any) -> WebUser | None:
    token = _bearer()
    if not token:
        return None
    with ctx().session_factory() as s:
        row = s.scalars(
            select(ApiToken).where(ApiToken.token_hash == _token_hash(token), ApiToken.revoked_at.is_(None))
        ).first()
        if row is None:
            return None
        now = _utc(state().clock())
        if row.last_used is None or now - row.last_used >= LAST_USED_RESOLUTION:
            row.last_used = now
            _commit_bookkeeping(s, "a token's last use")
        g.auth_token_id = row.id
        return _web_user(row.user, token_name=row.name)


def actor() -> str:
    """Who made a change, for Command(actor=...) and logs: 'web:<user>' or 'token:<user>/<token name>'."""
    user = current_user
    if not getattr(user, "is_authenticated", False):
        return "web"  # only with LOGIN_DISABLED (tests)
    if user.token_name is not None:
        return f"token:{user.username}/{user.token_name}"
    return f"web:{user.username}"


# PBKDF2 rather than werkzeug's default scrypt: scrypt takes ~32 MB of memory per hash, which on a
# Raspberry Pi shows up as a lasting jump in the hub's RSS. 600 000 rounds of SHA-256 is OWASP's
# current advice. Hashes made with scrypt (e.g. APP_ADMIN_PASSWORD_HASH) still verify.
PASSWORD_METHOD = "pbkdf2:sha256:600000"


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=PASSWORD_METHOD)


# ---- start-up: admin user and secret key ----------------------------------------------------


def bootstrap_admin(session: Session, settings: Settings) -> None:
    """Create or update the admin user from the settings; on a fresh install generate a password."""
    row = session.scalars(select(User).where(User.username == settings.admin_user)).first()
    now = datetime.now(UTC).replace(tzinfo=None)
    if settings.admin_password_hash:
        if row is None:
            session.add(
                User(username=settings.admin_user, password_hash=settings.admin_password_hash, created_at=now)
            )
            log.info("admin user %r created from APP_ADMIN_PASSWORD_HASH", settings.admin_user)
        elif row.password_hash != settings.admin_password_hash:
            # A new password is also the owner's way out of a lock-out.
            row.password_hash = settings.admin_password_hash
            row.failed_logins = 0
            row.locked_until = None
            log.info("admin user %r: password changed from APP_ADMIN_PASSWORD_HASH", settings.admin_user)
        session.commit()
        return
    if row is not None:
        return  # the password set (or generated) earlier stays
    password = secrets.token_urlsafe(12)
    session.add(User(username=settings.admin_user, password_hash=hash_password(password), created_at=now))
    session.commit()
    # The one deliberate exception to "no secret in a log line": on a fresh install without
    # APP_ADMIN_PASSWORD_HASH the log is the only way the owner can learn the first password.
    # It is printed once; later starts find the row and print nothing.
    log.warning(
        "generated admin password for %r: %s — set APP_ADMIN_PASSWORD_HASH to choose your own",
        settings.admin_user,
        password,
    )


def stored_secret_key(session: Session) -> str:
    """The session-signing key kept in general_config, created once, so logins survive restarts."""
    row = session.scalars(
        select(GeneralConfig).where(GeneralConfig.config_key == SECRET_KEY_CONFIG).order_by(GeneralConfig.id)
    ).first()
    if row is not None and row.config_value:
        return row.config_value
    key = secrets.token_hex(32)
    session.add(GeneralConfig(config_key=SECRET_KEY_CONFIG, config_value=key))
    session.commit()
    return key


# ---- tokens ---------------------------------------------------------------------------------


class TokenError(ValueError):
    """A token could not be created; the message is for the user."""


def validate_token_name(value: Any) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name:
        raise TokenError("Give the token a name, such as the script that will use it.")
    if len(name) > TOKEN_NAME_MAX:
        raise TokenError(f"The name may be at most {TOKEN_NAME_MAX} characters.")
    if not name.isprintable():
        raise TokenError("The name may not contain control characters.")
    return name


def create_token(session: Session, username: str, name: str) -> str:
    """A new API token for `username`; only its SHA-256 is stored, so the caller must keep it."""
    name = validate_token_name(name)
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        raise TokenError(f"there is no user {username!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            user_id=user.id,
            name=name,
            token_hash=_token_hash(token),
            prefix=token[:10],
            created_at=datetime.now(UTC).replace(tzinfo=None),
        )
    )
    session.commit()
    return token


# ---- the guard ------------------------------------------------------------------------------


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
        if _bearer() is not None and current_user.is_authenticated and g.get("auth_token_id") is not None:
            return None
        current_app.extensions["csrf"].protect(apply_exemptions=True)
    return None


# ---- login and logout -----------------------------------------------------------------------


def _client_ip() -> str:
    peer = request.remote_addr or "unknown"
    forwarded = request.headers.get("X-Forwarded-For", "")
    try:
        local_peer = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        local_peer = False
    if local_peer and forwarded:
        # ngrok and Tailscale agents on this machine connect from loopback; the address they
        # append last is the real client. From anyone else the header is not trusted.
        return forwarded.split(",")[-1].strip()[:64] or peer
    return peer


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


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(16))


def _commit_bookkeeping(s: Session, what: str) -> None:
    """Commit a login's bookkeeping. A database that cannot write (a full disk) must not lock the
    owner out of the dashboard that tells them so: the failure is logged and the request goes on
    (failed logins are still limited per address in memory)."""
    try:
        s.commit()
    except OperationalError as exc:
        s.rollback()
        log.warning("could not store %s: %s", what, str(exc).splitlines()[0][:200])


def _check_login(username: str, password: str) -> WebUser | None:
    """The user if the password is right and neither the user nor the address is locked."""
    settings = ctx().settings
    auth_state = state()
    now = auth_state.clock()
    address = _client_ip()
    if auth_state.failures.blocked(address, now):
        log.warning(
            "login refused for %r from %s: too many failed logins from this address", username, address
        )
        return None
    with ctx().session_factory() as s:
        row = s.scalars(select(User).where(User.username == username)).first()
        if row is not None and row.locked_until is not None and row.locked_until > _utc(now):
            # Still hash, so a locked account answers as slowly as any other attempt.
            check_password_hash(_dummy_hash(), password)
            reason = "account locked"
        elif row is None:
            check_password_hash(_dummy_hash(), password)  # same timing as a known user
            reason = "unknown user"
        elif check_password_hash(row.password_hash, password):
            row.failed_logins = 0
            row.locked_until = None
            row.last_login = _utc(now)
            user = _web_user(row)
            _commit_bookkeeping(s, "the login time")
            log.info("user %r logged in from %s", username, address)
            return user
        else:
            reason = "wrong password"
            row.failed_logins = (row.failed_logins or 0) + 1
            if row.failed_logins >= settings.login_max_failures:
                row.locked_until = _utc(now + settings.login_lockout_seconds)
                row.failed_logins = 0  # after the lock-out the user gets the full number of tries again
                reason += f"; locked for {settings.login_lockout_seconds} s"
            _commit_bookkeeping(s, "the failed login count")
    auth_state.failures.record(address, now)
    log.warning("failed login for %r from %s (%s)", username, address, reason)
    return None


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
        user = _check_login(username, password) if username and password else None
        if user is not None:
            session.clear()  # nothing from before the login carries over
            login_user(user)
            return redirect(next_url)
        error = FAILURE_MESSAGE
    return render_template("login.html", username=username, error=error, next_url=next_url)


@bp.post("/logout")
def logout() -> BaseResponse:
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


# ---- API tokens page ------------------------------------------------------------------------


def _tokens_page(new_token: str | None = None, error: str | None = None, name: str = "") -> tuple[str, int]:
    with ctx().session_factory() as s:
        rows = s.scalars(
            select(ApiToken).where(ApiToken.user_id == current_user.id).order_by(ApiToken.created_at.desc())
        ).all()
        s.expunge_all()
    status = 400 if error else 200
    return render_template("tokens.html", tokens=rows, new_token=new_token, error=error, name=name), status


@bp.route("/settings/tokens", methods=["GET", "POST"])
def tokens() -> BaseResponse | tuple[str, int]:
    if not current_user.is_authenticated:
        return _login_redirect()  # only with LOGIN_DISABLED: tokens belong to a user
    if request.method == "GET":
        return _tokens_page()
    raw_name = request.form.get("name", "")
    try:
        name = validate_token_name(raw_name)
        with ctx().session_factory() as s:
            token = create_token(s, current_user.username, name)
    except TokenError as exc:
        return _tokens_page(error=str(exc), name=raw_name[:TOKEN_NAME_MAX])
    log.info("API token %r created by %s", name, actor())
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
            row.revoked_at = _utc(state().clock())
            s.commit()
            log.info("API token %r revoked by %s", row.name, actor())
        name = row.name
    flash(f"Token {name!r} revoked.", "success")
    return redirect(url_for("auth.tokens"))


# ---- wiring ---------------------------------------------------------------------------------


class _SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose Secure flag can follow the request's scheme ('auto')."""

    def __init__(self, secure: str) -> None:
        self.secure = secure

    def get_cookie_secure(self, app: Flask) -> bool:
        if self.secure == "auto":
            return request.is_secure  # X-Forwarded-Proto from the tunnel, via ProxyFix
        return self.secure == "true"


def init_app(app: Flask) -> None:
    """Install login, the request guard and the auth pages; create the admin user and secret key."""
    with app.app_context():
        context = ctx()
    settings = context.settings
    # Once at start: the admin row and the signing key (kept in the database when not configured).
    with context.session_factory() as s:
        bootstrap_admin(s, settings)
        app.secret_key = settings.secret_key or stored_secret_key(s)

    # ngrok and Tailscale funnel end TLS and say so in X-Forwarded-Proto.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=0, x_proto=1, x_host=0, x_port=0, x_prefix=0)  # type: ignore[method-assign]
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
    manager.user_loader(_load_session_user)
    manager.request_loader(_load_token_user)
    manager.init_app(app)
    app.before_request(_guard)
    app.register_blueprint(bp)
