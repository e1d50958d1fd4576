"""Telegram bot commands: authorization, device switches with confirmation and timed re-enable, reports.

Over ~400 lines as one cohesive thing: the CommandBot's handlers share its state (confirmations
waiting) and plumbing (the gate, blocking calls, processor requests). What the words mean is in
command_args, the read-only answers in command_texts, the timed re-enables in reenables.
"""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import select
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ParseMode
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from app.core.channels import Reply
from app.core.settings import Settings
from app.engine import commands, config_changes
from app.engine.config_changes import ChangeError
from app.engine.presence import Presence
from app.engine.presence import presence as default_presence
from app.ops import remote_url
from app.outputs.telegram.command_args import (
    MAX_DURATION,
    Kind,
    Target,
    format_duration,
    match_inputs,
    match_outputs,
    names_list,
    parse_schedule_args,
    plural,
    split_args,
    terms_text,
)
from app.outputs.telegram.command_texts import (
    HELP,
    SessionFactory,
    report_text,
    schedule_text,
    status_text,
    why_text,
)
from app.outputs.telegram.reenables import CommandState, Pending, TimedReenables
from app.store import accounts, registry
from app.store.models import InputConfig, OutputConfig

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_T = TypeVar("_T")

CONFIRM_TTL = 120.0
CALLBACK_PREFIX = "cfm"
GROUP_CHATS = ("group", "supergroup")


# Any here: command args (checked by the processor), python-telegram-bot's keyword arguments and
# its generics over context and user data we do not use.


