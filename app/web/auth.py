"""Login with growing delays, server-side sessions, CSRF checks and bearer API tokens (read-only or admin)."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.exceptions import NotFound
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response as BaseResponse

from app import accounts, health
from app.accounts import PASSWORD_METHOD, hash_password  # noqa: F401  (PASSWORD_METHOD: re-exported)
from app.models import ApiToken, GeneralConfig, User, WebSession
from app.settings import Settings
from app.web import security
from app.web.context import ctx, is_api_request

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

FAILURE_MESSAGE = "Wrong username or password, or too many attempts; try again later."
SECRET_KEY_CONFIG = "flask-secret-key"  # where the signing key lived before it got a file of its own
SECRET_KEY_FILE = "secret_key"
TOKEN_PREFIX = "ep_"
TOKEN_NAME_MAX = 100
USERNAME_MAX = 100
# Endpoints anyone may reach: the login form, the container health check, CSS/JS/fonts.
PUBLIC_ENDPOINTS = frozenset({"auth.login", "api.get_health", "static"})
PUBLIC_BLUEPRINTS = frozenset({"assets"})
# One address may fail this many times the per-user limit before its own delays start: enough
# for a household sharing one address, too few to walk through a list of usernames.
IP_FAILURE_FACTOR = 4
MAX_TRACKED_ADDRESSES = 10_000
# Browsers logged in at once per user; the oldest session ends when one more logs in.
MAX_SESSIONS_PER_USER = 20
TOKEN_ROLES = {"read": "read-only (GET)", "admin": "admin (everything)"}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NEW_PASSWORD_MIN = 12
# last_used is a hint for the tokens page; writing it on every call would contend with the
# EventProcessor for the SQLite write lock, so it is refreshed at most once a minute.
LAST_USED_RESOLUTION = timedelta(seconds=60)


# ---- state ----------------------------------------------------------------------------------


def growing_delay(failures: int, free: int, cap: float) -> float:
    """Seconds before the next try after `failures` in a row: none for the first `free` ones, then 1, 2,
    4, … up to `cap`. A delay, never a lock: whoever keeps guessing slows the owner down, never shuts
    them out, and the unlock code (Telegram or console) skips it."""
    if failures < free:
        return 0.0
    return float(min(cap, 2 ** min(failures - free, 30)))


class FailureWindow:
    """Failed logins per client address within a sliding window, in memory, thread-safe, bounded."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit  # failures before the address's own delays start
        self.window = window  # failures older than this are forgotten; also the longest delay
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.evicted = 0

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

    def wait(self, address: str, now: float) -> float:
        """Seconds this address must wait before its next try (0: go ahead)."""
        with self._lock:
            times = self._prune(address, now)
            if times is None:
                return 0.0
            delay = growing_delay(len(times), self.limit, self.window)
            return max(0.0, times[-1] + delay - now) if delay else 0.0

    def blocked(self, address: str, now: float) -> bool:
        return self.wait(address, now) > 0

    def record(self, address: str, now: float) -> None:
        with self._lock:
            times = self._prune(address, now)
            if times is None:
                if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                    # Bounded memory: forget the address that failed longest ago.
                    del self._failures[next(iter(self._failures))]
                    self.evicted += 1
                    health.count("web.login_addresses_dropped")
                times = self._failures[address] = deque()
            times.append(now)
            if len(times) > self.limit + 64:
                times.popleft()  # enough to reach the longest delay; an address cannot grow it further


@dataclass
class AuthState:
    """Per-app login state; tests replace clock to move time forward."""

    failures: FailureWindow
    clock: Callable[[], float] = time.time
    login_manager: LoginManager = field(default_factory=LoginManager)
    # Sessions of logins while the database could not write (a full disk): key hash -> user id.
    # They end with logout, sign out everywhere, a password change or a restart of the hub.
    unsaved_sessions: dict[str, int] = field(default_factory=dict)
    unsaved_lock: threading.Lock = field(default_factory=threading.Lock)


# Logins kept in memory while the database cannot write; beyond this the oldest is forgotten.
MAX_UNSAVED_SESSIONS = 50


def state() -> AuthState:
    auth_state: AuthState = current_app.extensions["event_processor_auth"]
    return auth_state


def _utc(epoch: float) -> datetime:
    # The database holds naive UTC times.
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


# ---- users ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebUser(UserMixin):  # type: ignore[misc]
    """The logged-in user as flask-login sees it: a browser session (session_key) or a bearer token."""

    id: int
    username: str
    fingerprint: str
    token_name: str | None = None
    session_key: str = ""
    role: str = "admin"

    def get_id(self) -> str:
        # The session's own key ends it when its row goes (logout, sign out everywhere); the
        # fingerprint of the password hash ends every session when the password changes.
        return f"{self.id}:{self.fingerprint}:{self.session_key}"


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _web_user(
    row: User, token_name: str | None = None, session_key: str = "", role: str = "admin"
) -> WebUser:
    return WebUser(row.id, row.username, _fingerprint(row.password_hash), token_name, session_key, role)


