"""Telegram commands end to end: a real PTB Application against the Bot API stand-in and a running hub."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update
from telegram.ext import Application

from app.core.settings import Settings
from app.engine.config_changes import outputs_enabled
from app.engine.presence import presence
from app.ops import remote_url
from app.outputs.telegram import command_args
from app.outputs.telegram import commands as tgc
from app.store import registry, rule_state
from app.store.models import InputConfig, OutputConfig
from tests.hubtools import Api, Device, start_hub
from tests.serving import Serving
from tests.support import free_port, wait_for
from tests.telegram_standin import Call, TelegramStandIn

TOKEN = "123456:TEST-token"
ALICE, BOB, MALLORY = 111, 222, 999
ROOM, OTHER_ROOM = -100500, -100777
GARAGE, BACK, BUZZER = "Garage Door (Garage)", "Back Door Contact (Kitchen)", "Hallway Buzzer"
HEARTBEAT = {
    "device_info": {
        "inputs": [
            {"type": "Contact", "location": "Garage", "device_key": GARAGE, "device_label": "Garage Door"},
            {"type": "Contact", "location": "Kitchen", "device_key": BACK, "device_label": "Back <Door>"},
        ],
        "outputs": [{"type": "Buzzer", "location": "Hallway", "device_key": BUZZER}],
    }
}
COMMANDS = [
    "/inputon",
    "/inputoff garage",
    "/outputon buzzer",
    "/outputoff buzzer",
    "/outputson",
    "/outputsoff",
    "/report",
    "/status",
    "/why garage",
    "/schedule garage 07:00 22:00",
    "/unlock",
    "/nonsense",
]


# ---- pure helpers ---------------------------------------------------------------------------------


def test_parse_duration() -> None:
    assert command_args.parse_duration("30m") == 1800
    assert command_args.parse_duration("2h") == 7200
    assert command_args.parse_duration("90s") == 90
    assert command_args.parse_duration("1h30m") == 5400
    assert command_args.parse_duration("1D") == 86400
    for text in ("", "garage", "30", "m", "0s", "1m1h"):
        assert command_args.parse_duration(text) is None, text
    assert command_args.format_duration(5400) == "1h30m"
    assert command_args.split_args(["garage", "30m"], True) == (["garage"], 1800)
    assert command_args.split_args(["garage", "30m"], False) == (["garage", "30m"], None)
    assert command_args.split_args(["2h"], True) == ([], 7200)


def _input(i: int, key: str, label: str | None = None, **kw: Any) -> InputConfig:
    return InputConfig(id=i, device_key=key, device_type="x", device_label=label, **kw)


def test_match_inputs_terms_wildcard_and_builtins() -> None:
    rows = [
        _input(1, "Garage Door (Garage)", "Garage Door", group_name="outside", device_enabled=True),
        _input(2, "Back Door", None, group_name="Inside", auto_schedule=True),
        _input(3, "Hall PIR", "Hall motion", auto_schedule=False),
        _input(4, registry.PANIC_BUTTON, "Panic Button", group_name="inside", auto_schedule=True),
        _input(5, registry.DASH_BUTTON, "Dash Button"),
    ]

    def keys(terms: list[str]) -> list[str]:
        return [t.key for t in command_args.match_inputs(rows, terms)]

    assert keys(["GARAGE"]) == ["Garage Door (Garage)"]
    assert keys(["door"]) == ["Back Door", "Garage Door (Garage)"]
    # group names match, but never pull in a built-in button
    assert keys(["inside"]) == ["Back Door"]
    # no terms: auto-scheduled inputs only, and not the panic button even if flagged
    assert keys([]) == ["Back Door"]
    assert keys(["panic"]) == [registry.PANIC_BUTTON]
    assert keys(["button"]) == [registry.DASH_BUTTON, registry.PANIC_BUTTON]
    garage = command_args.match_inputs(rows, ["garage"])[0]
    assert garage.enabled is True and garage.label == "Garage Door"
    assert command_args.match_inputs(rows, ["back"])[0].enabled is False  # NULL flag is off for inputs


def test_match_outputs() -> None:
    rows = [
        OutputConfig(id=1, device_key="Hallway Buzzer", device_type="Buzzer"),
        OutputConfig(id=2, device_key="SMS", device_type="sms", device_label="Text me", device_enabled=False),
    ]
    found = command_args.match_outputs(rows, ["buzz"])
    assert [(t.key, t.enabled) for t in found] == [("Hallway Buzzer", True)]  # NULL flag is on
    assert [t.key for t in command_args.match_outputs(rows, ["text"])] == ["SMS"]
    assert command_args.match_outputs(rows, []) == []


# ---- end to end -------------------------------------------------------------------------------------


class BotThread:
    """Our own PTB Application polling the stand-in, in a thread with its own event loop."""

    def __init__(
        self, standin: TelegramStandIn, settings: Settings, sessions: Any, confirm_ttl: float
    ) -> None:
        self.standin = standin
        self.settings = settings
        self.sessions = sessions
        self.confirm_ttl = confirm_ttl
        self.loop = asyncio.new_event_loop()
        self.commands: tgc.CommandBot | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="TestTelegramBot", daemon=True)

    def start(self) -> BotThread:
        self._thread.start()
        assert self._ready.wait(20), "the bot did not start"
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to the test in start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        application = Application.builder().token(TOKEN).base_url(self.standin.base_url).build()
        self.commands = tgc.register(application, self.settings, self.sessions, presence, self.confirm_ttl)
        await application.initialize()
        assert application.updater is not None
        await application.updater.start_polling(poll_interval=0, timeout=1)
        await application.start()
        self._ready.set()
        await self._stop.wait()
        await application.updater.stop()
        await application.stop()
        await self.commands.close()
        await application.shutdown()

    def stop(self) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=20)


@dataclasses.dataclass
class Rig:
    standin: TelegramStandIn
    hub: Any
    api: Api
    settings: Settings
    bots: list[BotThread]

    def bot(self, confirm_ttl: float = 120.0) -> BotThread:
        bot = BotThread(self.standin, self.settings, self.hub.sessions, confirm_ttl).start()
        self.bots.append(bot)
        return bot

    def say(self, text: str, user: int = ALICE, chat: int | None = None, chat_type: str = "private") -> None:
        self.standin.message_update(text, user, chat_id=chat, chat_type=chat_type)

    def reply(self, count: int = 1, method: str = "sendMessage", chat: int = ALICE) -> Call:
        """Wait for the count-th call of method to chat and return it."""
        calls = wait_for(
            lambda: len(c := self._to(method, chat)) >= count and c, what=f"{count} x {method} to {chat}"
        )
        return calls[count - 1]

    def _to(self, method: str, chat: int) -> list[Call]:
        return [c for c in self.standin.calls(method) if c.params.get("chat_id") in (str(chat), None)]

    def ask(self, text: str, user: int = ALICE) -> Call:
        """Send a command in a private chat and wait for its reply."""
        before = len(self._to("sendMessage", user))
        self.say(text, user)
        return self.reply(before + 1, chat=user)

    def press(self, question: Call, which: str, user: int = ALICE) -> None:
        keyboard = question.json_param("reply_markup")["inline_keyboard"][0]
        data = {b["text"]: b["callback_data"] for b in keyboard}[which]
        self.standin.callback_update(
            data, user, chat_id=ALICE, message_id=int(question.params.get("message_id", 1))
        )

    def enabled(self, model: type[InputConfig] | type[OutputConfig], key: str) -> bool | None:
        with self.hub.sessions() as session:
            return session.scalar(select(model.device_enabled).where(model.device_key == key))

    def switch(self) -> bool:
        with self.hub.sessions() as session:
            return outputs_enabled(session)


@pytest.fixture
def rig(make_settings) -> Iterator[Rig]:
    # The hub gets no token: only this test's Application may poll the stand-in.
    hub_settings = make_settings()
    hub = start_hub(hub_settings)
    device = Device(hub_settings)
    api = Api(hub)
    device.publish("event.heartbeat.ioboard.pi-garage", HEARTBEAT)
    wait_for(lambda: any(o["device_key"] == BUZZER for o in api.get("/api/devices")["outputs"]))
    api.patch("inputs", GARAGE, device_enabled=True, group_name="outside")
    api.patch("inputs", BACK, device_enabled=True)
    settings = dataclasses.replace(hub_settings, telegram_users=(ALICE, BOB), telegram_chat_room=ROOM)
    standin = TelegramStandIn(TOKEN).start()
    rig = Rig(standin, hub, api, settings, [])
    yield rig
    for bot in rig.bots:
        bot.stop()
    standin.stop()
    device.close()
    hub.stop()


def test_disallowed_users_and_other_chats_are_ignored_without_logging_text(rig: Rig, caplog) -> None:
    rig.bot()
    caplog.set_level(logging.INFO)
    for text in COMMANDS:
        rig.say(f"{text} secretword", MALLORY)
    rig.say("/inputoff garage secretword", ALICE, chat=OTHER_ROOM, chat_type="supergroup")
    rig.say("/status secretword", ALICE, chat=OTHER_ROOM, chat_type="group")
    # Updates are handled in order, so once this one is answered the ignored ones are done.
    assert "Commands" in rig.ask("/help").text
    assert [c.params["chat_id"] for c in rig.standin.calls("sendMessage")] == [str(ALICE)]
    assert rig.standin.calls("answerCallbackQuery") == []
    assert rig.enabled(InputConfig, GARAGE) is True and rig.switch() is True
    ignored = [r.getMessage() for r in caplog.records if "not authorized" in r.getMessage()]
    assert len(ignored) == len(COMMANDS) + 2
    assert f"user {MALLORY} in chat {MALLORY}" in ignored[0]
    assert f"user {ALICE} in chat {OTHER_ROOM}" in ignored[-1]
    assert not any("secretword" in r.getMessage() for r in caplog.records)


def test_group_room_commands_are_answered_in_the_room(rig: Rig) -> None:
    rig.bot()
    rig.say("/status", BOB, chat=ROOM, chat_type="supergroup")
    assert "<b>Status</b>" in rig.reply(chat=ROOM).text
    rig.say("/nonsense", ALICE, chat=ROOM, chat_type="supergroup")
    help_text = rig.reply(2, chat=ROOM).text
    assert "/inputoff" in help_text and "/why" in help_text
    assert rig.reply(2, chat=ROOM).params["parse_mode"] == "HTML"


def test_inputoff_confirmation_flow(rig: Rig, caplog) -> None:
    rig.bot()
    caplog.set_level(logging.INFO)
    question = rig.ask("/inputoff garage")
    assert "Disable 1 input?" in question.text and "Garage Door" in question.text
    # a stranger's press is dropped unanswered; another allowed user's confirm is refused
    rig.press(question, "Confirm", user=MALLORY)
    rig.press(question, "Confirm", user=BOB)
    answer = rig.reply(method="answerCallbackQuery", chat=0)
    assert "Only the person who asked" in answer.params["text"]
    assert len(rig.standin.calls("answerCallbackQuery")) == 1
    assert rig.enabled(InputConfig, GARAGE) is True
    # cancel leaves it alone
    rig.press(question, "Cancel")
    assert "Cancelled" in rig.reply(method="editMessageText").text
    assert rig.enabled(InputConfig, GARAGE) is True
    # the cancelled confirmation cannot be used any more
    rig.press(question, "Confirm")
    assert (
        "expired or was already answered" in rig.reply(3, method="answerCallbackQuery", chat=0).params["text"]
    )
    # a fresh one, confirmed by the asker
    question = rig.ask("/inputoff outside")  # the group name
    rig.press(question, "Confirm")
    done = rig.reply(2, method="editMessageText").text
    assert "Disabled 1 input:" in done and "Garage Door" in done
    assert rig.enabled(InputConfig, GARAGE) is False
    assert any(f"configuration change by telegram:{ALICE}" in r.getMessage() for r in caplog.records)
    # enabling needs no confirmation; labels are escaped for HTML
    reply = rig.ask("/inputon door")
    assert "Enabled 2 inputs:" in reply.text and "Back &lt;Door&gt;" in reply.text
    assert rig.enabled(InputConfig, GARAGE) is True
    assert "No input matches <i>cellar</i>" in rig.ask("/inputoff cellar").text


def test_confirmation_expires(rig: Rig) -> None:
    rig.bot(confirm_ttl=0.5)
    question = rig.ask("/inputoff garage")
    assert "Not confirmed in time" in rig.reply(method="editMessageText").text
    rig.press(question, "Confirm")
    assert "expired" in rig.reply(method="answerCallbackQuery", chat=0).params["text"]
    assert rig.enabled(InputConfig, GARAGE) is True


def test_timed_reenable_and_its_cancellation(rig: Rig) -> None:
    bot = rig.bot()
    question = rig.ask("/inputoff garage 1s")
    assert "re-enabled after 1s" in question.text
    rig.press(question, "Confirm")
    assert "Re-enabling after 1s" in rig.reply(method="editMessageText").text
    assert rig.enabled(InputConfig, GARAGE) is False
    assert "Re-enabled after 1s: Garage Door" in rig.reply(2).text  # after the question
    assert rig.enabled(InputConfig, GARAGE) is True
    # a manual change before the time is up cancels the re-enable
    question = rig.ask("/inputoff garage 1h")
    rig.press(question, "Confirm")
    rig.reply(2, method="editMessageText")
    assert bot.commands is not None
    task = bot.commands.state.reenables[("input", wait_for(lambda: _garage_id(rig)))]
    rig.ask("/inputon garage")
    wait_for(task.done)
    assert task.cancelled() and bot.commands.state.reenables == {}
    assert rig.enabled(InputConfig, GARAGE) is True


def test_a_dashboard_change_cancels_a_timed_reenable(rig: Rig) -> None:
    rig.bot()
    question = rig.ask("/inputoff garage 2s")
    rig.press(question, "Confirm")
    assert "Re-enabling after 2s" in rig.reply(method="editMessageText").text
    garage = _garage_id(rig)
    with rig.hub.sessions() as session:
        assert rule_state.reenable_key("input", garage) in rule_state.load(session, "reenable:")
    # someone switches it on and off again on the dashboard (the API is what the dashboard uses)
    rig.api.patch("inputs", GARAGE, device_enabled=True)
    rig.api.patch("inputs", GARAGE, device_enabled=False)
    with rig.hub.sessions() as session:
        assert rule_state.load(session, "reenable:") == {}
    text = rig.reply(2).text  # after the question: the bot says why it did not re-enable
    assert "Not re-enabling Garage Door" in text
    time.sleep(0.5)
    assert rig.enabled(InputConfig, GARAGE) is False  # the later dashboard choice stands


def _garage_id(rig: Rig) -> int:
    return rig.api.device("inputs", GARAGE)["id"]


def test_wildcard_outputs_and_global_switch(rig: Rig) -> None:
    rig.bot()
    # no terms: only the auto-scheduled inputs
    assert "No input is auto-scheduled" in rig.ask("/inputoff").text
    with rig.hub.sessions() as session:
        session.execute(update(InputConfig).where(InputConfig.device_key == BACK).values(auto_schedule=True))
        session.commit()
    question = rig.ask("/inputoff")
    assert "Disable 1 input?" in question.text and "Back &lt;Door&gt;" in question.text
    rig.press(question, "Confirm")
    rig.reply(method="editMessageText")
    assert rig.enabled(InputConfig, BACK) is False and rig.enabled(InputConfig, GARAGE) is True
    assert "Enabled 1 input" in rig.ask("/inputon").text
    assert rig.enabled(InputConfig, BACK) is True
    # outputs need names
    assert "/outputsoff" in rig.ask("/outputoff").text
    assert "/outputson" in rig.ask("/outputon").text
    question = rig.ask("/outputoff buzzer")
    rig.press(question, "Confirm")
    assert "Disabled 1 output" in rig.reply(2, method="editMessageText").text
    assert rig.enabled(OutputConfig, BUZZER) is False
    assert "Enabled 1 output" in rig.ask("/outputon buzzer").text
    assert rig.enabled(OutputConfig, BUZZER) is True
    # the global switch
    question = rig.ask("/outputsoff")
    assert "every" in question.text
    rig.press(question, "Confirm")
    assert "Outputs are off" in rig.reply(3, method="editMessageText").text
    assert rig.switch() is False
    assert rig.ask("/outputson").text == "Outputs enabled."
    assert rig.switch() is True


def test_report_why_and_status(rig: Rig) -> None:
    rig.bot()
    rig.api.link(registry.DASH_BUTTON, BUZZER)
    rig.api.patch("inputs", registry.DASH_BUTTON, device_enabled=False)
    assert "Dash Button did not fire" in rig.ask("/report").text
    rig.ask("/inputon dash")
    reply = rig.ask("/report").text
    assert "Dash Button fired." in reply and f"✅ {BUZZER}" in reply
    decisions = wait_for(lambda: len(d := rig.api.decisions(registry.DASH_BUTTON)) >= 2 and d)
    assert all(f"telegram:{ALICE}" in d["origin"] for d in decisions)
    why = rig.ask("/why dash").text
    assert "<b>Dash Button</b>: last 2 decisions" in why
    assert "fired" in why and "blocked: disabled" in why and f"✅ {BUZZER}" in why
    assert "Which one?" in rig.ask("/why door").text
    assert "No input matches" in rig.ask("/why cellar").text
    # status: a device its directory calls offline is listed by label
    presence.report("pi-garage", False, None)
    with rig.hub.sessions() as session:
        session.execute(
            update(InputConfig).where(InputConfig.device_key == GARAGE).values(origin="pi-garage")
        )
        session.commit()
    status = rig.ask("/status").text
    assert "rabbitmq_source: connected" in status and "control_publisher: connected" in status
    assert "mqtt:" in status
    assert "1 offline" in status and "Offline: Garage Door" in status
    assert "Inputs enabled: 3 of 4" in status  # garage, back, dash; the panic button is off
    assert "Outputs enabled: 2 of 2" in status and "Outputs switch: on" in status
    assert "Last backup: not configured" in status


# ---- /schedule ----------------------------------------------------------------------------------


def test_parse_schedule_args() -> None:
    parse = command_args.parse_schedule_args
    assert parse(["garage", "door", "07:00", "22:00"]) == (["garage", "door"], "set", ["07:00", "22:00"])
    assert parse(["garage", "OFF"]) == (["garage"], "off", [])
    assert parse(["garage"]) == (["garage"], "show", [])
    assert parse([]) == ([], "show", [])
    assert parse(["off"]) == (["off"], "show", [])  # no device named: a search, not a change
    # One time alone, or a time with a bad partner, is returned for the caller to refuse.
    assert parse(["garage", "07:00"]) == (["garage"], "set", ["07:00"])
    assert parse(["garage", "0700", "22:00"]) == (["garage", "0700"], "set", ["22:00"])


def schedule_of(rig: Rig, model: type[InputConfig] | type[OutputConfig], key: str) -> tuple[Any, ...]:
    with rig.hub.sessions() as session:
        row = session.scalars(select(model).where(model.device_key == key)).one()
        return (row.auto_schedule, row.auto_schedule_enable, row.auto_schedule_disable)


def test_schedule_set_show_and_off(rig: Rig, caplog) -> None:
    rig.bot()
    caplog.set_level(logging.INFO)
    assert "/schedule" in rig.ask("/help").text
    text = rig.ask("/schedule garage 7:00 22:00").text
    assert text.startswith("Daily schedule 07:00–22:00 set:")
    assert "<b>Garage Door</b> (input): daily 07:00–22:00, next: " in text
    assert schedule_of(rig, InputConfig, GARAGE) == (True, "07:00", "22:00")
    assert schedule_of(rig, InputConfig, BACK)[0] is not True
    assert any(f"configuration change by telegram:{ALICE}" in r.getMessage() for r in caplog.records)
    # Outputs match too, and the reply is HTML with labels escaped.
    reply = rig.ask("/schedule buzzer 06:30 23:15")
    assert reply.params["parse_mode"] == "HTML" and "Hallway Buzzer</b> (output)" in reply.text
    assert schedule_of(rig, OutputConfig, BUZZER) == (True, "06:30", "23:15")
    # No names: every scheduled device, with its next transition.
    listed = rig.ask("/schedule").text
    assert listed.startswith("<b>Schedules</b>")
    assert "Garage Door" in listed and "Hallway Buzzer" in listed and "Back" not in listed
    shown = rig.ask("/schedule door").text
    assert "<b>Back &lt;Door&gt;</b> (input): no daily schedule" in shown
    assert "<b>Garage Door</b> (input): daily 07:00–22:00, next: " in shown
    # off keeps the stored times, so switching the schedule back on needs only the times again.
    off = rig.ask("/schedule garage off").text
    assert off.startswith("Daily schedule off:") and "no daily schedule (stored 07:00–22:00)" in off
    assert schedule_of(rig, InputConfig, GARAGE) == (False, "07:00", "22:00")


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("/schedule garage 25:00 22:00", "Not changed: enable must be a time of day as HH:MM"),
        ("/schedule garage 07:00 7:60", "Not changed: disable must be a time of day as HH:MM"),
        ("/schedule garage 07:00 7:00", "Not changed: "),
        ("/schedule garage 07:00", "Give the enable and the disable time"),
        ("/schedule 07:00 22:00", "Name the devices"),
        ("/schedule nothing-here 07:00 22:00", "No input or output matches <i>nothing-here</i>."),
        ("/schedule nothing-here", "No input or output matches <i>nothing-here</i>."),
    ],
)
def test_schedule_refusals_change_nothing(rig: Rig, command: str, answer: str) -> None:
    rig.bot()
    before = schedule_of(rig, InputConfig, GARAGE)
    assert rig.ask(command).text.startswith(answer)
    assert schedule_of(rig, InputConfig, GARAGE) == before


# ---- configuration history in /why ------------------------------------------------------------------


def test_why_answers_with_configuration_changes_who_and_before_after(rig: Rig) -> None:
    rig.bot()
    rig.api.patch("inputs", GARAGE, activation_interval=45)  # by the API token made in the rig
    rig.ask("/inputon garage")  # already on: no change, no entry
    question = rig.ask("/inputoff garage")
    rig.press(question, "Confirm")
    wait_for(lambda: rig.enabled(InputConfig, GARAGE) is False)
    why = wait_for(lambda: "device_enabled on → off" in (t := rig.ask("/why garage").text) and t)
    assert "<b>Last 3 changes</b>" in why  # the rig enabled it and set its group first
    assert f"by telegram:{ALICE}" in why and "device_enabled on → off" in why
    assert "by token:admin/end-to-end tests" in why and "activation_interval (none) → 45" in why
    # newest first
    assert why.index(f"telegram:{ALICE}") < why.index("token:admin/end-to-end tests")


# ---- the reply to plain chat text: group, invite link, dashboard link -------------------------------


class NgrokAgent:
    """ngrok's local agent API (GET /api/tunnels), answering with the tunnels it is given."""

    def __init__(self, tunnels: list[dict[str, Any]]) -> None:
        self.tunnels = tunnels
        self.requests: list[str] = []
        self.port = free_port()
        self.serving = Serving(self.port, self._handle, "NgrokAgent")

    def _handle(self, req: Any) -> None:
        self.requests.append(req.path)
        if req.path != "/api/tunnels":
            req.send_response(404)
            req.end_headers()
            return
        body = json.dumps({"tunnels": self.tunnels, "uri": "/api/tunnels"}).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)


