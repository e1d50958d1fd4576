"""The first admin user's generated password: werkzeug's own hash format, prepared while the hub imports."""

from __future__ import annotations

from werkzeug.security import check_password_hash

from app.store import accounts, admin_password


def test_the_hash_is_werkzeugs_with_the_accounts_method() -> None:
    assert admin_password.METHOD == accounts.PASSWORD_METHOD
    password, hashed = admin_password.new_pair()
    assert hashed.startswith(accounts.PASSWORD_METHOD + "$")
    assert check_password_hash(hashed, password)
    assert not check_password_hash(hashed, password + "x")
    # and werkzeug's hash of the same password is checked the same way, so a login cannot tell them apart
    assert check_password_hash(accounts.hash_password(password), password)
    assert len(password) >= 16 and password != admin_password.new_pair()[0]


def test_a_prepared_pair_is_taken_once_then_pairs_are_made_on_demand() -> None:
    admin_password.prepare()
    first = admin_password.take()
    second = admin_password.take()  # nothing prepared any more: made now
    assert first != second
    for password, hashed in (first, second):
        assert check_password_hash(hashed, password)
