"""Who is asking: a browser session or a bearer token resolved to a WebUser, and the login state."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from flask import (
    Request,
    current_app,
    g,
    request,
)
from flask_login import LoginManager, UserMixin, current_user
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.store.models import ApiToken, User, WebSession
from app.web.api_tokens import token_hash
from app.web.context import ctx, is_api_request
from app.web.login_throttle import FailureWindow

# one logger for logins, whichever of their modules speaks
log = logging.getLogger("app.web.auth")


# last_used is a hint for the tokens page; writing it on every call would contend with the
# EventProcessor for the SQLite write lock, so it is refreshed at most once a minute.
LAST_USED_RESOLUTION = timedelta(seconds=60)


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


def utc(epoch: float) -> datetime:
    # The database holds naive UTC times.
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class WebUser(UserMixin):  # type: ignore[misc]  # flask-login ships no type hints: its base is Any
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


def web_user(row: User, token_name: str | None = None, session_key: str = "", role: str = "admin") -> WebUser:
    return WebUser(row.id, row.username, _fingerprint(row.password_hash), token_name, session_key, role)


def bearer() -> str | None:
    """The bearer token of an API call; pages never accept one (a token is for scripts)."""
    header = request.headers.get("Authorization", "")
    if not is_api_request() or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip()


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_session_user(user_id: str) -> WebUser | None:
    if bearer() is not None:
        return None  # an API call carrying a token is authenticated by that token alone
    row_id, fingerprint, key = (user_id.split(":") + ["", ""])[:3]
    if not row_id.isdigit() or not key:
        return None  # also a cookie from before server-side sessions: log in again
    with ctx().session_factory() as s:
        found = s.execute(
            select(User, WebSession.id)
            .join(WebSession, WebSession.user_id == User.id)
            .where(User.id == int(row_id), WebSession.key_hash == key_hash(key))
        ).first()
        row = found[0] if found is not None else None
        if row is None:
            with state().unsaved_lock:
                unsaved = state().unsaved_sessions.get(key_hash(key))
            row = s.get(User, int(row_id)) if unsaved == int(row_id) else None
        if row is None or _fingerprint(row.password_hash) != fingerprint:
            return None
        return web_user(row, session_key=key)


def forget_unsaved(user_id: int | None = None, key_hash: str | None = None) -> None:
    """End sessions kept in memory: one (by key) or all of a user's."""
    auth_state = state()
    with auth_state.unsaved_lock:
        for stored, owner in list(auth_state.unsaved_sessions.items()):
            if stored == key_hash or (user_id is not None and owner == user_id):
                del auth_state.unsaved_sessions[stored]


def load_token_user(_request: Request) -> WebUser | None:
    token = bearer()
    if not token:
        return None
    with ctx().session_factory() as s:
        row = s.scalars(
            select(ApiToken).where(ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None))
        ).first()
        if row is None:
            return None
        now = utc(state().clock())
        if row.last_used is None or now - row.last_used >= LAST_USED_RESOLUTION:
            row.last_used = now
            commit_bookkeeping(s, "a token's last use")
        g.auth_token_id = row.id
        return web_user(row.user, token_name=row.name, role=row.role or "admin")


def actor() -> str:
    """Who made a change, for Command(actor=...) and logs: 'web:<user>' or 'token:<user>/<token name>'."""
    user = current_user
    if not getattr(user, "is_authenticated", False):
        return "web"  # only with LOGIN_DISABLED (tests)
    if user.token_name is not None:
        return f"token:{user.username}/{user.token_name}"
    return f"web:{user.username}"


def commit_bookkeeping(s: Session, what: str) -> None:
    """Commit a login's bookkeeping. A database that cannot write (a full disk) must not lock the
    owner out of the dashboard that tells them so: the failure is logged and the request goes on
    (failed logins are still limited per address in memory)."""
    try:
        s.commit()
    except OperationalError as exc:
        s.rollback()
        log.warning("could not store %s: %s", what, str(exc).splitlines()[0][:200])
