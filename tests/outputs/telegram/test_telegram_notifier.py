"""Telegram notifications with the real python-telegram-bot against the local Bot API stand-in."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from telegram import Bot
from telegram.request import HTTPXRequest

from app.core import channels, health
from app.core.channels import Notification
from app.core.settings import Settings
from app.outputs.telegram.notifier import Notifier, format_html
from app.outputs.telegram.service import TelegramService
from app.outputs.telegram.sms import parse_recipients
from pylib import inproc, threads
from tests.support import free_port, wait_for
from tests.telegram_standin import TelegramStandIn

TOKEN = "123456:SECRET-token-never-logged"
CHAT = -1001234


@pytest.fixture
def standin() -> Iterator[TelegramStandIn]:
    with TelegramStandIn(TOKEN) as s:
        yield s


@pytest.fixture
def tg_settings(make_settings: Callable[..., Settings], standin: TelegramStandIn) -> Callable[..., Settings]:
    def make(**env: str) -> Settings:
        base = {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_CHAT_ROOM": str(CHAT),
            "TELEGRAM_API_BASE_URL": standin.base_url,
            "TELEGRAM_MIN_SEND_INTERVAL": "0",
            "TELEGRAM_SEND_RETRIES": "2",
            "USER_TZ": "Europe/Berlin",
        }
        base.update(env)
        return make_settings(**base)

    return make


def event(label: str = "Front Door", ts: float | None = None, **kw: Any) -> Notification:
    return Notification(
        timestamp=ts if ts is not None else time.time(), input_key=label.lower(), input_label=label, **kw
    )


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)
    return value


def run_notifier(
    settings: Settings,
    standin: TelegramStandIn,
    scenario: Callable[[Notifier], Awaitable[None]],
    **options: Any,
) -> None:
    """Run a Notifier on a real PTB Bot for the scenario, in a fresh event loop."""

    async def main() -> None:
        bot = Bot(TOKEN, base_url=standin.base_url, base_file_url=standin.base_file_url)
        async with bot:
            options.setdefault("backoff_initial", 0.01)
            notifier = Notifier(bot, settings, **options)
            task = asyncio.create_task(notifier.run())
            try:
                await scenario(notifier)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                assert not task.done() or task.cancelled() or task.exception() is None

    asyncio.run(main())


# ---- formatting -------------------------------------------------------------------------------


def test_text_has_detail_local_time_link_and_escaped_history(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    settings = tg_settings()
    ts = datetime(2026, 1, 15, 8, 5, tzinfo=UTC).timestamp()  # 9:05 in Berlin (winter)
    n = event(
        "Front_Door *Motion* [x] <b>",
        ts=ts,
        event_detail="Tamper & <1 person>",
        storage_url="https://example.com/clip?a=1&b=2",
        history=[["Garage_Side *PIR*", 12], ["Back [Door]", 40]],
    )

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(n)
        await until(lambda: standin.calls("sendMessage"))

    run_notifier(settings, standin, scenario)
    (call,) = standin.calls("sendMessage")
    assert call.params["chat_id"] == str(CHAT)
    assert call.params["parse_mode"] == "HTML"
    assert call.text == (
        '<a href="https://example.com/clip?a=1&amp;b=2">'
        "Front_Door *Motion* [x] &lt;b&gt; Tamper &amp; &lt;1 person&gt; (9:05)</a>"
        "\n12s ago: Garage_Side *PIR*"
        "\n40s ago: Back [Door]"
    )


def test_time_is_user_tz_hour_not_padded() -> None:
    ts = datetime(2026, 7, 1, 23, 7, tzinfo=UTC).timestamp()
    assert format_html(event("Gate", ts=ts), "America/New_York") == "Gate (19:07)"
    assert format_html(event("Gate", ts=ts), "Asia/Tokyo") == "Gate (8:07)"


def test_history_is_capped() -> None:
    n = event("Gate", history=[[f"Input {i}", i] for i in range(500)])
    text = format_html(n, "UTC")
    assert len(text) <= 1000
    assert text.count("s ago: ") > 10


def test_plain_text_is_escaped(tg_settings: Callable[..., Settings], standin: TelegramStandIn) -> None:
    async def scenario(notifier: Notifier) -> None:
        notifier.submit(Notification(timestamp=time.time(), text="Pi <garage> offline since 9:05 & *sad_*"))
        await until(lambda: standin.calls("sendMessage"))

    run_notifier(tg_settings(), standin, scenario)
    assert standin.calls("sendMessage")[0].text == "Pi &lt;garage&gt; offline since 9:05 &amp; *sad_*"


# ---- images ---------------------------------------------------------------------------------


def test_single_image_is_a_photo_with_caption(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("Camera", event_detail="1 person", image=b"JPEG-1"))
        await until(lambda: standin.calls("sendPhoto"))

    run_notifier(tg_settings(), standin, scenario, album_window=0.2)
    (call,) = standin.calls("sendPhoto")
    assert call.files["photo"]["content"] == b"JPEG-1"
    assert call.params["caption"].startswith("Camera 1 person (")
    assert call.params["parse_mode"] == "HTML"


def test_burst_of_three_images_is_one_album(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    async def scenario(notifier: Notifier) -> None:
        for i in range(3):
            notifier.submit(event(f"Cam {i}", image=f"IMG{i}".encode()))
        await until(lambda: standin.calls("sendMediaGroup"))

    run_notifier(tg_settings(), standin, scenario, album_window=0.5)
    (call,) = standin.calls("sendMediaGroup")
    assert [m["content"] for m in call.media] == [b"IMG0", b"IMG1", b"IMG2"]
    assert [m["caption"].split(" (")[0] for m in call.media] == ["Cam 0", "Cam 1", "Cam 2"]
    assert not standin.calls("sendPhoto")


def test_twelve_images_make_albums_of_ten_and_two(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    async def scenario(notifier: Notifier) -> None:
        for i in range(12):
            notifier.submit(event("Cam", image=f"IMG{i}".encode()))
        await until(lambda: len(standin.calls("sendMediaGroup")) >= 2)

    run_notifier(tg_settings(), standin, scenario, album_window=0.5)
    albums = standin.calls("sendMediaGroup")
    assert [len(a.media) for a in albums] == [10, 2]
    assert [m["content"] for a in albums for m in a.media] == [f"IMG{i}".encode() for i in range(12)]


def test_person_filter_drops_images_without_people_but_not_buttons(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tg_settings(TELEGRAM_IMAGE_SEND_ONLY_WITH_PEOPLE="true")
    caplog.set_level(logging.INFO)

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("Cam A", event_detail="2 cars and 1 cat", image=b"NOPE"))
        notifier.submit(event("Cam B", event_detail="1 Person(s) and 2 things", image=b"PERSON"))
        notifier.submit(event("Cam C", event_detail="FACE detected", image=b"FACE"))
        notifier.submit(event("Dash", event_detail=None, input_type="dash_button", image=b"BUTTON"))
        await until(lambda: standin.calls("sendMediaGroup"))

    run_notifier(settings, standin, scenario, album_window=0.3)
    (call,) = standin.calls("sendMediaGroup")
    assert [m["content"] for m in call.media] == [b"PERSON", b"FACE", b"BUTTON"]
    assert health.counters().get("telegram.filtered") == 1
    assert "image from Cam A not sent" in caplog.text


def test_rejected_photo_falls_back_to_text(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    standin.fail_next("sendPhoto", 1, kind="400")

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("Camera", event_detail="1 person", image=b"BROKEN"))
        await until(lambda: health.counters().get("telegram.sent"))

    run_notifier(tg_settings(), standin, scenario, album_window=0.1)
    assert standin.calls("sendMessage")[0].text.startswith("Camera 1 person (")
    assert health.counters().get("telegram.sent") == 1


# ---- queueing -------------------------------------------------------------------------------


def test_waiting_texts_coalesce_per_label(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    async def scenario(notifier: Notifier) -> None:
        # All submitted before the sending task gets a turn: they are all waiting.
        notifier.submit(event("Door", event_detail="first"))
        notifier.submit(event("Window"))
        notifier.submit(event("Door", event_detail="second"))
        notifier.submit(event("Door", event_detail="third"))
        await until(lambda: len(standin.calls("sendMessage")) >= 2)
        await asyncio.sleep(0.3)  # nothing more may follow

    run_notifier(tg_settings(), standin, scenario)
    texts = [c.text or "" for c in standin.calls("sendMessage")]
    assert len(texts) == 2
    assert texts[0].startswith("Door third (") and texts[0].endswith("(×3)")
    assert texts[1].startswith("Window (")


def test_min_send_interval_holds_back_the_next_send(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    settings = tg_settings(TELEGRAM_MIN_SEND_INTERVAL="60")

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("A"))
        notifier.submit(event("B"))
        notifier.submit(event("C"))
        await until(lambda: standin.calls("sendMessage"))
        await asyncio.sleep(0.5)  # far below 60 s: the others must still wait
        assert notifier.pending() == 1  # B waits its turn in flight, C in the queue

    run_notifier(settings, standin, scenario)
    assert len(standin.calls("sendMessage")) == 1


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")
def test_retry_after_is_honoured_then_sent(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn
) -> None:
    standin.fail_next("sendMessage", 1, kind="429", retry_after=1)

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("Door"))
        await until(lambda: health.counters().get("telegram.sent"))

    run_notifier(tg_settings(), standin, scenario)
    first, second = standin.calls("sendMessage")
    assert second.at - first.at >= 0.95  # the wait Telegram asked for (a lower bound, not a timing race)
    assert health.counters().get("telegram.retries") == 1
    assert health.counters().get("telegram.sent") == 1
    assert health.components()["telegram"]["state"] == "ok"


def test_server_errors_retried_then_lost_and_counted(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    standin.fail_next("sendMessage", 10, kind="500")

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("Door"))
        await until(lambda: health.counters().get("telegram.lost"))

    run_notifier(tg_settings(TELEGRAM_SEND_RETRIES="2"), standin, scenario)
    assert len(standin.calls("sendMessage")) == 3  # the first try and two retries
    assert health.counters().get("telegram.retries") == 2
    assert "notification lost: Door" in caplog.text
    assert health.components()["telegram"]["state"] == "down"


def test_timeouts_retried_then_sent(tg_settings: Callable[..., Settings], standin: TelegramStandIn) -> None:
    standin.fail_next("sendMessage", 1, kind="hang")

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("Door"))
        await until(lambda: len(standin.calls("sendMessage")) >= 2, timeout=30)
        await until(lambda: health.counters().get("telegram.sent"))

    async def main() -> None:
        # A short read timeout so the hung request becomes TimedOut quickly.
        bot = Bot(TOKEN, base_url=standin.base_url, request=HTTPXRequest(read_timeout=0.5))
        async with bot:
            notifier = Notifier(bot, tg_settings(), backoff_initial=0.01)
            task = asyncio.create_task(notifier.run())
            await scenario(notifier)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    standin.release_hangs()
    assert health.counters().get("telegram.retries") == 1


def test_parse_recipients() -> None:
    assert parse_recipients("Alice;+491701234567, Bob;+1 555 0100,bad;12345,+447700900123") == [
        "+491701234567",
        "+15550100",
        "+447700900123",
    ]
    assert parse_recipients(None) == []


@pytest.fixture
def moto_sns(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        yield url
    finally:
        server.stop()


def test_sms_fallback_through_sns(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn, moto_sns: str
) -> None:
    standin.fail_next("sendMessage", 10, kind="500")
    settings = tg_settings(
        TELEGRAM_SMS_FALLBACK_ENABLED="true", TELEGRAM_SEND_RETRIES="1", AWS_DEFAULT_REGION="eu-west-1"
    )
    n = event(
        "Front_Door <b>",
        event_detail="Motion " + "x" * 200,
        storage_url="https://example.com/clip",
        history=[["Garage", 5]],
        sms_recipients="Alice;+491701234567,Bob;+15550100",
    )

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(n)
        await until(lambda: health.counters().get("telegram.sms_fallback"), timeout=20)

    run_notifier(settings, standin, scenario)
    with urllib.request.urlopen(f"{moto_sns}/moto-api/data.json", timeout=10) as resp:
        assert "sns" in json.load(resp)  # the published messages went through the server
    published = _sms_messages(moto_sns, "eu-west-1")
    assert sorted(p[0] for p in published) == ["+15550100", "+491701234567"]
    for _, message in published:
        assert len(message) <= 160
        assert message.startswith("Front_Door <b> Motion x")  # plain text: no escaping, no link
        assert "<a" not in message
    assert health.counters().get("telegram.sms_fallback") == 1
    assert not health.counters().get("telegram.lost")


def _sms_messages(endpoint: str, region: str) -> list[tuple[str, str]]:
    """The SMS moto's SNS backend recorded (moto keeps them in sns_backends[account][region].sms_messages)."""
    from moto.sns.models import sns_backends

    # ThreadedMotoServer runs in this process, so its backend is readable directly.
    backend = sns_backends["123456789012"][region]
    return [(number, message) for (number, message) in backend.sms_messages.values()]


