"""Checking a login (delays, unlock codes, the same timing for unknown users) and the session it starts."""

from __future__ import annotations

import functools
import logging
import secrets
from typing import Any

from flask import (
    request,
)
from flask_login import current_user
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from app.core import health
from app.core.settings import Settings
from app.store import accounts
from app.store.accounts import hash_password
from app.store.models import User, WebSession
from app.web.auth_users import (
    MAX_UNSAVED_SESSIONS,
    WebUser,
    commit_bookkeeping,
    forget_unsaved,
    key_hash,
    state,
    utc,
    web_user,
)
from app.web.context import ctx
from app.web.login_throttle import growing_delay

# one logger for logins, whichever of their modules speaks
log = logging.getLogger("app.web.auth")


# Browsers logged in at once per user; the oldest session ends when one more logs in.
MAX_SESSIONS_PER_USER = 20


def client_ip() -> str:
    # REMOTE_ADDR is already the real client: security.ProxyHeaders took it from X-Forwarded-For
    # when, and only when, the peer is one of APP_TRUSTED_PROXIES.
    return (request.remote_addr or "unknown")[:64]


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_hex(16))


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
            until = utc(now + delay)
            # Only ever later: a slower parallel try must not shorten the delay a later one set.
            s.execute(
                update(User)
                .where(User.id == user_id)
                .where((User.locked_until.is_(None)) | (User.locked_until < until))
                .values(locked_until=until)
            )
        s.commit()
    return int(failures)


def check_login(username: str, password: str, unlock_code: str = "") -> WebUser | None:
    """The user if the password is right and no delay applies (or a valid unlock code skips them)."""
    settings = ctx().settings
    auth_state = state()
    now = auth_state.clock()
    address = client_ip()
    with ctx().session_factory() as s:
        row = s.scalars(select(User).where(User.username == username)).first()
        user_id = row.id if row is not None else None
        password_hash = row.password_hash if row is not None else None
        unlocked = row is not None and accounts.unlock_code_matches(row, unlock_code, utc(now))
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
        if delayed_until is not None and delayed_until > utc(now):
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
            values: dict[str, Any] = {"failed_logins": 0, "locked_until": None, "last_login": utc(now)}
            if unlocked:
                values.update(unlock_hash=None, unlock_until=None)  # a code works once
            try:
                s.execute(update(User).where(User.id == user_id).values(**values))
            except OperationalError:
                s.rollback()
            commit_bookkeeping(s, "the login time")
            row = s.get(User, user_id)
            assert row is not None
            user = web_user(row, session_key=new_session(s, row.id, address))
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


def new_session(s: Session, user_id: int, address: str) -> str:
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
            auth_state.unsaved_sessions[key_hash(key)] = user_id
    return key


def _store_session(s: Session, user_id: int, address: str, key: str) -> None:
    now = utc(state().clock())
    s.add(WebSession(user_id=user_id, key_hash=key_hash(key), created_at=now, address=address))
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


def end_current_session() -> None:
    key = getattr(current_user, "session_key", "")
    if key:
        forget_unsaved(key_hash=key_hash(key))
        with ctx().session_factory() as s:
            try:
                s.execute(delete(WebSession).where(WebSession.key_hash == key_hash(key)))
                s.commit()
            except OperationalError as exc:
                # the browser is logged out all the same; the row goes with the next logout or sign-out
                s.rollback()
                log.warning("could not delete the browser session: %s", str(exc).splitlines()[0][:200])
