"""Telegram bot commands: authorization, device switches with confirmation and timed re-enable, reports."""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pytz
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
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

from app import (
    accounts,
    backup_status,
    commands,
    config_changes,
    health,
    history,
    registry,
    remote_url,
    roles,
    rule_state,
)
from app.channels import Reply
from app.config_changes import ChangeError, outputs_enabled, shown_value
from app.models import Decision, InputConfig, OutputConfig
from app.presence import Presence
from app.presence import presence as default_presence
from app.scheduler import next_transition, zone_of
from app.settings import Settings
from app.web.api import _seen
from app.web.context import WebContext

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]
SessionFactory = Callable[[], Session]
BUILTIN_INPUTS = frozenset({registry.PANIC_BUTTON, registry.DASH_BUTTON})
BROKERS = ("rabbitmq_source", "control_publisher", "mqtt")
CONFIRM_TTL = 120.0
MAX_DURATION = 7 * 86400  # a week: longer "temporary" changes are better made on the dashboard
WHY_LIMIT = 5
CALLBACK_PREFIX = "cfm"
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.IGNORECASE)
GROUP_CHATS = ("group", "supergroup")
REENABLE_PREFIX = rule_state.REENABLE_PREFIX

HELP = (
    "<b>Commands</b>\n"
    "/inputon [names] – enable inputs (no names: the auto-scheduled ones)\n"
    "/inputoff [names] [30m] – disable inputs, optionally for a while\n"
    "/outputon &lt;names&gt; – enable outputs\n"
    "/outputoff &lt;names&gt; [2h] – disable outputs, optionally for a while\n"
    "/outputson, /outputsoff – the global outputs switch\n"
    "/report – fire the Dash Button\n"
    "/status – brokers, devices, switches\n"
    "/why &lt;input&gt; – its last decisions and configuration changes\n"
    "/schedule &lt;names&gt; [HH:MM HH:MM | off] – show, set (enable, disable time) or stop daily schedules\n"
    "/unlock – in a private chat: a one-time code that lets you log in to the dashboard past the delays"
)


@dataclass(frozen=True)
class Target:
    """One device a command acts on."""

    kind: Kind
    id: int
    key: str
    label: str
    enabled: bool


@dataclass
class Pending:
    """A disabling command waiting for its Confirm or Cancel button."""

    user_id: int
    chat_id: int
    kind: Kind | Literal["outputs"]
    targets: list[Target]
    duration: int | None
    message: Message | None = None
    expiry: asyncio.Task[None] | None = None


@dataclass
class _State:
    pending: dict[str, Pending] = field(default_factory=dict)
    # (kind, id) -> the task that re-enables the device after a timed /inputoff or /outputoff
    reenables: dict[tuple[Kind, int], asyncio.Task[None]] = field(default_factory=dict)


# ---- pure helpers -------------------------------------------------------------------------------


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


def _matches(term: str, *values: str | None) -> bool:
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
            hit = any(_matches(t, row.device_key, row.device_label) for t in terms)
        else:
            hit = any(_matches(t, row.device_key, row.device_label, row.group_name) for t in terms)
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
        if any(_matches(t, row.device_key, row.device_label) for t in terms)
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


def _names(targets: list[Target]) -> str:
    return "\n".join(f"• {html.escape(t.label)}" for t in targets)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _terms_text(terms: list[str]) -> str:
    return html.escape(" ".join(terms))


# ---- the bot --------------------------------------------------------------------------------------


