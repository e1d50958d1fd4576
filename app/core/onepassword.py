"""Settings and secrets from 1Password Connect: the ENV.<app> item plus the original's secret items.

Just over ~400 lines as one cohesive thing: the reader and its command line (`python -m
app.core.onepassword check|dotenv`, as the README gives it), which prints what the reader found;
moving the command out would change the command people type.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx
from onepasswordconnectsdk.client import Client
from onepasswordconnectsdk.config import ClientConfig
from onepasswordconnectsdk.errors import FailedToRetrieveItemException, OnePasswordConnectSDKError
from onepasswordconnectsdk.models import Item, Vault
from onepasswordconnectsdk.utils import is_valid_uuid

from app.core.settings_defaults import OP_CONNECT_NAMES, SettingsError, config_defaults
from pylib import threads

log = logging.getLogger(__name__)

ENV_ITEM = "ENV.<app>"
"""The item holding plain settings: fields labelled with a setting name, in section <app> or in no section."""

SECRET_FIELDS: dict[str, tuple[str, str]] = {
    "TELEGRAM_BOT_TOKEN": ("Telegram", "<app>.token"),
    "SENTRY_DSN": ("Sentry", "<app>.dsn"),
    "AWS_ACCESS_KEY_ID": ("AWS", "<region>.akid"),
    "AWS_SECRET_ACCESS_KEY": ("AWS", "<region>.sak"),
    "APP_ADMIN_PASSWORD_HASH": ("Frontend", "<app>.password_hash"),
    "APP_SECRET_KEY": ("Frontend", "Flask.secret_key"),
    "APP_ADMIN_USER": ("Frontend", ".username"),
    "INFLUXDB_URL": ("InfluxDB", "local.url"),
    "INFLUXDB_ORG": ("InfluxDB", "local.org"),
    "INFLUXDB_TOKEN": ("InfluxDB", "local.token"),
    "MDASH_API_KEY": ("mdash", ".password"),
    "CRONITOR_TELEMETRY_KEY": ("cronitor", ".password"),
}
"""Setting -> (item title, "section.field") in the original's 1Password layout (its CredsConfig).

Where the original kept these, secret or not (INFLUXDB_URL is here, RABBITMQ_PASSWORD is not): a map
of places, not the list of secrets, which is the flag on the Settings fields (app/core/settings.py).

`<app>` is APP_NAME and `<region>` is AWS_DEFAULT_REGION; ".field" is a field in no section. A missing
item, field or empty value is skipped; a non-empty field of the same name in ENV.<app> wins.
"""

# Read only from the environment or .env: 1Password cannot point the app at another 1Password.
_NOT_FROM_ONEPASSWORD = ("OP_",)
_MAX_BACKOFF = 30.0
# python-dotenv expands ${NAME} (and ${NAME:-default}) in any value, quoted or not, with no escape.
_DOTENV_VARIABLE = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Source:
    """Where one setting was found: the item title and "section.field" (".field" for no section)."""

    item: str
    path: str
    value: str = field(repr=False)


@dataclass
class Found:
    """What one read of the vault found; values stay out of repr so a stray log line shows none."""

    vault: str
    env_item: str
    env_item_found: bool = False
    env_fields: dict[str, str] = field(default_factory=dict, repr=False)
    settings: dict[str, Source] = field(default_factory=dict)
    missing: dict[str, tuple[str, str]] = field(default_factory=dict)

    def values(self) -> dict[str, str]:
        """Setting name -> value, from the ENV.<app_name> item and the SECRET_FIELDS items."""
        return {name: source.value for name, source in self.settings.items()}


class _Unreachable(Exception):
    """Worth retrying: no answer, or a server-side error (HTTP 5xx)."""


class _Refused(Exception):
    """HTTP 401/403: the token is wrong or may not read this vault; retrying cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}" + (f": {message}" if message else ""))


