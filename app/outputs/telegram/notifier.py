"""Formats Notifications and delivers them to the chat room: albums, coalescing, pacing, retries, fallback."""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from telegram import Bot, InputMediaPhoto
from telegram.constants import MediaGroupLimit, ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError, TimedOut

from app.core import health, zones
from app.core.channels import Notification
from app.core.settings import Settings
from app.outputs.telegram.sms import SMS_MAX, SmsSender
from pylib import threads

# PTB 22 gives its time periods (here RetryAfter.retry_after) as timedelta once PTB_TIMEDELTA is set,
# and warns in every RetryAfter it builds until then; the notifier reads either form. Opting in keeps
# the warning out of the log and means PTB's next major version changes nothing here.
os.environ.setdefault("PTB_TIMEDELTA", "true")

log = logging.getLogger(__name__)

ALBUM_WINDOW = 2.0  # images arriving within this many seconds of the first go out as one album
ALBUM_MAX = int(MediaGroupLimit.MAX_MEDIA_LENGTH)  # 10
TEXT_MAX = 1000  # below the 1024-character caption limit, so the same text works as a caption
MAX_RETRY_AFTER = 10  # 429 waits per message before it counts as undeliverable
PEOPLE_WORDS = ("person", "face")


@dataclass
class _Text:
    notification: Notification
    count: int = 1


@dataclass
class _Album:
    opened_at: float
    items: list[Notification] = field(default_factory=list)


def _image(n: Notification) -> bytes:
    """The image of an album's notification (only notifications with one join an album)."""
    if n.image is None:
        raise ValueError(f"{_label(n)}: an album entry without an image")
    return n.image


def _label(n: Notification) -> str:
    return n.input_label or n.input_key or "(unnamed input)"


def _local_time(n: Notification, tz: str) -> str:
    when = datetime.fromtimestamp(n.timestamp or time.time(), zones.zone(tz))
    return f"{when.hour}:{when.minute:02d}"  # the original: hour not padded, minute padded


def _base(n: Notification, tz: str) -> str:
    detail = f" {n.event_detail}" if n.event_detail else ""
    return f"{_label(n)}{detail} ({_local_time(n, tz)})"


def format_html(n: Notification, tz: str, count: int = 1, max_length: int = TEXT_MAX) -> str:
    """The chat text of a Notification in HTML parse mode; every piece of sender text is escaped.

    Plain `text` Notifications (the offline monitor) are plain text: they are escaped here, so
    senders must not put markup in them.
    """
    if n.text is not None:
        return html.escape(n.text)[:max_length]
    base = html.escape(_base(n, tz))
    if count > 1:
        base += f" (×{count})"
    if n.storage_url:
        base = f'<a href="{html.escape(n.storage_url, quote=True)}">{base}</a>'
    msg = base
    for entry in n.history:
        try:
            label, seconds = str(entry[0]), int(entry[1])
        except (IndexError, TypeError, ValueError):
            continue  # a malformed history entry costs one line, not the alert
        line = f"\n{seconds}s ago: {html.escape(label)}"
        if len(msg) + len(line) > max_length:
            break
        msg += line
    return msg


def format_plain(n: Notification, tz: str, max_length: int = SMS_MAX) -> str:
    """A short plain text (no markup) for SMS, at most max_length characters."""
    if n.text is not None:
        return n.text[:max_length]
    msg = _base(n, tz)[:max_length]
    for entry in n.history:
        try:
            line = f"\n{int(entry[1])}s ago: {entry[0]}"
        except (IndexError, TypeError, ValueError):
            continue
        if len(msg) + len(line) > max_length:
            break
        msg += line
    return msg


def wants_image(n: Notification) -> bool:
    """The people filter: a camera image is worth sending if it shows a person or face, or a button fired."""
    detail = (n.event_detail or "").lower()
    return any(word in detail for word in PEOPLE_WORDS) or "button" in (n.input_type or "").lower()


