"""What a command's words mean: durations, names matched to inputs and outputs, /schedule arguments."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Literal

from app.store import registry
from app.store.models import InputConfig, OutputConfig

Kind = Literal["input", "output"]
BUILTIN_INPUTS = frozenset({registry.PANIC_BUTTON, registry.DASH_BUTTON})
MAX_DURATION = 7 * 86400  # a week: longer "temporary" changes are better made on the dashboard
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """One device a command acts on."""

    kind: Kind
    id: int
    key: str
    label: str
    enabled: bool


def parse_duration(text: str) -> int | None:
    """'30m', '2h', '90s', '1h30m', '1d' -> seconds; None when text is not a duration."""
    match = _DURATION.fullmatch(text.strip())
    if not match or not any(match.groups()):
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    return total or None


def format_duration(seconds: int) -> str:
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def split_args(args: list[str], allow_duration: bool) -> tuple[list[str], int | None]:
    """Search terms and an optional trailing duration."""
    if allow_duration and args:
        duration = parse_duration(args[-1])
        if duration is not None:
            return args[:-1], duration
    return list(args), None


def matches(term: str, *values: str | None) -> bool:
    # Case-insensitive substring, like the original's SQL LIKE '%term%'.
    needle = term.casefold()
    return any(v is not None and needle in v.casefold() for v in values)


def match_inputs(rows: list[InputConfig], terms: list[str]) -> list[Target]:
    """Inputs named by any term (key, label or group); no terms: the auto-scheduled inputs.

    The built-in buttons are left out unless a term names them by key or label: switching them off
    by accident through a group name or the wildcard would silently kill the panic button.
    """
    found = []
    for row in rows:
        builtin = row.device_key in BUILTIN_INPUTS
        if not terms:
            hit = bool(row.auto_schedule) and not builtin
        elif builtin:
            hit = any(matches(t, row.device_key, row.device_label) for t in terms)
        else:
            hit = any(matches(t, row.device_key, row.device_label, row.group_name) for t in terms)
        if hit:
            # A NULL input flag is off, as in the original.
            found.append(
                Target(
                    "input",
                    row.id,
                    row.device_key,
                    row.device_label or row.device_key,
                    bool(row.device_enabled),
                )
            )
    return sorted(found, key=lambda t: t.label.casefold())


def match_outputs(rows: list[OutputConfig], terms: list[str]) -> list[Target]:
    found = [
        # Outputs predate their flag, so NULL means on.
        Target(
            "output",
            row.id,
            row.device_key,
            row.device_label or row.device_key,
            row.device_enabled is not False,
        )
        for row in rows
        if any(matches(t, row.device_key, row.device_label) for t in terms)
    ]
    return sorted(found, key=lambda t: t.label.casefold())


def parse_schedule_args(args: list[str]) -> tuple[list[str], Literal["show", "set", "off"], list[str]]:
    """/schedule arguments -> (terms, what, times): the last words decide, the rest are search terms.

    A word with a colon is taken as a time, so '/schedule garage 25:00 22:00' is refused as a bad time
    rather than searched for; one time alone is returned too, for the caller to refuse.
    """
    if len(args) >= 2 and args[-1].casefold() == "off":
        return args[:-1], "off", []
    times = [a for a in args[-2:] if ":" in a]
    if times and args[-1] == times[-1]:
        if len(times) == 2:
            return args[:-2], "set", times
        return args[:-1], "set", times
    return list(args), "show", []


def names_list(targets: list[Target]) -> str:
    return "\n".join(f"• {html.escape(t.label)}" for t in targets)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def terms_text(terms: list[str]) -> str:
    return html.escape(" ".join(terms))
