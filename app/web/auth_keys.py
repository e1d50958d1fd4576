"""Logins at start-up: the admin user from the settings, and the session-signing key's own file."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core.settings import Settings
from app.store import accounts, admin_password
from app.store.models import GeneralConfig, User

# one logger for logins, whichever of their modules speaks
log = logging.getLogger("app.web.auth")


SECRET_KEY_CONFIG = "flask-secret-key"  # where the signing key lived before it got a file of its own
SECRET_KEY_FILE = "secret_key"


def start_up(settings: Settings, session_factory: Callable[[], Session]) -> str:
    """The admin user and the session-signing key, at the hub's start (the web app may come much later);
    returns the key. Again when the web app is built: the second time finds both and changes nothing."""
    with session_factory() as session:
        bootstrap_admin(session, settings)
        return settings.secret_key or load_secret_key(session, secret_key_path(settings))


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
    password, password_hash = admin_password.take()  # prepared during start-up's imports
    session.add(User(username=settings.admin_user, password_hash=password_hash, created_at=now))
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