def tunnel(name: str, url: str) -> dict[str, Any]:
    return {
        "name": name,
        "ID": "abc",
        "uri": f"/api/tunnels/{name}",
        "public_url": url,
        "proto": url.split(":")[0],
        "config": {"addr": "http://app:8080", "inspect": True},
    }


def test_plain_text_gets_the_group_an_invite_link_the_bot_makes_and_the_ngrok_dashboard(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote_url.set_discovered(None)
    monkeypatch.setattr(remote_url, "SEARCH_SECONDS", 0.05)
    agent = NgrokAgent([])
    try:
        settings = dataclasses.replace(
            rig.settings, ngrok_enabled=True, ngrok_client_api_port=agent.port, ngrok_tunnel_name="frontend"
        )
        discovery = remote_url.NgrokDiscovery(settings)
        discovery.start()
        wait_for(lambda: len(agent.requests) >= 2)  # no tunnel yet: it keeps asking
        assert remote_url.dashboard_url(settings) is None
        agent.tunnels = [
            tunnel("other", "https://other.ngrok-free.app"),
            tunnel("frontend (http)", "http://abcd.ngrok-free.app"),
            tunnel("frontend", "https://user:pw@abcd.ngrok-free.app"),
        ]
        wait_for(lambda: remote_url.dashboard_url(settings) == "https://abcd.ngrok-free.app")
        rig.settings = settings
        rig.standin.chat_title = "Home <Alarm>"
        rig.standin.invite_link_to_create = "https://t.me/+made_by_the_bot"
        rig.bot()
        reply = rig.ask("hello").text
        assert 'I am in the <a href="https://t.me/+made_by_the_bot">Home &lt;Alarm&gt;</a> group.' in reply
        assert '<a href="https://abcd.ngrok-free.app">Dashboard</a>' in reply
        assert "pw" not in reply  # never the credentials the original put into the chat
        assert rig.standin.calls("getChat")[-1].params["chat_id"] == str(ROOM)
        # the link is made once and reused, never re-exported (that would revoke the one people have)
        rig.ask("are you there?")
        assert len(rig.standin.calls("createChatInviteLink")) == 1
    finally:
        agent.serving.stop()
        remote_url.set_discovered(None)


def test_plain_text_without_invite_rights_and_with_a_tailscale_address(rig: Rig) -> None:
    remote_url.set_discovered(None)
    rig.settings = dataclasses.replace(rig.settings, public_url="https://hub.tail1234.ts.net")
    rig.bot()
    reply = rig.ask("hi").text  # the stand-in refuses createChatInviteLink: not enough rights
    assert "I am in the <b>Group</b> group." in reply
    assert '<a href="https://hub.tail1234.ts.net">Dashboard</a>' in reply
    # a group whose primary link the bot can see: that one is given
    rig.standin.chat_invite_link = "https://t.me/joinchat/primary"
    assert '<a href="https://t.me/joinchat/primary">Group</a>' in rig.ask("hi again").text
    # commands are not chat: no group reply for them
    assert "I am in" not in rig.ask("/status").text


def test_unlock_gives_a_one_time_dashboard_code_in_a_private_chat_only(rig: Rig, caplog) -> None:
    from app.store import accounts
    from app.store.models import User

    rig.bot()
    caplog.set_level(logging.INFO)
    rig.say("/unlock", BOB, chat=ROOM, chat_type="supergroup")
    assert "private chat" in rig.reply(chat=ROOM).text
    with rig.hub.sessions() as session:
        assert session.scalar(select(User.unlock_hash).where(User.username == "admin")) is None
    answer = rig.ask("/unlock").text
    code = answer.split("<code>")[1].split("</code>")[0]
    assert "Valid 10 minutes, once" in answer
    with rig.hub.sessions() as session:
        row = session.scalars(select(User).where(User.username == "admin")).one()
        assert accounts.unlock_code_matches(row, code, accounts.utc_now())
        assert code not in (row.unlock_hash or "")  # only its hash is kept
    assert not any(code in r.getMessage() for r in caplog.records)
    assert any(
        "unlock code for 'admin' issued to Telegram user 111" in r.getMessage() for r in caplog.records
    )
