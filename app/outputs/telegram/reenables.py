"""Timed re-enables (`/inputoff garage 30m`): a task in the bot's loop, the promise kept in rule_state."""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from telegram import Bot, Message
from telegram.constants import ParseMode

from app.outputs.telegram.command_args import Kind, Target, format_duration
from app.outputs.telegram.command_texts import SessionFactory
from app.store import rule_state

log = logging.getLogger("app.outputs.telegram.commands")  # the bot's one logger, whichever module speaks
_P = ParamSpec("_P")
_KINDS: dict[str, Kind] = {"input": "input", "output": "output"}  # a stored kind, checked
_T = TypeVar("_T")

REENABLE_PREFIX = rule_state.REENABLE_PREFIX


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
class CommandState:
    """What the CommandBot keeps between updates: confirmations waiting, re-enables due."""

    pending: dict[str, Pending] = field(default_factory=dict)
    # (kind, id) -> the task that re-enables the device after a timed /inputoff or /outputoff
    reenables: dict[tuple[Kind, int], asyncio.Task[None]] = field(default_factory=dict)


class TimedReenables:
    """The CommandBot's timed re-enables; a mixin, as they share the bot's sessions, state and switch."""

    sessions: SessionFactory
    state: CommandState

    async def _blocking(self, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        raise NotImplementedError  # the CommandBot's: run blocking work off the bot's loop

    async def _switch(
        self, targets: list[Target], enabled: bool, user_id: int, note: str = ""
    ) -> dict[Target, str]:
        raise NotImplementedError  # the CommandBot's: set device_enabled through the processor

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

    def resume_reenables(self, bot: Bot) -> None:
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
                target = Target(_KINDS[kind], int(ident), value["key"], value["label"], False)
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

    async def _reenable_later(
        self, pending: Pending, target: Target, bot: Bot, delay: float | None = None
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
