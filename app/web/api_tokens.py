"""Bearer API tokens: names, roles, and making one (only its SHA-256 is stored)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.engine import change_history
from app.store.models import ApiToken, User

TOKEN_PREFIX = "ep_"
TOKEN_NAME_MAX = 100
TOKEN_ROLES = {"read": "read-only (GET)", "admin": "admin (everything)"}


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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, username: str, name: str, role: str = "admin", actor: str | None = None
) -> str:
    """A new API token for `username`; only its SHA-256 is stored, so the caller must keep it.

    With `actor` (a person through the dashboard) the history records who made it, with its name and
    role; scripts that write the database directly pass none.
    """
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
            token_hash=token_hash(token),
            prefix=token[:10],
            created_at=datetime.now(UTC).replace(tzinfo=None),
            role=role,
        )
    )
    if actor is not None:
        diff = change_history.Diff()
        diff.note("token", None, name)
        diff.note("role", None, TOKEN_ROLES[role])
        summary = f"API token {name!r} ({TOKEN_ROLES[role]}) created for {username}"
        change_history.record_account(session, actor, "token_created", name, summary, diff)
    session.commit()
    return token