def display_server(server: str) -> str:
    """The server URL for messages, without any user:password part."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _check_response(response: httpx.Response) -> None:
    # An httpx event hook sees the status before the SDK does: the SDK folds every HTTP error into
    # one exception type (and fails on a non-JSON 5xx body), which would lose the 401-vs-503 split.
    status = response.status_code
    if status in (401, 403):
        response.read()
        try:
            message = str(response.json().get("message", ""))
        except ValueError:
            message = ""
        raise _Refused(status, message)
    if status >= 500:
        raise _Unreachable(f"HTTP {status}")


def _reason(exc: httpx.TransportError, timeout: float) -> str:
    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    if "refused" in text.lower():
        return "connection refused"
    if any(s in text for s in ("Name or service not known", "nodename nor servname", "name resolution")):
        return "host name not found"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _section_fields(item: Item, section: str | None) -> dict[str, str]:
    """label -> value of the item's fields in the named section (None: fields in no section)."""
    # A field added in the 1Password app without choosing a section lands in a section with no label
    # (Connect's "add more"); to a person that is "no section", so it counts as one.
    labels = {s.id: s.label or None for s in item.sections or []}
    out: dict[str, str] = {}
    for f in item.fields or []:
        section_id = f.section.id if f.section is not None else None
        if section_id is not None and section_id not in labels:
            continue
        in_section = labels[section_id] if section_id is not None else None
        if in_section == section and f.label and f.label not in out:
            out[f.label] = f.value if f.value is not None else ""
    return out


def _field(item: Item, path: str) -> str | None:
    section, _, label = path.partition(".")
    return _section_fields(item, section or None).get(label)


class _Reader:
    """One pass over the vault with the SDK client; raises _Unreachable/_Refused from the hook."""

    def __init__(self, client: Client, vault: str) -> None:
        self.client = client
        self.vault_ref = vault

    def vault(self) -> Vault:
        if is_valid_uuid(self.vault_ref):
            try:
                return self.client.get_vault(self.vault_ref)
            except OnePasswordConnectSDKError:
                pass  # a 26-letter vault *name* is possible too: try it as one
        try:
            return self.client.get_vault_by_title(self.vault_ref)
        except OnePasswordConnectSDKError:
            names = sorted(v.name for v in self.client.get_vaults())
            same = names.count(self.vault_ref)
            problem = (
                f"{same} vaults are named {self.vault_ref!r}; use the vault id"
                if same > 1
                else f"no vault with id or name {self.vault_ref!r}"
                + (f" (the token can read: {', '.join(names)})" if names else " (the token can read none)")
            )
            raise SettingsError("OP_VAULT", problem) from None

    def item(self, vault: Vault, title: str) -> Item | None:
        summaries = self.client.get_items(vault.id, f'title eq "{title}"')
        if len(summaries) > 1:
            problem = f'vault {vault.name!r} has {len(summaries)} items titled "{title}"; keep one'
            raise SettingsError("OP_VAULT", problem)
        if not summaries:
            return None
        try:
            return self.client.get_item_by_id(summaries[0].id, vault.id)
        except FailedToRetrieveItemException as exc:
            if exc.status_code == 404:  # deleted between the two requests
                return None
            raise

    def read(self, app_name: str, aws_region: str, known: frozenset[str]) -> Found:
        vault = self.vault()
        env_title = ENV_ITEM.replace("<app>", app_name)
        found = Found(vault=f"{vault.name} ({vault.id})", env_item=env_title)
        env_item = self.item(vault, env_title)
        if env_item is None:
            log.warning(
                '1Password item "%s" not found in vault %r; only the secret items are used',
                env_title,
                vault.name,
            )
        else:
            found.env_item_found = True
            # The original's cred_tool dumped section <app>; fields in no section count too.
            for section in (None, app_name):
                for name, value in _section_fields(env_item, section).items():
                    found.env_fields[name] = value
                    if name in known and not name.startswith(_NOT_FROM_ONEPASSWORD):
                        found.settings[name] = Source(env_title, f"{section or ''}.{name}", value)
                    else:
                        log.debug(
                            '1Password item "%s": field %s is not a setting it sets; ignored', env_title, name
                        )
        items: dict[str, Item | None] = {}
        for name, (title, pattern) in SECRET_FIELDS.items():
            path = pattern.replace("<app>", app_name).replace("<region>", aws_region)
            if name not in known or (name in found.settings and found.settings[name].value):
                continue
            if title not in items:
                items[title] = self.item(vault, title)
            item = items[title]
            field_value = _field(item, path) if item is not None else None
            if not field_value:
                what = "no item" if item is None else "no value at"
                log.debug('1Password: %s "%s" %s for %s; skipped', what, title, path, name)
                if name not in found.settings:
                    found.missing[name] = (title, path)
                continue
            found.settings[name] = Source(title, path, field_value)
        return found


