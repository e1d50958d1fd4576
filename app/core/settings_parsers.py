"""The parsers and checks of single setting values: numbers, switches, servers, topics, URLs, keys."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re

from app.core.settings_defaults import SettingsError


def sqlite_file(database_url: str) -> str | None:
    """The SQLite file a sqlite:/// URL names, or None for another database."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        return None
    return database_url[len(prefix) :].split("?", 1)[0] or None


def syslog_target(address: str) -> tuple[str, int] | str:
    """SYSLOG_ADDRESS as a (host, port) for UDP, or a socket path (/dev/log); raises ValueError.

    Takes what the original's compose file gave Docker's syslog driver (udp://host:514), a plain
    host[:port], or unix:///dev/log.
    """
    text = address.strip()
    if text.startswith("unix://"):
        text = text[len("unix://") :]
    if text.startswith("/"):
        return text
    if text.startswith("udp://"):
        text = text[len("udp://") :]
    elif "://" in text:
        raise ValueError(f"{address!r}: only udp://host[:port], host[:port] or unix:///path are supported")
    host, sep, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not sep:
        host, port_text = text, "514"
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r} is not udp://host[:port]")
    return host, int(port_text)


def whole(values: dict[str, str], name: str, minimum: int = 0, maximum: int | None = None) -> int:
    raw = values.get(name, "").strip()
    try:
        number = int(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a whole number") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(name, f"{number} must be {bound}")
    return number


def text(values: dict[str, str], name: str) -> str:
    text = values.get(name, "").strip()
    if not text:
        raise SettingsError(name, "must not be empty")
    return text


def parse_hhmm(text: str) -> dt.time:
    """'07:00' or '7:00' -> time(7, 0); ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError("must be a time as HH:MM")
    hours, sep, minutes = text.strip().partition(":")
    if not sep or not hours.isdigit() or len(minutes) != 2 or not minutes.isdigit() or len(hours) > 2:
        raise ValueError(f"{text!r} is not a time as HH:MM")
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59)")
    return dt.time(h, m)


def servers(name: str, raw: str, default_port: int = 5672) -> tuple[tuple[str, int], ...]:
    servers = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        host, sep, port_text = part.rpartition(":") if part.count(":") == 1 else (part, "", "")
        if not sep:
            host, port_text = part, str(default_port)
        try:
            port = int(port_text)
        except ValueError:
            raise SettingsError(name, f"port {port_text!r} in {part!r} is not a number") from None
        if not host or not 0 < port < 65536:
            raise SettingsError(name, f"{part!r} is not host[:port]")
        servers.append((host, port))
    if not servers:
        raise SettingsError(name, "names no server")
    return tuple(servers)


def boolean(values: dict[str, str], name: str) -> bool:
    raw = values.get(name, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise SettingsError(name, f"{raw!r} is not true or false")


def host_port(name: str, raw: str, default_port: int) -> tuple[str, int]:
    (host, port), *rest = servers(name, raw, default_port)
    if rest:
        raise SettingsError(name, "names more than one server")
    return host, port


def topics(name: str, raw: str) -> tuple[str, ...]:
    topics = tuple(t.strip() for t in raw.split(",") if t.strip())
    for topic in topics:
        levels = topic.split("/")
        if any(("#" in lv and lv != "#") or ("+" in lv and lv != "+") for lv in levels) or "#" in levels[:-1]:
            raise SettingsError(name, f"{topic!r} is not a valid MQTT topic filter")
    return topics


def seconds(values: dict[str, str], name: str, minimum: float, maximum: float) -> float:
    # Fractions are allowed so that tests can run the periodic threads in well under a second.
    raw = values.get(name, "").strip()
    try:
        number = float(raw)
    except ValueError:
        raise SettingsError(name, f"{raw!r} is not a number of seconds") from None
    if not minimum <= number <= maximum:
        raise SettingsError(name, f"{number:g} must be from {minimum:g} to {maximum:g} seconds")
    return number


def url(values: dict[str, str], name: str) -> str:
    """An optional http(s) URL: empty, or one that starts with the scheme."""
    url = values.get(name, "").strip()
    if url and not url.startswith(("http://", "https://")):
        # The value may carry a key (Sentry, Healthchecks), so the message does not repeat it.
        raise SettingsError(name, "is not an http(s) URL")
    return url


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*")


def proxies(raw: str) -> tuple[str, ...]:
    entries = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            if not _HOST_NAME.fullmatch(part):
                raise SettingsError(
                    "APP_TRUSTED_PROXIES", f"{part!r} is not an address, a network (CIDR) or a host name"
                ) from None
        entries.append(part)
    return tuple(entries)


def fernet_key(values: dict[str, str], name: str) -> str:
    key = values.get(name, "").strip()
    if not key:
        return ""
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32:
        # The key itself is a secret: the message does not repeat it.
        raise SettingsError(
            name,
            "is not a Fernet key (44 characters of URL-safe base64; make one with "
            "`python -m app.ops.backup genkey`)",
        )
    return key


def csv_list(raw: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in raw.split(",") if p.strip())
