"""SMS fallback through AWS SNS for notifications Telegram could not take."""

from __future__ import annotations

import logging
import re

from app.core import aws
from app.core.settings import Settings

log = logging.getLogger(__name__)

SMS_MAX = 160
_PHONE = re.compile(r"^\+[0-9][0-9 \-]{5,20}$")
# A number written without +, as the original's device_params often hold them ("Alice;0412 345 678"):
# national (one trunk 0 dropped, SMS_COUNTRY_CODE put in front) or international with 00.
_NATIONAL = re.compile(r"^[0-9][0-9 \-]{5,20}$")


class SmsError(RuntimeError):
    """No recipient could be reached (none configured, or every publish failed)."""


def normalise_number(candidate: str, country_code: str = "") -> str | None:
    """One phone number in E.164 (+ and digits), or None when it is not one or needs a missing country code.

    `+61 412 345 678` is kept; `0061412345678` becomes +61412345678; `0412 345 678` becomes
    +61412345678 with country_code "+61" (its one trunk 0 dropped) and None without a country code.
    """
    candidate = candidate.strip()
    if _PHONE.match(candidate):
        return re.sub(r"[ \-]", "", candidate)
    if not _NATIONAL.match(candidate):
        return None
    digits = re.sub(r"[ \-]", "", candidate)
    if digits.startswith("00"):
        return "+" + digits[2:] if len(digits) > 8 else None
    if not country_code:
        return None
    return country_code + (digits[1:] if digits.startswith("0") else digits)


def parse_recipients(device_params: str | None, country_code: str = "") -> list[str]:
    """The numbers of the SMS output's device_params, a CSV of `name;+phone` (a bare `+phone` works too).

    A number without + is put in E.164 with country_code (SMS_COUNTRY_CODE); without one it is skipped.
    """
    numbers: list[str] = []
    for entry in (device_params or "").split(","):
        for part in entry.split(";"):
            number = normalise_number(part, country_code)
            if number is not None and number not in numbers:
                numbers.append(number)
    return numbers


def national_without_code(device_params: str | None) -> int:
    """How many entries are national numbers that need SMS_COUNTRY_CODE (for a warning, never the numbers)."""
    count = 0
    for entry in (device_params or "").split(","):
        for part in entry.split(";"):
            candidate = part.strip()
            digits = re.sub(r"[ \-]", "", candidate)
            if _NATIONAL.match(candidate) and not digits.startswith("00"):
                count += 1
    return count


class SmsSender:
    """Publishes a text to phone numbers with SNS (keys/endpoint: settings, else boto3's chain)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: aws.Client | None = None

    def _sns(self) -> aws.Client:
        # Created on first use: a hub without the fallback never needs AWS credentials.
        if self._client is None:
            self._client = aws.client(self._settings, "sns")
        return self._client

    def send(self, device_params: str | None, message: str) -> int:
        """Send `message` (cut to 160 characters) to every recipient; returns how many took it.

        Blocking (boto3): call it from a worker thread, not the event loop.
        """
        country = self._settings.sms_country_code
        numbers = parse_recipients(device_params, country)
        if not country and (missing := national_without_code(device_params)):
            log.warning(
                "%d SMS number(s) have no country code (no leading +) and SMS_COUNTRY_CODE is not set: "
                "they are skipped",
                missing,
            )
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
