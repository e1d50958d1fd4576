"""The quiet-hours digest: alerts of informational inputs held back by quiet hours, sent as one message.

An info_notify input that fires inside quiet hours does not notify; its alert waits here (at most
DIGEST_MAX listed, later ones only counted) and goes out as one Telegram message once the window
opens. The pending digest is rule state (app/store/rule_state.py keeps it across restarts).
"""

from __future__ import annotations

import logging
from datetime import datetime, tzinfo
from typing import Any

from app.engine import rules

log = logging.getLogger(__name__)

DIGEST_MAX = 200  # entries listed in one digest; later ones are only counted


# Any here: the digest's items are stored as a rule_state JSON document and checked on restore.


class QuietDigest:
    def __init__(self, tz: tzinfo) -> None:
        self._tz = tz
        self.items: list[dict[str, Any]] = []
        self.more = 0

    def hhmm(self, when: float) -> str:
        return datetime.fromtimestamp(when, self._tz).strftime("%H:%M")

    def defer(self, rule: rules.InputRule, now: float, detail: str | None) -> None:
        """Hold an informational alert for the digest."""
        if len(self.items) < DIGEST_MAX:
            self.items.append({"key": rule.device_key, "label": rule.label, "time": now, "detail": detail})
        else:
            self.more += 1
        log.info("notification for %r deferred by quiet hours", rule.device_key)

    def take_if_due(self, now: float, quiet: rules.QuietHours) -> str | None:
        """The digest's text once quiet hours are over (and the digest emptied), else None."""
        if not self.items or rules.quiet_until(now, quiet, self._tz) is not None:
            return None
        text = self.text(now)
        log.info("sent the quiet-hours digest of %d notification(s)", len(self.items))
        self.clear()
        return text

    def text(self, now: float) -> str:
        today = datetime.fromtimestamp(now, self._tz).date()
        count = len(self.items) + self.more
        lines = [f"Quiet hours digest: {count} notification{'' if count == 1 else 's'}"]
        for item in self.items:
            local = datetime.fromtimestamp(item["time"], self._tz)
            when = local.strftime("%H:%M" if local.date() == today else "%d %b %H:%M")
            detail = f" {item['detail']}" if item.get("detail") else ""
            lines.append(f"{when} {item['label']}{detail}")
        if self.more:
            lines.append(f"and {self.more} more")
        return "\n".join(lines)

    def clear(self) -> None:
        self.items = []
        self.more = 0

    def value(self) -> dict[str, Any] | None:
        """As stored in rule_state; None (the key deleted) when nothing is pending."""
        return {"items": self.items, "more": self.more} if self.items else None

    def restore(self, value: Any) -> None:
        self.items = [dict(i) for i in value["items"] if isinstance(i, dict) and "label" in i and "time" in i]
        self.more = int(value.get("more", 0))