class CommandBot:
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
        self.state = _State()
        self._allowed = frozenset(settings.telegram_users)
        self._invite_link: str | None = None  # one link made by the bot, reused (never revokes another)

    # ---- plumbing ---------------------------------------------------------------------------

    async def _blocking(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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

    def _cancel_reenable(self, target: Target) -> None:
        task = self.state.reenables.pop((target.kind, target.id), None)
        if task is not None:
            task.cancel()
            self._store_reenable(target, None)
            log.info("pending re-enable of %s %r cancelled by a later change", target.kind, target.key)

    def _store_reenable(self, target: Target, value: dict[str, Any] | None) -> None:
        """Keep (or, with None, drop) a pending re-enable in rule_state; a failure is logged, not raised."""
        try:
            with self.sessions() as session:
                rule_state.save(session, {rule_state.reenable_key(target.kind, target.id): value})
                session.commit()
        except Exception:
            log.warning("could not store the re-enable of %s %r", target.kind, target.key, exc_info=True)

    def _reenable_still_due(self, target: Target) -> bool:
        """False when another change (dashboard, API, schedule, SQS) dropped the stored promise."""
        key = rule_state.reenable_key(target.kind, target.id)
        try:
            with self.sessions() as session:
                return key in rule_state.load(session, key)
        except SQLAlchemyError:
            log.warning("could not check the re-enable of %s %r; re-enabling", target.kind, target.key)
            return True

    def resume_reenables(self, bot: Any) -> None:
        """Re-arm the timed re-enables a previous run left in rule_state (call inside the bot's loop)."""
        try:
            with self.sessions() as session:
                stored = rule_state.load(session, REENABLE_PREFIX)
        except Exception:
            log.warning("could not load pending re-enables", exc_info=True)
            return
        for key, value in stored.items():
            try:
                kind, ident = key.removeprefix(REENABLE_PREFIX).split(":")
                target = Target(kind, int(ident), value["key"], value["label"], False)  # type: ignore[arg-type]
                pending = Pending(
                    int(value["user_id"]),
                    int(value["chat_id"]),
                    target.kind,
                    [target],
                    int(value["duration"]),
                )
                delay = max(0.0, float(value["due"]) - time.time())
            except (KeyError, TypeError, ValueError):
                log.warning("rule_state %r is not a re-enable; ignoring it", key)
                continue
            self.state.reenables[(target.kind, target.id)] = asyncio.create_task(
                self._reenable_later(pending, target, bot, delay)
            )
            log.info("re-enable of %s %r resumed: due in %.0f s", target.kind, target.key, delay)

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
        return f"No {kind} matches <i>{_terms_text(terms)}</i>."

    @staticmethod
    def _result(verb: str, targets: list[Target], failures: dict[Target, str]) -> str:
        done = [t for t in targets if t not in failures]
        text = f"{verb} {_plural(len(done), targets[0].kind)}:\n{_names(done)}" if done else ""
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
            f"Disable {_plural(len(targets), kind)}?\n{_names(targets)}{until}",
        )

    async def _reenable_later(
        self, pending: Pending, target: Target, bot: Any, delay: float | None = None
    ) -> None:
        assert pending.duration is not None
        await asyncio.sleep(pending.duration if delay is None else delay)
        if self.state.reenables.get((target.kind, target.id)) is not asyncio.current_task():
            return
        del self.state.reenables[(target.kind, target.id)]
        if not await self._blocking(self._reenable_still_due, target):
            log.info("re-enable of %s %r dropped: the device was switched since", target.kind, target.key)
            text = f"Not re-enabling {html.escape(target.label)}: it was switched on or off since."
            await bot.send_message(pending.chat_id, text, parse_mode=ParseMode.HTML)
            return
        note = f" (re-enable after {format_duration(pending.duration)})"
        failures = await self._switch([target], True, pending.user_id, note)
        await self._blocking(self._store_reenable, target, None)
        if failures:
            text = f"Could not re-enable {html.escape(target.label)}: {html.escape(failures[target])}"
        else:
            text = f"Re-enabled after {format_duration(pending.duration)}: {html.escape(target.label)}"
        await bot.send_message(pending.chat_id, text, parse_mode=ParseMode.HTML)

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
        await self._say(update, self._report_text(reply))

    @staticmethod
    def _report_text(reply: Reply) -> str:
        if not reply.ok:
            return f"Dash Button not fired: {html.escape(reply.error or 'failed')}"
        result = reply.result or {}
        if not result.get("fired"):
            why = result.get("detail") or result.get("reason") or "blocked"
            return f"Dash Button did not fire: {html.escape(str(why))}"
        lines = ["Dash Button fired."]
        for out in result.get("outputs", []):
            label = html.escape(str(out.get("output_label") or out.get("output_key")))
            if out.get("fired"):
                lines.append(f"✅ {label}")
            else:
                why = out.get("detail") or out.get("reason") or "not fired"
                lines.append(f"❌ {label}: {html.escape(str(why))}")
        if len(lines) == 1:
            lines.append("No outputs are linked to it.")
        return "\n".join(lines)

    def _status_text(self) -> str:
        lines = ["<b>Status</b>", "<b>Brokers</b>"]
        components = health.components()
        for name in BROKERS:
            comp = components.get(name)
            state = comp["state"] if comp else "not running"
            if name == "mqtt" and not self.settings.mqtt_enabled:
                state = "off (no MQTT_SERVER_ADDRESS)"
            detail = f" ({comp['detail']})" if comp and comp.get("detail") else ""
            lines.append(f"{html.escape(name)}: {html.escape(state + detail)}")
        ctx = WebContext(self.settings, self.sessions, self.presence)
        now = time.time()
        with self.sessions() as session:
            inputs = list(session.scalars(select(InputConfig)))
            outputs = list(session.scalars(select(OutputConfig)))
            switch = outputs_enabled(session)
            offline = [
                row.device_label or row.device_key
                for row in [*inputs, *outputs]
                if not _seen(ctx, row, now)[1]
            ]
            inputs_on = sum(1 for row in inputs if row.device_enabled)
            outputs_on = sum(1 for row in outputs if row.device_enabled is not False)
        total = len(inputs) + len(outputs)
        lines.append(f"<b>Devices</b>: {total - len(offline)} online, {len(offline)} offline")
        if offline:
            lines.append("Offline: " + ", ".join(html.escape(label) for label in sorted(set(offline))))
        lines.append(f"Inputs enabled: {inputs_on} of {len(inputs)}")
        lines.append(f"Outputs enabled: {outputs_on} of {len(outputs)}")
        lines.append(f"Outputs switch: {'on' if switch else 'off (log only)'}")
        saved = backup_status.read_status(self.settings)
        line = f"Last backup: {backup_status.summary_text(saved)}"
        if saved.error:
            line += f" ({html.escape(saved.error[:200])})"  # an integrity report can run long
        lines.append(line)
        if saved.state != "not configured":
            lines.append(f"Restore drill: {backup_status.drill_text(saved)}")
        if self.settings.ha_enabled:  # a standby pair: both hubs, which is active and since when
            tz = pytz.timezone(self.settings.user_tz)
            fmt = lambda ts: datetime.fromtimestamp(ts, tz).strftime("%d %b %H:%M")  # noqa: E731
            lines.append("<b>Hubs</b>")
            lines += [html.escape(line) for line in roles.status_lines(self.sessions, self.settings, fmt)]
        return "\n".join(lines)

    async def status(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._say(update, await self._blocking(self._status_text))

    def _why_text(self, terms: list[str]) -> str:
        with self.sessions() as session:
            rows = list(session.scalars(select(InputConfig)))
            exact = [
                r
                for r in rows
                if " ".join(terms).casefold() in (r.device_key.casefold(), (r.device_label or "").casefold())
            ]
            found = exact or [
                r for r in rows if all(_matches(t, r.device_key, r.device_label, r.group_name) for t in terms)
            ]
            if not found:
                return f"No input matches <i>{_terms_text(terms)}</i>."
            if len(found) > 1:
                names = ", ".join(html.escape(r.device_label or r.device_key) for r in found[:10])
                return f"Which one? {names}"
            row = found[0]
            decisions = list(
                session.scalars(
                    select(Decision)
                    .where(Decision.input_device_id == row.id)
                    .order_by(Decision.timestamp.desc(), Decision.id.desc())
                    .limit(WHY_LIMIT)
                    .options(selectinload(Decision.outputs))
                )
            )
            label = html.escape(row.device_label or row.device_key)
            tz = pytz.timezone(self.settings.user_tz)
            changes = self._changes_text(session, row.id, tz)
            if not decisions:
                return f"<b>{label}</b>: no decisions recorded.{changes}"
            lines = [f"<b>{label}</b>: last {_plural(len(decisions), 'decision')}"]
            for d in decisions:
                when = d.timestamp.replace(tzinfo=UTC).astimezone(tz).strftime("%d %b %H:%M:%S")
                event = f" {html.escape(d.event_detail)}" if d.event_detail else ""
                if d.fired:
                    verdict = "fired"
                else:
                    verdict = "blocked: " + html.escape(
                        ", ".join(x for x in (d.reason, d.detail) if x) or "?"
                    )
                lines.append(f"\n<b>{when}</b>{event} – {verdict}")
                if d.fired and d.detail:
                    lines.append(html.escape(d.detail))
                for out in d.outputs:
                    name = html.escape(out.output_label or out.output_key)
                    if out.fired:
                        lines.append(f"  ✅ {name}")
                    else:
                        why = ", ".join(x for x in (out.reason, out.detail) if x) or "not fired"
                        lines.append(f"  ❌ {name}: {html.escape(why)}")
            return "\n".join(lines) + changes

    @staticmethod
    def _changes_text(session: Session, input_id: int, tz: Any) -> str:
        """The input's last configuration changes: when, who, and each field before and after."""
        rows = history.recent_changes(session, history.INPUT_CHANGE_KINDS, input_id, WHY_LIMIT)
        if not rows:
            return ""
        lines = [f"\n\n<b>Last {_plural(len(rows), 'change')}</b>"]
        for change in rows:
            when = change.timestamp.replace(tzinfo=UTC).astimezone(tz).strftime("%d %b %H:%M:%S")
            before, after = history.values(change.before), history.values(change.after)
            fields = "; ".join(
                f"{name} {shown_value(before.get(name))} → {shown_value(value)}"
                for name, value in sorted(after.items())
            )
            lines.append(f"<b>{when}</b> by {html.escape(change.actor)}: {html.escape(fields)}")
        return "\n".join(lines)

    async def _room_invite(self, bot: Any) -> tuple[str | None, str | None]:
        """The chat room's title and an invite link: its own, or one the bot may make (made once)."""
        room = self.settings.telegram_chat_room
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
        await self._say(update, await self._blocking(self._why_text, terms))

    # ---- schedules ----------------------------------------------------------------------------

    def _schedule_text(self, targets: list[Target], heading: str) -> str:
        """Each target's stored schedule and next transition, read fresh after any change."""
        tz = pytz.timezone(self.settings.user_tz)
        now = datetime.now(tz)
        lines = [heading]
        with self.sessions() as session:
            for target in targets:
                model = InputConfig if target.kind == "input" else OutputConfig
                row = session.get(model, target.id)
                if row is None:
                    continue
                name = f"• <b>{html.escape(target.label)}</b> ({target.kind})"
                enable, disable = row.auto_schedule_enable, row.auto_schedule_disable
                times = f"{html.escape(enable or '–')}–{html.escape(disable or '–')}"
                if row.auto_schedule_tz and row.auto_schedule_tz != self.settings.user_tz:
                    # The original's rows keep UTC until converted on the schedule page.
                    times += f" {html.escape(row.auto_schedule_tz)}"
                if not row.auto_schedule:
                    stored = f" (stored {times})" if enable or disable else ""
                    lines.append(f"{name}: no daily schedule{stored}")
                    continue
                zone = zone_of(row.auto_schedule_tz, tz)
                upcoming = next_transition(enable, disable, zone, now) if zone is not None else None
                if upcoming is None:
                    # An original database's "7:00" or "": the scheduler skips it until it is re-saved.
                    lines.append(f"{name}: daily {times}, stored times invalid, not scheduled")
                    continue
                when, enabled = upcoming
                edge = "enable" if enabled else "disable"
                lines.append(f"{name}: daily {times}, next: {edge} at {when.strftime('%a %d %b %H:%M %Z')}")
            if not config_changes.scheduler_enabled(session):
                lines.append("\nThe auto-scheduler is <b>off</b>: scheduled changes are skipped.")
        return "\n".join(lines)

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
                await self._say(update, f"No input or output matches <i>{_terms_text(terms)}</i>.")
            else:
                await self._say(
                    update, "No device has a daily schedule; e.g. <code>/schedule garage 07:00 22:00</code>."
                )
            return
        if what == "show":
            await self._say(update, await self._blocking(self._schedule_text, targets, "<b>Schedules</b>"))
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
        text = await self._blocking(self._schedule_text, done, heading) if done else ""
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
    handlers: dict[str, Callable[[Update, Any], Awaitable[None]]] = {
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
