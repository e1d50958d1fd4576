"""A fresh install's generated admin password, hashed in a thread while the hub imports the rest."""

from __future__ import annotations

import hashlib
import secrets
import string
import threading

# The same hash werkzeug's generate_password_hash(password, accounts.PASSWORD_METHOD) makes (a test
# checks both the method and that werkzeug accepts the result); hashlib alone, so it can start before
# the hub imports werkzeug.
ITERATIONS = 600_000
METHOD = f"pbkdf2:sha256:{ITERATIONS}"
_SALT_CHARS = string.ascii_letters + string.digits
_SALT_LENGTH = 16

_lock = threading.Lock()
_prepared: tuple[threading.Thread, list[tuple[str, str]]] | None = None


def new_pair() -> tuple[str, str]:
    """A new random password and its hash in werkzeug's format."""
    password = secrets.token_urlsafe(12)
    salt = "".join(secrets.choice(_SALT_CHARS) for _ in range(_SALT_LENGTH))
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), ITERATIONS).hex()
    return password, f"{METHOD}${salt}${digest}"


def prepare() -> None:
    """Start making a pair now, for a database that will need its first admin user.

    The hash costs ~0.3 s of CPU (600,000 rounds) on the first start's path to ready; hashlib
    releases the GIL while it runs, so a thread started before the heavy imports overlaps them.
    """
    global _prepared
    made: list[tuple[str, str]] = []
    thread = threading.Thread(target=lambda: made.append(new_pair()), name="AdminPassword", daemon=True)
    with _lock:
        _prepared = (thread, made)
    thread.start()


def take() -> tuple[str, str]:
    """The prepared pair (once), or a pair made now."""
    global _prepared
    with _lock:
        prepared, _prepared = _prepared, None
    if prepared is not None:
        thread, made = prepared
        thread.join()
        if made:
            return made[0]
    return new_pair()