def read(
    *,
    server: str,
    token: str,
    vault: str,
    app_name: str,
    aws_region: str,
    known: frozenset[str],
    attempts: int,
    timeout: float,
) -> Found:
    """Read the vault, retrying an unreachable server; raises SettingsError naming the OP_* to fix."""
    if not server.startswith(("http://", "https://")):
        raise SettingsError("OP_CONNECT_SERVER", "is not an http(s) URL such as http://op-connect:8080")
    shown = display_server(server)
    config = ClientConfig(timeout=timeout, event_hooks={"response": [_check_response]})
    client = Client(server, token, config)
    backoff = threads.Backoff(initial=1.0, maximum=_MAX_BACKOFF)
    try:
        for attempt in range(1, attempts + 1):
            try:
                return _Reader(client, vault).read(app_name, aws_region, known)
            except (httpx.TransportError, _Unreachable) as exc:
                reason = _reason(exc, timeout) if isinstance(exc, httpx.TransportError) else str(exc)
                if attempt == attempts:
                    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
                    problem = f"1Password Connect at {shown} is unreachable after {tries}: {reason}"
                    raise SettingsError("OP_CONNECT_SERVER", problem) from None
                delay = backoff.next_delay()
                # Logging is not configured yet at start-up; with no handler, logging.lastResort
                # still prints WARNING lines to stderr as they are.
                log.warning(
                    "1Password Connect at %s unreachable (%s); attempt %d of %d, retrying in %g s",
                    shown,
                    reason,
                    attempt,
                    attempts,
                    delay,
                )
                time.sleep(delay)  # start-up, before any thread: nothing to stop it early
            except _Refused as exc:
                raise SettingsError(
                    "OP_CONNECT_TOKEN",
                    f"1Password Connect at {shown} refused the token ({exc}); "
                    f"check the token and that it may read vault {vault!r}",
                ) from None
            except SettingsError:
                raise
            except (OnePasswordConnectSDKError, ValueError) as exc:
                # Not Connect's API (another web server, a proxy page): say so rather than a traceback.
                raise SettingsError(
                    "OP_CONNECT_SERVER", f"unexpected answer from 1Password Connect at {shown}: {exc}"
                ) from None
        raise AssertionError("the attempts loop returns or raises")
    finally:
        client.session.close()


# ---- command line: `python -m app.core.onepassword dotenv|check` ----------------------------------


def dotenv_line(key: str, value: str) -> str:
    """A .env line that python-dotenv, Docker Compose and Task all read back as exactly value.

    Single quotes keep `$` literal for Compose (a werkzeug hash is full of them); python-dotenv reads
    backslash escapes even there, so a value with a quote, a backslash or a line break gets double
    quotes with escapes and must then hold no `$`. ValueError when neither works.
    """
    if _DOTENV_VARIABLE.search(value):
        raise ValueError("contains ${...}, which python-dotenv would expand")
    if not any(ch in value for ch in "'\\\n\r"):
        return f"{key}='{value}'"
    if "$" in value:
        raise ValueError("contains $ and a quote, backslash or line break; Docker Compose would expand it")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'{key}="{escaped}"'