def _bearer() -> str | None:
    """The bearer token of an API call; pages never accept one (a token is for scripts)."""
    header = request.headers.get("Authorization", "")
    if not is_api_request() or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _load_session_user(user_id: str) -> WebUser | None:
    if _bearer() is not None:
        return None  # an API call carrying a token is authenticated by that token alone
    row_id, fingerprint, key = (user_id.split(":") + ["", ""])[:3]
    if not row_id.isdigit() or not key:
        return None  # also a cookie from before server-side sessions: log in again
    with ctx().session_factory() as s:
        found = s.execute(
            select(User, WebSession.id)
            .join(WebSession, WebSession.user_id == User.id)
            .where(User.id == int(row_id), WebSession.key_hash == _key_hash(key))
        ).first()
        row = found[0] if found is not None else None
        if row is None:
            with state().unsaved_lock:
                unsaved = state().unsaved_sessions.get(_key_hash(key))
            row = s.get(User, int(row_id)) if unsaved == int(row_id) else None
        if row is None or _fingerprint(row.password_hash) != fingerprint:
            return None
        return _web_user(row, session_key=key)


def _forget_unsaved(user_id: int | None = None, key_hash: str | None = None) -> None:
    """End sessions kept in memory: one (by key) or all of a user's."""
    auth_state = state()
    with auth_state.unsaved_lock:
        for stored, owner in list(auth_state.unsaved_sessions.items()):
            if stored == key_hash or (user_id is not None and owner == user_id):
                del auth_state.unsaved_sessions[stored]


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
        return _web_user(row.user, token_name=row.name, role=row.role or "admin")


def actor() -> str:
    """Who made a change, for Command(actor=...) and logs: 'web:<user>' or 'token:<user>/<token name>'."""
    user = current_user
    if not getattr(user, "is_authenticated", False):
        return "web"  # only with LOGIN_DISABLED (tests)
    if user.token_name is not None:
        return f"token:{user.username}/{user.token_name}"
    return f"web:{user.username}"


# ---- start-up: admin user and secret key ----------------------------------------------------


def bootstrap_admin(session: Session, settings: Settings) -> None:
    """Create or update the admin user from the settings; on a fresh install generate a password."""
    row = session.scalars(select(User).where(User.username == settings.admin_user)).first()
    now = accounts.utc_now()
    if settings.admin_password_hash:
        if row is None:
            session.add(
                User(username=settings.admin_user, password_hash=settings.admin_password_hash, created_at=now)
            )
            log.info("admin user %r created from APP_ADMIN_PASSWORD_HASH", settings.admin_user)
        elif row.password_hash != settings.admin_password_hash:
            # A new password is also the owner's way out of the login delays.
            row.password_hash = settings.admin_password_hash
            row.failed_logins = 0
            row.locked_until = None
            session.commit()
            accounts.end_sessions(session, row.id)
            log.info("admin user %r: password changed from APP_ADMIN_PASSWORD_HASH", settings.admin_user)
        session.commit()
        return
    if row is not None:
        return  # the password set (or generated) earlier stays
    password = secrets.token_urlsafe(12)
    session.add(User(username=settings.admin_user, password_hash=hash_password(password), created_at=now))
    session.commit()
    # Straight to the console, never through logging: a log record travels to handlers, log shippers
    # and Sentry breadcrumbs. Printed once; later starts find the row and print nothing.
    print(
        f"generated admin password for {settings.admin_user!r}: {password} "
        "— set APP_ADMIN_PASSWORD_HASH to choose your own",
        file=sys.stderr,
        flush=True,
    )
    log.warning(
        "generated a password for the new admin user %r and printed it on the console (stderr) once",
        settings.admin_user,
    )


def secret_key_path(settings: Settings) -> Path:
    """The session-signing key's own file: beside the SQLite database, or in ./data for another one."""
    db_file = settings.sqlite_path
    if db_file and db_file != ":memory:" and not db_file.startswith("file:"):
        return Path(db_file).parent / SECRET_KEY_FILE
    return Path("data") / SECRET_KEY_FILE


