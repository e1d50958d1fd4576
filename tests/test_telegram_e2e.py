"""Telegram through the whole hub: an alarm reaches the chat, with the camera picture, as the original did."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import umsgpack

from app.core import health
from tests.hubtools import Api, Device, start_hub
from tests.support import wait_for
from tests.telegram_standin import TelegramStandIn
from tests.test_hub_e2e import FRONT, IOBOARD_HEARTBEAT, SNAPSHOT_HEARTBEAT, notify

TOKEN = "123456:TEST-token"
ROOM = -1001234


@pytest.fixture
def telegram_hub(make_settings):
    with TelegramStandIn(TOKEN) as standin:
        settings = make_settings(
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_CHAT_ROOM=str(ROOM),
            TELEGRAM_USERS_CSV="111",
            TELEGRAM_API_BASE_URL=standin.base_url,
            TELEGRAM_MIN_SEND_INTERVAL="0",
        )
        hub = start_hub(settings)
        wait_for(lambda: health.components().get("telegram", {}).get("state") == "ok", 20)
        device = Device(settings)
        api = Api(hub)
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        device.publish("event.heartbeat.snapshot", SNAPSHOT_HEARTBEAT)
        wait_for(lambda: len(api.get("/api/devices")["inputs"]) >= 5)
        yield device, api, standin
        device.close()
        hub.stop()


def test_an_alarm_linked_to_sms_reaches_the_chat_with_history(telegram_hub) -> None:
    device, api, standin = telegram_hub
    api.patch("inputs", FRONT, device_enabled=True)
    api.patch("inputs", "Back Door Contact (Kitchen)", device_enabled=True, device_label="Back_Door *x*")
    api.link(FRONT, "SMS")
    api.link("Back Door Contact (Kitchen)", "SMS")
    device.publish("event.notify.ioboard.pi-hallway", notify("Back Door Contact (Kitchen)"))
    device.publish("event.notify.ioboard.pi-hallway", notify(FRONT, detail="Tamper"))
    messages = standin.wait_calls("sendMessage", 2, timeout=20)
    assert all(int(m.params["chat_id"]) == ROOM for m in messages)
    last = messages[-1].text or ""
    assert last.startswith("Front Door Motion Tamper (")
    assert "s ago: Back_Door *x*" in last  # the other input's own label, escaped for HTML
    decision = wait_for(lambda: api.decisions(FRONT))[0]  # the audit is written in batches
    assert decision["outputs"][0] == {**decision["outputs"][0], "output_key": "SMS", "fired": True}


def test_camera_image_goes_to_the_chat_as_a_photo(telegram_hub) -> None:
    device, api, standin = telegram_hub
    api.patch("inputs", "Front Camera", device_enabled=True)
    api.link("Front Camera", "SMS")
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 2048 + b"\xff\xd9"
    device.publish(
        "event.notify.snapshot.snapshot-processor.image",
        {
            "active_devices": [
                {
                    "device_key": "Front Camera",
                    "device_label": "Front Camera",
                    "type": "camera",
                    "image": jpeg,
                    "event_detail": "1 person(s) and 7 things",
                }
            ],
            "storage_url": "https://drive.example/folder",
            "storage_path": "/data/ftp/uploads/snapshots/front/fetch.jpg",
        },
    )
    photo = standin.wait_calls("sendPhoto", 1, timeout=20)[0]
    assert [f["content"] for f in photo.files.values()] == [jpeg]
    assert "Front Camera 1 person(s) and 7 things" in (photo.text or "")
    assert "https://drive.example/folder" in (photo.params.get("caption") or "")


def test_current_snapshot_processor_image_goes_to_the_chat_as_a_photo(telegram_hub) -> None:
    # snapshot-processor with pylib >= 0.5: umsgpack, a seconds-precision 'Z' timestamp, and the
    # picture inside the input with its storage URL (generations spec §5.2)
    device, api, standin = telegram_hub
    api.patch("inputs", "Front Camera", device_enabled=True)
    api.link("Front Camera", "SMS")
    jpeg = b"\xff\xd8\xff\xe0" + b"\x01" * 4096 + b"\xff\xd9"
    body = {
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inputs": [
            {
                "device_key": "Front Camera",
                "device_label": "Front Camera",
                "type": "camera",
                "image": jpeg,
                "image_timestamp": str(int(time.time())),
                "storage_url": "https://drive.example/now",
                "storage_path": "/data/ftp/uploads/snapshots/front/fetch_front-camera.jpg",
            }
        ],
    }
    device.publish("event.notify.snapshot.snapshot-processor.image", body=umsgpack.packb(body))
    photo = standin.wait_calls("sendPhoto", 1, timeout=20)[0]
    assert [f["content"] for f in photo.files.values()] == [jpeg]
    assert "https://drive.example/now" in (photo.params.get("caption") or "")
    # the picture's 'camera' type is not taken as a new description of the 'Camera' input
    assert api.device("inputs", "Front Camera")["device_type"] == "Camera"


def test_without_telegram_the_sms_output_says_why(make_settings) -> None:
    settings = make_settings()
    hub = start_hub(settings)
    device = Device(settings)
    try:
        api = Api(hub)
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(lambda: any(d["device_key"] == FRONT for d in api.get("/api/devices")["inputs"]))
        api.patch("inputs", FRONT, device_enabled=True)
        api.link(FRONT, "SMS")
        device.publish("event.notify.ioboard.pi-hallway", notify())
        output = wait_for(lambda: api.decisions(FRONT))[0]["outputs"][0]
        assert (output["reason"], output["detail"]) == ("no_route", "Telegram is off (TELEGRAM_BOT_TOKEN)")
    finally:
        device.close()
        hub.stop()
