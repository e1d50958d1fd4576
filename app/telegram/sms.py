"""SMS fallback through AWS SNS for notifications Telegram could not take."""

from __future__ import annotations

import logging
import re
from typing import Any

from app import aws
from app.settings import Settings

log = logging.getLogger(__name__)

SMS_MAX = 160
_PHONE = re.compile(r"^\+[0-9][0-9 \-]{5,20}$")


class SmsError(RuntimeError):
    """No recipient could be reached (none configured, or every publish failed)."""


def parse_recipients(device_params: str | None) -> list[str]:
    """The +numbers of the SMS output's device_params, a CSV of `name;+phone` (a bare `+phone` works too)."""
    numbers: list[str] = []
    for entry in (device_params or "").split(","):
        for part in entry.split(";"):
            candidate = part.strip()
            if _PHONE.match(candidate):
                number = re.sub(r"[ \-]", "", candidate)
                if number not in numbers:
                    numbers.append(number)
    return numbers


class SmsSender:
    """Publishes a text to phone numbers with SNS (keys/endpoint: settings, else boto3's chain)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None

    def _sns(self) -> Any:
        # Created on first use: a hub without the fallback never needs AWS credentials.
        if self._client is None:
            self._client = aws.client(self._settings, "sns")
        return self._client

    def send(self, device_params: str | None, message: str) -> int:
        """Send `message` (cut to 160 characters) to every recipient; returns how many took it.

        Blocking (boto3): call it from a worker thread, not the event loop.
        """
        numbers = parse_recipients(device_params)
        if not numbers:
            raise SmsError("no SMS recipients configured (device_params of the SMS output)")
        text = message[:SMS_MAX]
        sent = 0
        for number in numbers:
            try:
                self._sns().publish(PhoneNumber=number, Message=text)
                sent += 1
            except Exception as exc:  # noqa: BLE001 - any AWS/botocore failure means this number missed it
                # The number is personal data: log only its last digits.
                log.error("SMS to ...%s failed: %s", number[-3:], type(exc).__name__)
        if not sent:
            raise SmsError("every SNS publish failed")
        return sent