def load_secret_key(session: Session, path: Path) -> str:
    """The signing key from its 0600 file, created once so logins survive restarts. A key still kept in
    the database (before this file existed) moves to the file, so sessions made with it stay valid."""
    stored = session.scalars(
        select(GeneralConfig).where(GeneralConfig.config_key == SECRET_KEY_CONFIG).order_by(GeneralConfig.id)
    ).all()
    if path.is_file():
        key = path.read_text(encoding="ascii").strip()
        if (path.stat().st_mode & 0o777) != 0o600:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others; set to mode 0600", path)
    else:
        key = next((row.config_value for row in stored if row.config_value), "") or secrets.token_hex(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        if stored:
            log.info("session signing key moved from the database to %s (mode 0600)", path)
        else:
            log.info("session signing key created in %s (mode 0600)", path)
    if stored:
        session.execute(delete(GeneralConfig).where(GeneralConfig.config_key == SECRET_KEY_CONFIG))
        session.commit()
    if not key:
        raise RuntimeError(f"{path} is empty: delete it to make a new session signing key")
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


def create_token(session: Session, username: str, name: str, role: str = "admin") -> str:
    """A new API token for `username`; only its SHA-256 is stored, so the caller must keep it."""
    name = validate_token_name(name)
    if role not in TOKEN_ROLES:
        raise TokenError("Choose read-only or admin.")
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
            role=role,
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
            return _token_role_check()
        current_app.extensions["csrf"].protect(apply_exemptions=True)
    return None


def _token_role_check() -> tuple[Response, int] | None:
    if current_user.role != "admin" and request.method not in READ_METHODS:
        return jsonify({"error": "this API token is read-only"}), 403
    return None


# ---- login and logout -----------------------------------------------------------------------


def _client_ip() -> str:
    # REMOTE_ADDR is already the real client: security.ProxyHeaders took it from X-Forwarded-For
    # when, and only when, the peer is one of APP_TRUSTED_PROXIES.
    return (request.remote_addr or "unknown")[:64]


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


def _account_failure(user_id: int, now: float, settings: Settings) -> int:
    """Count one wrong password atomically (parallel tries each count) and set the next delay.
    Returns the count, or 0 when the database cannot write (the address's own count still holds)."""
    try:
        return _count_failure(user_id, now, settings)
    except OperationalError as exc:
        log.warning("could not store the failed login count: %s", str(exc).splitlines()[0][:200])
        return 0


def _count_failure(user_id: int, now: float, settings: Settings) -> int:
    with ctx().session_factory() as s:
        failures = s.execute(
            update(User)
            .where(User.id == user_id)
            .values(failed_logins=User.failed_logins + 1)
            .returning(User.failed_logins)
        ).scalar_one()
        delay = growing_delay(failures, settings.login_max_failures, settings.login_lockout_seconds)
        if delay:
            until = _utc(now + delay)
            # Only ever later: a slower parallel try must not shorten the delay a later one set.
            s.execute(
                update(User)
                .where(User.id == user_id)
                .where((User.locked_until.is_(None)) | (User.locked_until < until))
                .values(locked_until=until)
            )
        s.commit()
    return int(failures)


def _check_login(username: str, password: str, unlock_code: str = "") -> WebUser | None:
    """The user if the password is right and no delay applies (or a valid unlock code skips them)."""
    settings = ctx().settings
    auth_state = state()
    now = auth_state.clock()
    address = _client_ip()
    with ctx().session_factory() as s:
        row = s.scalars(select(User).where(User.username == username)).first()
        user_id = row.id if row is not None else None
        password_hash = row.password_hash if row is not None else None
        unlocked = row is not None and accounts.unlock_code_matches(row, unlock_code, _utc(now))
        delayed_until = row.locked_until if row is not None else None
    # The read transaction is over before the slow hash and the write below: in WAL mode a write
    # that follows a read of an older snapshot would fail at once instead of waiting its turn.
    if not unlocked:
        wait = auth_state.failures.wait(address, now)
        if wait > 0:
            log.warning(
                "login refused for %r from %s: too many failed logins from this address; next try in %.0f s",
                username,
                address,
                wait,
            )
            return None
        if delayed_until is not None and delayed_until > _utc(now):
            # No password is checked during the delay, so guessing cannot go faster than it allows.
            log.warning(
                "login refused for %r from %s: failed logins delay the next try until %s UTC",
                username,
                address,
                delayed_until.isoformat(timespec="seconds"),
            )
            auth_state.failures.record(address, now)
            return None
    if user_id is None or password_hash is None:
        check_password_hash(_dummy_hash(), password)  # same timing as a known user
        reason = "unknown user"
    elif check_password_hash(password_hash, password):
        with ctx().session_factory() as s:
            values: dict[str, Any] = {"failed_logins": 0, "locked_until": None, "last_login": _utc(now)}
            if unlocked:
                values.update(unlock_hash=None, unlock_until=None)  # a code works once
            try:
                s.execute(update(User).where(User.id == user_id).values(**values))
            except OperationalError:
                s.rollback()
            _commit_bookkeeping(s, "the login time")
            row = s.get(User, user_id)
            assert row is not None
            user = _web_user(row, session_key=_new_session(s, row.id, address))
        log.info("user %r logged in from %s%s", username, address, " with an unlock code" if unlocked else "")
        return user
    else:
        failures = _account_failure(user_id, now, settings)
        reason = f"wrong password, {failures} in a row"
        delay = growing_delay(failures, settings.login_max_failures, settings.login_lockout_seconds)
        if delay:
            reason += f"; next try in {delay:.0f} s"
    auth_state.failures.record(address, now)
    log.warning("failed login for %r from %s (%s)", username, address, reason)
    return None


def _new_session(s: Session, user_id: int, address: str) -> str:
    """A server-side session row for a browser that just logged in; returns the key for its cookie.
    A database that cannot write (a full disk) must not lock the owner out of the dashboard that
    says so: the session is then kept in memory (bounded, counted) until the hub restarts."""
    key = secrets.token_urlsafe(32)
    try:
        _store_session(s, user_id, address, key)
    except OperationalError as exc:
        s.rollback()
        log.warning(
            "could not store the browser session (%s); it is kept in memory until the hub restarts",
            str(exc).splitlines()[0][:200],
        )
        health.count("web.sessions_in_memory")
        auth_state = state()
        with auth_state.unsaved_lock:
            if len(auth_state.unsaved_sessions) >= MAX_UNSAVED_SESSIONS:
                del auth_state.unsaved_sessions[next(iter(auth_state.unsaved_sessions))]
                health.count("web.sessions_dropped")
            auth_state.unsaved_sessions[_key_hash(key)] = user_id
    return key


def _store_session(s: Session, user_id: int, address: str, key: str) -> None:
    now = _utc(state().clock())
    s.add(WebSession(user_id=user_id, key_hash=_key_hash(key), created_at=now, address=address))
    s.flush()
    alive = s.scalar(select(func.count()).select_from(WebSession).where(WebSession.user_id == user_id)) or 0
    if alive > MAX_SESSIONS_PER_USER:
        oldest = s.scalars(
            select(WebSession.id)
            .where(WebSession.user_id == user_id)
            .order_by(WebSession.id)
            .limit(alive - MAX_SESSIONS_PER_USER)
        ).all()
        s.execute(delete(WebSession).where(WebSession.id.in_(oldest)))
        health.count("web.sessions_dropped", len(oldest))
        log.info(
            "user %d: %d oldest browser session(s) ended (at most %d at once)",
            user_id,
            len(oldest),
            MAX_SESSIONS_PER_USER,
        )
    s.commit()


def _end_current_session() -> None:
    key = getattr(current_user, "session_key", "")
    if key:
        _forget_unsaved(key_hash=_key_hash(key))
        with ctx().session_factory() as s:
            try:
                s.execute(delete(WebSession).where(WebSession.key_hash == _key_hash(key)))
                s.commit()
            except OperationalError as exc:
                # the browser is logged out all the same; the row goes with the next logout or sign-out
                s.rollback()
                log.warning("could not delete the browser session: %s", str(exc).splitlines()[0][:200])


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
        user = _check_login(username, password, code) if username and password else None
        if user is not None:
            session.clear()  # nothing from before the login carries over
            login_user(user)
            return redirect(next_url)
        error = FAILURE_MESSAGE
    return render_template("login.html", username=username, error=error, next_url=next_url)


@bp.post("/logout")
def logout() -> BaseResponse:
    _end_current_session()  # the cookie, should someone have copied it, is dead on the server too
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
        _forget_unsaved(user_id=current_user.id)
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
        s.commit()
        _forget_unsaved(user_id=row.id)
        ended = accounts.end_sessions(s, row.id)
        key = _new_session(s, row.id, _client_ip())
        user = _web_user(row, session_key=key)
    login_user(user)
    log.info("%s changed the password (%d session(s) ended)", actor(), ended)
    flash("Password changed; every other browser is signed out.", "success")
    return redirect(url_for("auth.tokens"))


# ---- API tokens page ------------------------------------------------------------------------


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
            token = create_token(s, current_user.username, name, role)
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
            return request.is_secure  # X-Forwarded-Proto from a trusted proxy, via security.ProxyHeaders
        return self.secure == "true"


def init_app(app: Flask) -> None:
    """Install login, the request guard and the auth pages; create the admin user and secret key."""
    with app.app_context():
        context = ctx()
    settings = context.settings
    # Once at start: the admin row, and the signing key (a setting, or its own 0600 file).
    with context.session_factory() as s:
        bootstrap_admin(s, settings)
        app.secret_key = settings.secret_key or load_secret_key(s, secret_key_path(settings))

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
    manager.user_loader(_load_session_user)
    manager.request_loader(_load_token_user)
    manager.init_app(app)
    app.before_request(_guard)
    app.register_blueprint(bp)
