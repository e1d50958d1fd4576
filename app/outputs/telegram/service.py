"""The Telegram thread: its own event loop running PTB polling, the commands, and the notifier."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import zmq
from sqlalchemy.orm import Session, sessionmaker
from telegram.error import NetworkError, TelegramError, TimedOut
from telegram.ext import Application

from app.core import channels, health
from app.core.settings import Settings
from app.outputs.telegram.notifier import Notifier
from pylib import inproc, threads

if TYPE_CHECKING:
    from app.outputs.telegram.commands import CommandBot

log = logging.getLogger(__name__)
# Application[Any, ...]: python-telegram-bot's generics over context and user data we do not use.

POLL_TIMEOUT = 10  # getUpdates long-poll seconds; stopping interrupts it, so shutdown stays fast
RECEIVE_IDLE = 0.05  # seconds between looks at the inproc socket when it is empty

# httpx logs every request URL at INFO, and the URL holds the bot token; httpcore is as chatty.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class RedactToken(logging.Filter):
    """Replaces the bot token in a record's message (PTB logs its API URLs, token included, at DEBUG)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._token:
            return True
        message = record.getMessage()
        if self._token in message:
            record.msg = message.replace(self._token, "<token>")
            record.args = None
        return True


def protect_token(token: str) -> None:
    """Attach RedactToken to every PTB and HTTP client logger.

    A filter only sees records created on its own logger, not on child loggers, so it goes on
    each one; PTB creates its loggers at import, so all exist by now.
    """
    redact = RedactToken(token)
    names = [
        n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("telegram", "httpx", "httpcore")
    ]
    for name in {*names, "telegram", "telegram.Bot", "telegram.ext.ExtBot", "httpx", "httpcore"}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactToken) and f._token == token for f in logger.filters):
            logger.addFilter(redact)


class TelegramService(threads.AppThread):
    """Polls the Bot API for commands and sends the Notifications pushed to channels.NOTIFIER.

    If polling or the notifier stops before shutdown, work() raises so the nanny ends the
    process: alerts must never stop flowing quietly.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session] | None = None,
        notifier_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__("Telegram")
        self._settings = settings
        self._session_factory = session_factory
        self._notifier_options = notifier_options or {}
        # Bound now, before any producer connects, so nothing pushed at startup is lost.
        self._pull = inproc.bind_pull(channels.NOTIFIER)
        self.notifier: Notifier | None = None
        self.application: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._commands: CommandBot | None = None

    def work(self) -> None:
        health.set_state("telegram", "starting")
        try:
            asyncio.run(self._main())
        finally:
            self._pull.close(linger=0)
        if not threads.shutting_down.is_set():
            raise RuntimeError("Telegram service ended before shutdown")

    def _build(self) -> Application[Any, Any, Any, Any, Any, Any]:
        protect_token(self._settings.telegram_bot_token)  # before the Bot logs its URLs
        base_url = self._settings.telegram_api_base_url.rstrip("/")
        # https://api.telegram.org/bot -> https://api.telegram.org/file/bot (same for a local server)
        head, _, tail = base_url.rpartition("/")
        base_file_url = f"{head}/file/{tail}"
        app = (
            Application.builder()
            .token(self._settings.telegram_bot_token)
            .base_url(base_url)
            .base_file_url(base_file_url)
            .build()
        )
        if self._session_factory is not None:
            from app.outputs.telegram import commands  # imported here: it imports much of the hub

            self._commands = commands.register(app, self._settings, self._session_factory)
        else:  # the commands read and change the configuration: without a database, alerts only
            log.info("Telegram without a database: notifications only, no commands")
        return app

    async def _main(self) -> None:
        app = self._build()
        self.application = app
        self.notifier = Notifier(app.bot, self._settings, **self._notifier_options)
        if not await self._initialize(app):
            return  # shutdown came while Telegram was unreachable
        try:
            assert app.updater is not None
            await app.start()
            await app.updater.start_polling(timeout=POLL_TIMEOUT, error_callback=self._polling_error)
            health.set_state("telegram", "ok")
            log.info("Telegram bot polling; alerts go to chat %s", self._settings.telegram_chat_room)
            tasks = {
                asyncio.create_task(self.notifier.run(), name="notifier"),
                asyncio.create_task(self._receive(self.notifier), name="receiver"),
                asyncio.create_task(self._watch(app), name="watch"),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.notifier.abandon()
                if app.updater.running:
                    await app.updater.stop()
                if app.running:
                    await app.stop()
            for task in done:
                if task.get_name() == "watch" and threads.shutting_down.is_set():
                    continue
                error = task.exception()
                # A failed notifier must surface: re-raise so work() fails and the nanny sees it.
                if error is not None:
                    health.set_state("telegram", "down", f"{task.get_name()} failed: {error!r}")
                    raise RuntimeError(f"Telegram {task.get_name()} task failed") from error
                health.set_state("telegram", "down", f"{task.get_name()} stopped")
                raise RuntimeError(f"Telegram {task.get_name()} task stopped")
        finally:
            if self._commands is not None:
                await self._commands.close()  # cancels the commands' timers before the loop goes away
            await app.shutdown()  # closes the HTTP connection pools
        health.set_state("telegram", "stopped")

    async def _initialize(self, app: Application[Any, Any, Any, Any, Any, Any]) -> bool:
        """initialize() checks the token with getMe; retried while Telegram is unreachable.

        Telegram being down at boot must not stop the hub. A rejected token (InvalidToken) is a
        configuration error and raises.
        """
        backoff = threads.Backoff(initial=1.0, maximum=60.0)
        while not threads.shutting_down.is_set():
            try:
                await app.initialize()
                return True
            except (TimedOut, NetworkError) as exc:
                delay = backoff.next_delay()
                health.set_state("telegram", "retrying", f"getMe: {type(exc).__name__}")
                log.warning("Telegram unreachable (%s); retrying in %g s", type(exc).__name__, delay)
                # Backoff.pause() would block the event loop: the same wait, in a worker thread.
                await asyncio.to_thread(threads.shutting_down.wait, delay)
        return False

    def _polling_error(self, exc: TelegramError) -> None:
        # PTB keeps retrying on its own; this only reports it (the message never holds the token).
        health.set_state("telegram", "retrying", f"polling: {type(exc).__name__}: {exc}")
        log.warning("Telegram polling error: %s: %s", type(exc).__name__, exc)

    async def _receive(self, notifier: Notifier) -> None:
        """Move Notifications from the inproc socket into the notifier; never blocks the loop."""
        while True:
            got = False
            while self._pull.poll(0, zmq.POLLIN):
                got = True
                try:
                    msg = inproc.decode(self._pull.recv(zmq.NOBLOCK))
                except inproc.MessageError as exc:
                    log.error("undecodable notification dropped: %s", exc)
                    health.count("telegram.malformed")
                    continue
                if isinstance(msg, channels.Notification):
                    notifier.submit(msg)
                else:
                    log.error("unexpected %s on the notifier channel", type(msg).__name__)
                    health.count("telegram.malformed")
            if not got:
                await asyncio.sleep(RECEIVE_IDLE)

    async def _watch(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        """Return on shutdown, or when polling stopped by itself (then _main raises)."""
        assert app.updater is not None
        while not threads.shutting_down.is_set():
            if not app.updater.running or not app.running:
                log.error("Telegram polling stopped unexpectedly")
                return
            await asyncio.sleep(0.1)