class Notifier:
    """Queue and sender for the chat room. submit() from the event loop; run() is the sending task.

    Text notifications waiting to be sent collapse per label into the newest one with a count;
    images arriving within ALBUM_WINDOW form one album (at most 10). One message goes out per
    telegram_min_send_interval. A message that cannot be delivered after the retries goes out
    as an SMS (if enabled) or is logged as lost and counted: never dropped silently.
    """

    def __init__(
        self,
        bot: Bot,
        settings: Settings,
        sms: SmsSender | None = None,
        album_window: float = ALBUM_WINDOW,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bot = bot
        self._settings = settings
        if settings.telegram_chat_room is None:  # Settings refuse a bot token without a chat room
            raise ValueError("the Telegram notifier needs TELEGRAM_CHAT_ROOM")
        self._chat_id: int = settings.telegram_chat_room
        self._sms = (
            sms if sms is not None else (SmsSender(settings) if settings.telegram_sms_fallback else None)
        )
        self._album_window = album_window
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._pending: OrderedDict[Hashable, _Text | _Album] = OrderedDict()
        self._seq = itertools.count()
        self._open_album: Hashable | None = None
        self._wake = asyncio.Event()
        self._last_send = float("-inf")

    # ---- queueing --------------------------------------------------------------------------

    def submit(self, n: Notification) -> None:
        """Queue a notification (call from the notifier's event loop)."""
        if n.image is not None and n.text is None:
            if self._settings.telegram_image_only_with_people and not wants_image(n):
                log.info("image from %s not sent: no person or face detected", _label(n))
                health.count("telegram.filtered")
                return
            self._add_image(n)
        elif n.text is not None:
            self._pending[("text", next(self._seq))] = _Text(n)  # plain messages never merge
        else:
            key = ("label", _label(n))
            waiting = self._pending.get(key)
            if isinstance(waiting, _Text):
                waiting.notification = n  # the newest wins, keeping its place in the queue
                waiting.count += 1
                health.count("telegram.coalesced")
            else:
                self._pending[key] = _Text(n)
        self._wake.set()

    def _add_image(self, n: Notification) -> None:
        album = self._pending.get(self._open_album) if self._open_album is not None else None
        if isinstance(album, _Album) and len(album.items) < ALBUM_MAX:
            album.items.append(n)
            return
        self._open_album = ("album", next(self._seq))
        self._pending[self._open_album] = _Album(opened_at=self._clock(), items=[n])

    def pending(self) -> int:
        return len(self._pending)

    def abandon(self) -> int:
        """At shutdown: report every notification still queued as lost (never dropped silently)."""
        lost = 0
        for item in self._pending.values():
            for n in item.items if isinstance(item, _Album) else [item.notification]:
                self._lost(n)
                lost += 1
        self._pending.clear()
        return lost

    async def _next(self) -> _Text | _Album:
        while True:
            self._wake.clear()
            if self._pending:
                key, item = next(iter(self._pending.items()))
                wait = 0.0
                if isinstance(item, _Album) and len(item.items) < ALBUM_MAX:
                    wait = item.opened_at + self._album_window - self._clock()
                if wait <= 0:
                    del self._pending[key]
                    if key == self._open_album:
                        self._open_album = None
                    return item
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)  # more images may fill it sooner
            else:
                await self._wake.wait()

    # ---- sending ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Send forever. Only a bug ends this: the service then fails and the nanny exits the process."""
        while True:
            item = await self._next()
            try:
                await self._deliver(item)
            except asyncio.CancelledError:
                self._pending[("in flight", next(self._seq))] = item  # abandon() reports it
                raise
            except Exception:
                # One malformed notification must not stop the others; it is still reported as lost.
                log.exception("notification could not be processed")
                for n in item.items if isinstance(item, _Album) else [item.notification]:
                    self._lost(n)

    async def _deliver(self, item: _Text | _Album) -> None:
        tz = self._settings.user_tz
        chat = self._chat_id
        if isinstance(item, _Text):
            n = item.notification
            text = format_html(n, tz, item.count)
            result = await self._attempt(
                lambda: self._bot.send_message(chat, text, parse_mode=ParseMode.HTML), _label(n)
            )
            if result == "bad_request":
                # Markup Telegram refused: the same words without any formatting, once.
                plain = format_plain(n, tz, TEXT_MAX)
                result = await self._attempt(lambda: self._bot.send_message(chat, plain), _label(n))
            notifications = [n]
        else:
            notifications = item.items
            captions = [format_html(n, tz) for n in notifications]
            if len(notifications) == 1:
                image, caption = _image(notifications[0]), captions[0]
                result = await self._attempt(
                    lambda: self._bot.send_photo(chat, image, caption=caption, parse_mode=ParseMode.HTML),
                    _label(notifications[0]),
                )
            else:
                result = await self._attempt(
                    lambda: self._bot.send_media_group(
                        chat,
                        [
                            InputMediaPhoto(_image(n), caption=c, parse_mode=ParseMode.HTML)
                            for n, c in zip(notifications, captions, strict=True)
                        ],
                    ),
                    f"album of {len(notifications)}",
                )
            if result == "bad_request":
                # A rejected image: the alert still matters, so send its text once.
                log.warning("Telegram rejected the image(s); sending the text instead")
                text = "\n\n".join(captions)[:4000]
                result = await self._attempt(
                    lambda: self._bot.send_message(chat, text, parse_mode=ParseMode.HTML), "image text"
                )
        if result != "ok":
            await self._give_up(notifications)

    async def _pace(self) -> None:
        delay = self._last_send + self._settings.telegram_min_send_interval - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _attempt(self, call: Callable[[], Awaitable[object]], what: str) -> str:
        """Run one Bot API call with pacing and retries: 'ok', 'bad_request' or 'failed'."""
        retries = self._settings.telegram_send_retries
        failures = 0
        waits_429 = 0
        backoff = threads.Backoff(initial=self._backoff_initial, maximum=self._backoff_max)
        while True:
            await self._pace()
            try:
                await call()
            except RetryAfter as exc:
                self._last_send = self._clock()
                waits_429 += 1
                if waits_429 > MAX_RETRY_AFTER:
                    log.warning("Telegram kept asking to wait; giving up on %s", what)
                    return "failed"
                ra = exc.retry_after  # a timedelta (PTB_TIMEDELTA, below), or seconds if a user set it off
                seconds = ra.total_seconds() if isinstance(ra, timedelta) else float(ra)
                health.count("telegram.retries")
                health.set_state("telegram", "retrying", f"rate limited: retry after {seconds:g} s")
                log.warning("Telegram rate limit: waiting %g s before resending %s", seconds, what)
                # Telegram names the wait: it is taken as told, not paced by the backoff.
                await asyncio.sleep(seconds)
                continue
            except BadRequest as exc:  # a NetworkError subclass in PTB: must come before it
                self._last_send = self._clock()
                log.warning("Telegram refused %s: %s", what, exc.message)
                return "bad_request"
            except (TimedOut, NetworkError) as exc:
                self._last_send = self._clock()
                failures += 1
                if failures > retries:
                    log.warning("giving up on %s after %d attempts: %s", what, failures, exc)
                    return "failed"
                health.count("telegram.retries")
                health.set_state(
                    "telegram", "retrying", f"{type(exc).__name__}, attempt {failures}/{retries}"
                )
                delay = backoff.next_delay()
                log.warning(
                    "sending %s failed (%s); retry %d/%d in %g s", what, exc, failures, retries, delay
                )
                await asyncio.sleep(delay)
                continue
            except TelegramError as exc:
                # Forbidden, InvalidToken, ...: retrying will not help.
                self._last_send = self._clock()
                log.error("Telegram refused %s: %s", what, exc)
                return "failed"
            self._last_send = self._clock()
            health.count("telegram.sent")
            health.set_state("telegram", "ok")
            return "ok"

    async def _give_up(self, notifications: list[Notification]) -> None:
        for n in notifications:
            if self._sms is not None and n.text is None and self._settings.telegram_sms_fallback:
                try:
                    await asyncio.to_thread(
                        self._sms.send, n.sms_recipients, format_plain(n, self._settings.user_tz)
                    )
                except Exception as exc:  # noqa: BLE001 - any SNS failure leaves the alert lost, said below
                    log.error("SMS fallback failed for %s: %s", _label(n), exc)
                else:
                    log.warning("Telegram failed; %s sent by SMS", _label(n))
                    health.count("telegram.sms_fallback")
                    continue
            self._lost(n)

    def _lost(self, n: Notification) -> None:
        log.error("notification lost: %s", _label(n) if n.text is None else n.text[:80])
        health.count("telegram.lost")
        health.set_state("telegram", "down", f"notification lost: {_label(n)}")