class CommandBot(TimedReenables):
    """The command handlers and their state (pending confirmations, timed re-enables), in the bot's loop."""

    def __init__(
        self,
        settings: Settings,
        session_factory: SessionFactory,
        presence: Presence,
        confirm_ttl: float = CONFIRM_TTL,
    ) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.presence = presence
        self.confirm_ttl = confirm_ttl
        self.state = CommandState()
        self._allowed = frozenset(settings.telegram_users)
        self._invite_link: str | None = None  # one link made by the bot, reused (never revokes another)

    # ---- plumbing ---------------------------------------------------------------------------

    async def _blocking(self, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        # Database reads and processor requests block; the bot's loop must keep polling meanwhile.
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(func, *args, **kwargs)
        )

    async def _request(self, action: str, args: dict[str, Any], user_id: int, note: str = "") -> Reply:
        actor = f"telegram:{user_id}{note}"
        reply: Reply = await self._blocking(commands.request, action, args, actor=actor)
        return reply

    @staticmethod
    async def _say(update: Update, text: str, **kwargs: Any) -> Message | None:
        message = update.effective_message
        if message is None:
            return None
        return await message.reply_text(text, parse_mode=ParseMode.HTML, **kwargs)

    @staticmethod
    def _user_id(update: Update) -> int:
        assert update.effective_user is not None  # the gate let only identified users through
        return update.effective_user.id

    async def gate(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """Group -1: stop every update not from an allowed user in an allowed chat."""
        user = update.effective_user
        chat = update.effective_chat
        user_id = user.id if user else None
        chat_id = chat.id if chat else None
        allowed = user_id is not None and user_id in self._allowed and chat is not None
        if allowed and chat is not None:
            if chat.type in GROUP_CHATS:
                allowed = chat.id == self.settings.telegram_chat_room
            else:
                allowed = chat.type == "private"
        if not allowed:
            # The text stays out of the log: it may hold anything a stranger chose to send.
            log.info("ignored a Telegram update from user %s in chat %s: not authorized", user_id, chat_id)
            raise ApplicationHandlerStop

    # ---- reads ------------------------------------------------------------------------------

    def _load_inputs(self) -> list[InputConfig]:
        with self.sessions() as session:
            rows = list(session.scalars(select(InputConfig)))
            session.expunge_all()
            return rows

    def _load_outputs(self) -> list[OutputConfig]:
        with self.sessions() as session:
            rows = list(session.scalars(select(OutputConfig)))
            session.expunge_all()
            return rows

    # ---- switching --------------------------------------------------------------------------

    async def _switch(
        self, targets: list[Target], enabled: bool, user_id: int, note: str = ""
    ) -> dict[Target, str]:
        """Set device_enabled on each target through the processor; returns the failures and why."""
        failures = {}
        for target in targets:
            action = "update_input" if target.kind == "input" else "update_output"
            reply = await self._request(
                action, {"id": target.id, "fields": {"device_enabled": enabled}}, user_id, note
            )
            if not reply.ok:
                failures[target] = reply.error or "failed"
        return failures

    async def _enable(self, update: Update, kind: Kind, terms: list[str]) -> None:
        user_id = self._user_id(update)
        if kind == "output" and not terms:
            await self._say(
                update,
                "Name the outputs, e.g. <code>/outputon siren</code>; /outputson is the global switch.",
            )
            return
        targets = await self._targets(kind, terms)
        if not targets:
            await self._say(update, self._nothing(kind, terms))
            return
        for target in targets:
            self._cancel_reenable(target)
        failures = await self._switch(targets, True, user_id)
        await self._say(update, self._result("Enabled", targets, failures))

    async def _targets(self, kind: Kind, terms: list[str]) -> list[Target]:
        if kind == "input":
            return match_inputs(await self._blocking(self._load_inputs), terms)
        return match_outputs(await self._blocking(self._load_outputs), terms)

    @staticmethod
    def _nothing(kind: Kind, terms: list[str]) -> str:
        if not terms:
            return "No input is auto-scheduled; name the inputs, e.g. <code>/inputoff garage</code>."
        return f"No {kind} matches <i>{terms_text(terms)}</i>."

    @staticmethod
    def _result(verb: str, targets: list[Target], failures: dict[Target, str]) -> str:
        done = [t for t in targets if t not in failures]
        text = f"{verb} {plural(len(done), targets[0].kind)}:\n{names_list(done)}" if done else ""
        if failures:
            errors = [f"• {html.escape(t.label)}: {html.escape(why)}" for t, why in failures.items()]
            text += ("\n\n" if text else "") + "Failed:\n" + "\n".join(errors)
        return text

    async def _ask(self, update: Update, pending: Pending, question: str) -> None:
        token = secrets.token_hex(8)
        keyboard = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton("Confirm", callback_data=f"{CALLBACK_PREFIX}:{token}:yes"),
                    InlineKeyboardButton("Cancel", callback_data=f"{CALLBACK_PREFIX}:{token}:no"),
                ]
            ]
        )
        self.state.pending[token] = pending
        pending.message = await self._say(update, question, reply_markup=keyboard)
        pending.expiry = asyncio.create_task(self._expire(token))

    async def _expire(self, token: str) -> None:
        await asyncio.sleep(self.confirm_ttl)
        pending = self.state.pending.pop(token, None)
        if pending is not None and pending.message is not None:
            await pending.message.edit_text("Not confirmed in time; nothing changed.")

    async def _disable(self, update: Update, kind: Kind, args: list[str]) -> None:
        user_id = self._user_id(update)
        terms, duration = split_args(args, allow_duration=True)
        if kind == "output" and not terms:
            await self._say(
                update,
                "Name the outputs, e.g. <code>/outputoff siren 30m</code>; "
                "/outputsoff switches every output off.",
            )
            return
        if duration is not None and duration > MAX_DURATION:
            await self._say(update, f"At most {format_duration(MAX_DURATION)}; use the dashboard for longer.")
            return
        targets = await self._targets(kind, terms)
        if not targets:
            await self._say(update, self._nothing(kind, terms))
            return
        until = f"\nThey will be re-enabled after {format_duration(duration)}." if duration else ""
        chat = update.effective_chat
        assert chat is not None
        await self._ask(
            update,
            Pending(user_id, chat.id, kind, targets, duration),
            f"Disable {plural(len(targets), kind)}?\n{names_list(targets)}{until}",
        )

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None and query.data is not None
        _, token, answer = (query.data.split(":") + ["", ""])[:3]
        pending = self.state.pending.get(token)
        if pending is None:
            await query.answer("This confirmation has expired or was already answered.", show_alert=True)
            return
        if query.from_user.id != pending.user_id:
            await query.answer("Only the person who asked can confirm this.", show_alert=True)
            return
        del self.state.pending[token]
        if pending.expiry is not None:
            pending.expiry.cancel()
        if answer != "yes":
            await query.answer("Cancelled")
            await query.edit_message_text("Cancelled; nothing changed.")
            return
        await query.answer("Working on it")
        if pending.kind == "outputs":
            reply = await self._request("set_outputs_enabled", {"enabled": False}, pending.user_id)
            text = (
                "Outputs are off: events are logged, no output fires until /outputson."
                if reply.ok
                else f"Could not switch outputs off: {html.escape(reply.error or 'failed')}"
            )
            await query.edit_message_text(text, parse_mode=ParseMode.HTML)
            return
        for target in pending.targets:
            self._cancel_reenable(target)
        failures = await self._switch(pending.targets, False, pending.user_id)
        text = self._result("Disabled", pending.targets, failures)
        if pending.duration:
            for target in pending.targets:
                if target in failures:
                    continue
                key = (target.kind, target.id)
                stored = {
                    "due": time.time() + pending.duration,
                    "duration": pending.duration,
                    "user_id": pending.user_id,
                    "chat_id": pending.chat_id,
                    "key": target.key,
                    "label": target.label,
                }
                await self._blocking(self._store_reenable, target, stored)
                self.state.reenables[key] = asyncio.create_task(
                    self._reenable_later(pending, target, context.bot)
                )
            text += f"\nRe-enabling after {format_duration(pending.duration)}."
        await query.edit_message_text(text, parse_mode=ParseMode.HTML)

    # ---- command handlers -------------------------------------------------------------------

    async def inputon(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._enable(update, "input", list(context.args or []))

    async def inputoff(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._disable(update, "input", list(context.args or []))

    async def outputon(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._enable(update, "output", list(context.args or []))

    async def outputoff(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._disable(update, "output", list(context.args or []))

    async def outputson(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        reply = await self._request("set_outputs_enabled", {"enabled": True}, self._user_id(update))
        if reply.ok:
            await self._say(update, "Outputs enabled.")
        else:
            await self._say(update, f"Could not enable outputs: {html.escape(reply.error or 'failed')}")

    async def outputsoff(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        chat = update.effective_chat
        assert chat is not None
        await self._ask(
            update,
            Pending(self._user_id(update), chat.id, "outputs", [], None),
            "Switch <b>every</b> output off? Events are still logged; /outputson switches them back on.",
        )

    async def report(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        reply = await self._request("fire_input", {"device_key": registry.DASH_BUTTON}, self._user_id(update))
        await self._say(update, report_text(reply))

    def _status_text(self) -> str:
        return status_text(self.settings, self.sessions, self.presence)

    async def status(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._say(update, await self._blocking(self._status_text))

    async def _room_invite(self, bot: Bot) -> tuple[str | None, str | None]:
        """The chat room's title and an invite link: its own, or one the bot may make (made once)."""
        room = self.settings.telegram_chat_room
        if room is None:  # not with a bot token: Settings require the room then
            return None, None
        try:
            chat = await bot.get_chat(room)
        except TelegramError as exc:
            log.warning("could not read the chat room %s: %s", room, exc)
            return None, None
        title = chat.title or chat.full_name or str(room)
        link = chat.invite_link or self._invite_link
        if link is None:
            try:
                # A link of its own: exporting the primary link instead would revoke the one people have.
                invite = await bot.create_chat_invite_link(room, name="event-processor")
            except TelegramError as exc:
                log.info("no invite link for the chat room (the bot may not make one): %s", exc)
            else:
                link = self._invite_link = invite.invite_link
        return title, link

    async def chat(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Plain text, as the original answered it: the bot's group, its invite link, the dashboard."""
        title, link = await self._room_invite(context.bot)
        lines = []
        if title is not None:
            name = html.escape(title)
            if link:
                lines.append(f'I am in the <a href="{html.escape(link, quote=True)}">{name}</a> group.')
            else:
                lines.append(f"I am in the <b>{name}</b> group.")
        url = remote_url.dashboard_url(self.settings)
        if url:
            lines.append(f'<a href="{html.escape(url, quote=True)}">Dashboard</a>')
        if not lines:
            lines.append("Send /help for the commands.")
        await self._say(update, "\n".join(lines))

    async def why(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        terms = list(context.args or [])
        if not terms:
            await self._say(update, "Name the input, e.g. <code>/why front door</code>.")
            return
        await self._say(update, await self._blocking(why_text, self.settings, self.sessions, terms))

    # ---- schedules ----------------------------------------------------------------------------

    async def _schedule_targets(self, terms: list[str]) -> list[Target]:
        if not terms:
            # No names: every scheduled device, inputs (without the built-in buttons) and outputs.
            inputs = match_inputs(await self._blocking(self._load_inputs), [])
            outputs = [
                Target(
                    "output",
                    r.id,
                    r.device_key,
                    r.device_label or r.device_key,
                    r.device_enabled is not False,
                )
                for r in await self._blocking(self._load_outputs)
                if r.auto_schedule
            ]
            return [*inputs, *sorted(outputs, key=lambda t: t.label.casefold())]
        return [*await self._targets("input", terms), *await self._targets("output", terms)]

    async def schedule(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user_id = self._user_id(update)
        terms, what, times = parse_schedule_args(list(context.args or []))
        if what != "show" and not terms:
            await self._say(update, "Name the devices, e.g. <code>/schedule garage 07:00 22:00</code>.")
            return
        args: dict[str, Any] = {"auto_schedule": False}
        if what == "set":
            if len(times) != 2:
                await self._say(
                    update,
                    "Give the enable and the disable time, e.g. <code>/schedule garage 07:00 22:00</code>.",
                )
                return
            # Checked before any device is touched, so a typo never half-applies to the matches.
            try:
                enable = config_changes.validate_time(times[0], "enable")
                disable = config_changes.validate_time(times[1], "disable")
                config_changes.validate_schedule(True, enable, disable)
            except ChangeError as exc:
                await self._say(update, f"Not changed: {html.escape(str(exc))}")
                return
            # Times typed in the chat are the hub's local time, so a row kept in UTC moves to USER_TZ.
            args = {"auto_schedule": True, "enable": enable, "disable": disable, "schedule_tz": None}
        targets = await self._schedule_targets(terms)
        if not targets:
            if terms:
                await self._say(update, f"No input or output matches <i>{terms_text(terms)}</i>.")
            else:
                await self._say(
                    update, "No device has a daily schedule; e.g. <code>/schedule garage 07:00 22:00</code>."
                )
            return
        if what == "show":
            await self._say(
                update,
                await self._blocking(
                    schedule_text, self.settings, self.sessions, targets, "<b>Schedules</b>"
                ),
            )
            return
        failures: dict[Target, str] = {}
        for target in targets:
            reply = await self._request(
                "set_schedule", {"kind": target.kind, "id": target.id, **args}, user_id
            )
            if not reply.ok:
                failures[target] = reply.error or "failed"
        done = [t for t in targets if t not in failures]
        heading = (
            f"Daily schedule {args['enable']}–{args['disable']} set:"
            if what == "set"
            else "Daily schedule off:"
        )
        text = (
            await self._blocking(schedule_text, self.settings, self.sessions, done, heading) if done else ""
        )
        if failures:
            errors = [f"• {html.escape(t.label)}: {html.escape(why)}" for t, why in failures.items()]
            text += ("\n\n" if text else "") + "Failed:\n" + "\n".join(errors)
        await self._say(update, text)

    def _unlock_code(self) -> str:
        with self.sessions() as session:
            return accounts.issue_unlock_code(session, self.settings.admin_user)

    async def unlock(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """The owner's way into the dashboard while someone else's failed logins delay it."""
        chat = update.effective_chat
        if chat is None or chat.type != "private":
            # A code posted in the group would be everyone's: it goes to a private chat only.
            await self._say(update, "Send /unlock to me in a private chat.")
            return
        try:
            code = await self._blocking(self._unlock_code)
        except accounts.AccountError as exc:
            await self._say(update, html.escape(str(exc)))
            return
        log.info(
            "dashboard unlock code for %r issued to Telegram user %s",
            self.settings.admin_user,
            self._user_id(update),
        )
        minutes = accounts.UNLOCK_SECONDS // 60
        await self._say(
            update,
            f"Unlock code for <b>{html.escape(self.settings.admin_user)}</b>: <code>{code}</code>\n"
            f"Valid {minutes} minutes, once: on the login page open “Have an unlock code?” and enter it "
            "with your password.",
        )

    async def help(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._say(update, HELP)

    async def close(self) -> None:
        """Cancel timers and confirmations; pending re-enables stay in rule_state for the next start."""
        for task in [
            *self.state.reenables.values(),
            *(p.expiry for p in self.state.pending.values() if p.expiry),
        ]:
            task.cancel()
        self.state.reenables.clear()
        self.state.pending.clear()


def register(
    application: Application[Any, Any, Any, Any, Any, Any],
    settings: Settings,
    session_factory: SessionFactory,
    presence: Presence = default_presence,
    confirm_ttl: float = CONFIRM_TTL,
) -> CommandBot:
    """Add the command handlers to a PTB Application; returns the CommandBot (call its close() on stop).

    Pending timed re-enables are kept in rule_state and re-armed here when called in a running loop.
    """
    bot = CommandBot(settings, session_factory, presence, confirm_ttl)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        log.warning("register() called outside the bot's event loop: pending re-enables not resumed")
    else:
        bot.resume_reenables(application.bot)
    application.add_handler(TypeHandler(Update, bot.gate), group=-1)
    # Only new messages: re-running a command because its message was edited would repeat the change.
    new_messages = filters.UpdateType.MESSAGE
    handlers: dict[str, Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]] = {
        "inputon": bot.inputon,
        "inputoff": bot.inputoff,
        "outputon": bot.outputon,
        "outputoff": bot.outputoff,
        "outputson": bot.outputson,
        "outputsoff": bot.outputsoff,
        "report": bot.report,
        "status": bot.status,
        "why": bot.why,
        "schedule": bot.schedule,
        "unlock": bot.unlock,
        "help": bot.help,
        "start": bot.help,
    }
    for name, callback in handlers.items():
        application.add_handler(CommandHandler(name, callback, filters=new_messages))
    application.add_handler(CallbackQueryHandler(bot.on_button, pattern=rf"^{CALLBACK_PREFIX}:"))
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND & new_messages, bot.chat))
    # Last in the group, so it only sees commands no handler above took.
    application.add_handler(MessageHandler(filters.COMMAND & new_messages, bot.help))
    application.bot_data["commands"] = bot
    return bot