def _read_from_environment(environ: dict[str, str]) -> Found:
    defaults = config_defaults()

    def get(name: str) -> str:
        return environ.get(name, "").strip() or defaults.get(name, "").strip()

    for name in ("OP_CONNECT_SERVER", "OP_CONNECT_TOKEN", "OP_VAULT"):
        if not get(name):
            raise SettingsError(name, "is not set in the environment")
    try:
        attempts = int(get("OP_CONNECT_ATTEMPTS") or "5")
        timeout = float(get("OP_CONNECT_TIMEOUT") or "10")
    except ValueError:
        raise SettingsError("OP_CONNECT_ATTEMPTS or OP_CONNECT_TIMEOUT", "is not a number") from None
    return read(
        server=get("OP_CONNECT_SERVER"),
        token=get("OP_CONNECT_TOKEN"),
        vault=get("OP_VAULT"),
        app_name=get("APP_NAME"),
        aws_region=get("AWS_DEFAULT_REGION"),
        known=frozenset(defaults),
        attempts=max(1, attempts),
        timeout=timeout,
    )


def _print_dotenv(found: Found, environ: dict[str, str]) -> int:
    if not found.env_item_found:
        print(
            f'onepassword: item "{found.env_item}" not found in vault {found.vault}; '
            "copy .env.example instead and add the OP_CONNECT_* lines",
            file=sys.stderr,
        )
        return 2
    lines = [f'# 1Password item "{found.env_item}", vault {found.vault}']
    bad: list[str] = []
    for key, value in found.env_fields.items():
        if not _ENV_NAME.match(key):
            print(f"onepassword: field {key!r} is not a variable name; left out", file=sys.stderr)
            continue
        if key.startswith("OP_") or not value.strip():
            # OP_* come from the shell below; a blank field would hide a secret item's value.
            continue
        try:
            lines.append(dotenv_line(key, value))
        except ValueError as exc:
            bad.append(f"{key} {exc}")
    # The container needs these to read the secret items (Telegram token, AWS keys, ...) at start.
    lines.append("# 1Password Connect, so the hub reads the secret items at start-up")
    for key in (*OP_CONNECT_NAMES, "OP_CONNECT_ATTEMPTS", "OP_CONNECT_TIMEOUT"):
        value = environ.get(key, "").strip()
        if not value:
            continue
        try:
            lines.append(dotenv_line(key, value))
        except ValueError as exc:
            bad.append(f"{key} {exc}")
    if bad:
        # A .env that silently differs from the vault is worse than none.
        for problem in bad:
            print(f"onepassword: {problem}; no .env written", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _print_check(found: Found, environ: dict[str, str]) -> int:
    print(f"vault {found.vault}")
    if not found.env_item_found:
        print(f'item "{found.env_item}" not found: settings come from the secret items only')
    width = max((len(n) for n in [*found.settings, *found.missing]), default=0)
    for name, source in sorted(found.settings.items()):
        note = "  (overridden by the environment)" if name in environ else ""
        print(f"from 1Password  {name:<{width}}  {source.item} {source.path}{note}")
    for name, (item, path) in sorted(found.missing.items()):
        print(f"not found       {name:<{width}}  {item} {path}")
    return 0


# main's docstring, kept for --help: `python -OO` (as the hub runs) strips docstrings.
DESCRIPTION = "`dotenv`: the ENV item as .env lines on stdout. `check`: which settings come from where."


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """`dotenv`: the ENV item as .env lines on stdout. `check`: which settings come from where."""
    parser = argparse.ArgumentParser(prog="python -m app.core.onepassword", description=DESCRIPTION)
    parser.add_argument("command", choices=("dotenv", "check"))
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    logging.basicConfig(level=logging.WARNING, format="onepassword: %(message)s", stream=sys.stderr)
    try:
        found = _read_from_environment(env)
    except SettingsError as exc:
        print(f"onepassword: {exc}", file=sys.stderr)
        return 2
    if args.command == "dotenv":
        return _print_dotenv(found, env)
    return _print_check(found, env)


if __name__ == "__main__":
    sys.exit(main())