def test_sms_failure_means_lost(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    standin.fail_next("sendMessage", 10, kind="500")
    settings = tg_settings(TELEGRAM_SMS_FALLBACK_ENABLED="true", TELEGRAM_SEND_RETRIES="0")

    async def scenario(notifier: Notifier) -> None:
        notifier.submit(event("Door", sms_recipients=""))  # no recipients: SNS cannot take it
        await until(lambda: health.counters().get("telegram.lost"))

    run_notifier(settings, standin, scenario)
    assert "notification lost: Door" in caplog.text
    assert not health.counters().get("telegram.sms_fallback")


# ---- the service thread ---------------------------------------------------------------------


def test_service_polls_sends_from_inproc_and_stops_fast(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = TelegramService(tg_settings(), session_factory=None)
    service.start()
    push = inproc.connect_push(channels.NOTIFIER)
    try:
        standin.wait_calls("getUpdates", 1)
        wait_for(lambda: health.components().get("telegram", {}).get("state") == "ok", what="telegram ok")
        inproc.send(push, event("Door", event_detail="opened"))
        (call,) = standin.wait_calls("sendMessage", 1)
        assert call.text is not None and call.text.startswith("Door opened (")
        standin.message_update("hello", user_id=777)  # an update flows through polling without harm
        wait_for(
            lambda: any(c.params.get("offset") not in (None, "0") for c in standin.calls("getUpdates")),
            what="offset advanced",
        )
    finally:
        push.close(linger=0)
    started = time.monotonic()
    threads.shutting_down.set()
    service.join(timeout=10)
    assert not service.is_alive()
    assert time.monotonic() - started < 2.0
    assert threads.failures() == []
    assert TOKEN not in caplog.text
    assert TOKEN.split(":")[1] not in caplog.text
    assert (
        any("getUpdates" in r.getMessage() or "get_updates" in r.getMessage() for r in caplog.records)
        or caplog.records
    )


def test_token_never_logged_even_on_errors(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.fail_next("getUpdates", 3, kind="500")
    standin.fail_next("sendMessage", 10, kind="500")
    service = TelegramService(
        tg_settings(TELEGRAM_SEND_RETRIES="1"), notifier_options={"backoff_initial": 0.01}
    )
    service.start()
    push = inproc.connect_push(channels.NOTIFIER)
    try:
        inproc.send(push, event("Door"))
        wait_for(lambda: health.counters().get("telegram.lost"), what="lost")
        wait_for(lambda: len(standin.calls("getUpdates")) >= 4, what="polling resumed")
    finally:
        push.close(linger=0)
        threads.shutting_down.set()
        service.join(timeout=10)
    assert caplog.records
    assert TOKEN.split(":")[1] not in caplog.text


def test_notifier_failure_ends_the_thread(
    tg_settings: Callable[..., Settings], standin: TelegramStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Notifier) -> None:
        raise ValueError("bug in the notifier")

    monkeypatch.setattr(Notifier, "run", broken)
    service = TelegramService(tg_settings())
    service.start()
    service.join(timeout=10)
    assert not service.is_alive()
    assert threads.failures() and "Telegram" in threads.failures()
    assert health.components()["telegram"]["state"] == "down"
