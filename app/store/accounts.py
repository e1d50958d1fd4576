"""Dashboard accounts outside the web app: one-time unlock codes, password resets and ending sessions.

The owner's way in while a stranger keeps the login delayed: `/unlock` to the Telegram bot or
`python -m app.store.accounts unlock` on the console gives a code that, with the password, skips the delays.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import secrets
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.store.models import User, WebSession

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult

UNLOCK_SECONDS = 600
# Letters and digits that cannot be mistaken for one another when typed from a phone.
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
# PBKDF2 rather than werkzeug's default scrypt: scrypt takes ~32 MB of memory per hash, which on a
# Raspberry Pi shows up as a lasting jump in the hub's RSS. 600 000 rounds of SHA-256 is OWASP's
# current advice. Hashes made with scrypt (e.g. APP_ADMIN_PASSWORD_HASH) still verify.
PASSWORD_METHOD = "pbkdf2:sha256:600000"


class AccountError(ValueError):
    """The account named does not exist; the message is for the person."""


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # the database holds naive UTC times


def hash_password(password: str) -> str:
    # Here, not at the top: the hub imports this module at start-up, and Werkzeug only with the dashboard.
    from werkzeug.security import generate_password_hash

    return generate_password_hash(password, method=PASSWORD_METHOD)


def _code_hash(code: str) -> str:
    normal = "".join(ch for ch in code.upper() if ch.isalnum())
    return hashlib.sha256(normal.encode()).hexdigest()


def _user(session: Session, username: str) -> User:
    row = session.scalars(select(User).where(User.username == username)).first()
    if row is None:
        raise AccountError(f"there is no dashboard user {username!r}")
    return row


def issue_unlock_code(session: Session, username: str, now: datetime | None = None) -> str:
    """A new one-time code for `username`, valid UNLOCK_SECONDS; only its hash is stored."""
    row = _user(session, username)
    code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(CODE_LENGTH))
    row.unlock_hash = _code_hash(code)
    row.unlock_until = (now or utc_now()) + timedelta(seconds=UNLOCK_SECONDS)
    session.commit()
    return f"{code[:5]}-{code[5:]}"


def unlock_code_matches(row: User, code: str, now: datetime) -> bool:
    if not code or not row.unlock_hash or row.unlock_until is None or row.unlock_until <= now:
        return False
    return hmac.compare_digest(_code_hash(code), row.unlock_hash)


def end_sessions(session: Session, user_id: int, keep_key_hash: str | None = None) -> int:
    """Delete the user's web sessions (all but one, when given); every cookie naming them is dead."""
    stmt = delete(WebSession).where(WebSession.user_id == user_id)
    if keep_key_hash is not None:
        stmt = stmt.where(WebSession.key_hash != keep_key_hash)
    # A DELETE's result is a CursorResult (it has rowcount); Session.execute is typed for any statement.
    count = cast("CursorResult[Any]", session.execute(stmt)).rowcount or 0
    session.commit()
    return count


def reset_password(session: Session, username: str) -> str:
    """A new random password for `username`: delays cleared, every session ended. Returns the password."""
    row = _user(session, username)
    password = secrets.token_urlsafe(12)
    row.password_hash = hash_password(password)
    row.failed_logins = 0
    row.locked_until = None
    row.unlock_hash = None
    row.unlock_until = None
    session.commit()
    end_sessions(session, row.id)
    return password


# The module's docstring, kept for --help: `python -OO` (as the hub runs) strips docstrings.
DESCRIPTION = (
    "Dashboard accounts outside the web app: one-time unlock codes, password resets and ending sessions.\n"
    "\n"
    "The owner's way in while a stranger keeps the login delayed: `/unlock` to the Telegram bot or\n"
    "`python -m app.store.accounts unlock` on the console gives a code that, with the password, "
    "skips the delays.\n"
)


def main(argv: list[str] | None = None) -> int:
    """`python -m app.store.accounts unlock|password [user]`: prints to the console only, never to a log."""
    parser = argparse.ArgumentParser(prog="python -m app.store.accounts", description=DESCRIPTION)
    parser.add_argument("command", choices=("unlock", "password"))
    parser.add_argument("user", nargs="?", help="the dashboard user (default: APP_ADMIN_USER)")
    args = parser.parse_args(argv)
    from app.core import settings as settings_module
    from app.store import db

    try:
        settings = settings_module.load()
    except settings_module.SettingsError as exc:
        print(f"accounts: {exc}", file=sys.stderr)
        return 2
    username = args.user or settings.admin_user
    engine = db.make_engine(settings.database_url, settings.db_timeout)
    try:
        with db.session_factory(engine)() as session:
            if args.command == "unlock":
                code = issue_unlock_code(session, username)
                print(
                    f"unlock code for {username!r}: {code} (valid {UNLOCK_SECONDS // 60} minutes, once): "
                    "enter it on the login page with the password"
                )
            else:
                password = reset_password(session, username)
                print(f"new password for {username!r}: {password} (every browser was signed out)")
                if settings.admin_password_hash and username == settings.admin_user:
                    print("note: APP_ADMIN_PASSWORD_HASH is set and puts its password back at the next start")
    except AccountError as exc:
        print(f"accounts: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
