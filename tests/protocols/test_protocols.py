"""Device codecs: byte-exact fixtures from the generations spec, both directions, and the device checks."""

from __future__ import annotations

import math

import msgpack
import pytest
import umsgpack

from app import protocols
from pylib import wire
from tests import device_parsers as dev

NOW = 1722116215.5  # 2024-07-27T21:36:55.5Z
STAMP = "2024-07-27T21:36:55.123456+0000"
IN = {
    "name": "Gate",
    "type": "Contact",
    "location": "Garage",
    "device_key": "Gate Contact (Garage)",
    "device_label": "Gate Contact",
}
DOOR = {**IN, "name": "Door", "device_key": "Door Contact (Garage)", "device_label": "Door Contact"}
OUT = {"type": "Buzzer", "location": "Garage", "device_key": "Garage Buzzer"}
CAMERA = "admin:pw@192.168.1.20:88,554"

# ---- inbound: what each generation puts on the wire (spec §3.1-§3.2, §4.1, §5.2; wire-format.md §3) ----

G1_HEARTBEAT = {
    "timestamp": STAMP,
    "data": {"statistics": {"sample_count": 123456}, "device_info": {"inputs": [IN], "outputs": [OUT]}},
}
G1_NOTIFY = {
    "timestamp": STAMP,
    "data": {
        "samples": {IN["device_key"]: 97},
        "active_devices": [{**IN, "sample_value": 97, "event_detail": "Tamper"}],
    },
}
G2_HEARTBEAT = {
    "timestamp": STAMP,
    "statistics": {"sample_count": 123456},
    "device_info": {"inputs": [IN], "outputs": [OUT]},
    "inputs": [IN],
    "outputs": [OUT],
}
G2_ACTIVE = [{**IN, "sample_value": 97}]
G2_NOTIFY = {
    "timestamp": STAMP,
    "samples": {IN["device_key"]: 97},
    "active_devices": G2_ACTIVE,
    "outputs_triggered": G2_ACTIVE,
}
# §4.1 byte example: the G3 heartbeat with one input and one output, 213 bytes
G3_HEARTBEAT_HEX = (
    "83a974696d657374616d70bf323032342d30372d32375432313a33363a35352e3132333435362b30303030a6696e707574739185"
    "a46e616d65a447617465a474797065a7436f6e74616374a86c6f636174696f6ea6476172616765aa6465766963655f6b6579b547"
    "61746520436f6e74616374202847617261676529ac6465766963655f6c6162656cac4761746520436f6e74616374a76f75747075"
    "74739183a474797065a642757a7a6572a86c6f636174696f6ea6476172616765aa6465766963655f6b6579ad4761726167652042"
    "757a7a6572"
)
TRIGGERED = {**IN, "sample_value": 97, "state": "triggered", "event_detail": None}
G3_NOTIFY = {"timestamp": STAMP, "inputs": [TRIGGERED, DOOR], "outputs": [OUT]}
SP_NOW_HEARTBEAT = {
    "timestamp": "2026-01-10T14:37:18Z",
    "inputs": [{"type": "Camera", "location": "Front", "device_key": "Front Camera"}],
    "outputs": [{"location": "Front", "type": "Camera", "device_key": "Front Camera"}],
}
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"
SP_NOW_IMAGE = {
    "timestamp": "2026-01-10T14:37:19Z",
    "inputs": [
        {
            "device_key": "Front Camera",
            "device_label": "Front Camera",
            "type": "camera",
            "image": JPEG,
            "image_timestamp": "1768055839",
            "storage_url": "https://drive.example/folder",
            "storage_path": "/data/ftp/uploads/snapshots/front/fetch_front-camera_1768055839.jpg",
        }
    ],
}


def read(routing_key: str, body: bytes) -> protocols.Inbound:
    payload = wire.decode_body(body, 1 << 20)
    return protocols.read(routing_key, routing_key.split(".")[2], payload["data"])


def test_g3_heartbeat_bytes_of_the_spec_register_and_fire_nothing() -> None:
    body = bytes.fromhex(G3_HEARTBEAT_HEX)
    assert len(body) == 213 and msgpack.packb({"timestamp": STAMP, "inputs": [IN], "outputs": [OUT]}) == body
    inbound = read("event.heartbeat.ioboard.pi-garage", body)
    assert (inbound.generation, inbound.device) == ("g3", "pi-garage")
    assert inbound.inputs == [IN] and inbound.outputs == [OUT]
    assert inbound.active == [] and inbound.problems == []


def test_g3_notify_fires_only_the_triggered_input() -> None:
    inbound = read("event.notify.ioboard.pi-garage", msgpack.packb(G3_NOTIFY))
    assert inbound.generation == "g3"
    assert inbound.active == [{**IN, "sample_value": 97, "event_detail": None}]
    assert [d["device_key"] for d in inbound.inputs] == [IN["device_key"], DOOR["device_key"]]


def test_g1_activation_carries_sample_value_and_event_detail() -> None:
    hb = read("event.heartbeat.ioboard.pi-hall", msgpack.packb(G1_HEARTBEAT))
    assert (hb.generation, hb.inputs, hb.outputs, hb.active) == ("g1", [IN], [OUT], [])
    inbound = read("event.notify.ioboard.pi-hall", msgpack.packb(G1_NOTIFY))
    assert inbound.generation == "g1"
    assert inbound.active == [{**IN, "sample_value": 97, "event_detail": "Tamper"}]


def test_g2_duplicate_outputs_triggered_never_fires_twice() -> None:
    hb = read("event.heartbeat.ioboard.pi-porch", msgpack.packb(G2_HEARTBEAT))
    assert (hb.generation, hb.inputs, hb.outputs, hb.active) == ("g2", [IN], [OUT], [])
    inbound = read("event.notify.ioboard.pi-porch", msgpack.packb(G2_NOTIFY))
    assert inbound.generation == "g2" and inbound.active == G2_ACTIVE


def test_current_snapshot_processor_umsgpack_heartbeat_and_image_event() -> None:
    # pylib >= 0.5 packs with umsgpack and stamps seconds with 'Z'; the heartbeat key has 3 parts
    hb_body = umsgpack.packb(SP_NOW_HEARTBEAT)
    assert wire.parse_timestamp(wire.decode_body(hb_body, 1 << 20)["timestamp"]).timestamp() == 1768055838
    hb = read("event.heartbeat.snapshot", hb_body)
    assert (hb.generation, hb.device, hb.active) == ("g3", "snapshot", [])
    assert hb.outputs == SP_NOW_HEARTBEAT["outputs"]
    image = read("event.notify.snapshot.snapshot-processor.image", umsgpack.packb(SP_NOW_IMAGE))
    assert (image.generation, image.device, image.inputs) == ("g3", "snapshot-processor", [])
    assert image.active == SP_NOW_IMAGE["inputs"] and image.active[0]["image"] == JPEG


def test_g1_camera_image_gets_the_storage_url_beside_it() -> None:
    body = msgpack.packb(
        {
            "timestamp": STAMP,
            "data": {
                "active_devices": [{"device_key": "Front Camera", "image": JPEG}],
                "storage_url": "https://x",
            },
        }
    )
    assert read("event.notify.snapshot.sp.image", body).active == [
        {"device_key": "Front Camera", "image": JPEG, "storage_url": "https://x"}
    ]


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"active_devices": "no"}, "active_devices is a str, not a list"),
        ({"active_devices": [42]}, "active device is a int, not a map"),
        ({"inputs": [None], "outputs": {}}, "input is a NoneType, not a map"),
        ({"device_info": [1]}, "device_info is a list, not a map"),
    ],
)
def test_unreadable_parts_are_problems_not_exceptions(data, problem) -> None:
    inbound = protocols.read("event.notify.ioboard.x", "ioboard", data)
    assert problem in inbound.problems and inbound.active == []


# ---- outbound: what each generation's device parses (spec §3.3, §4.3, §5.1) ----------------------


def trigger(
    handler: str = "ioboard",
    duration=None,
    params: str | None = None,
    topic: str | None = None,
    key: str = "Garage Buzzer",
):
    return protocols.Trigger(
        handler=handler,
        output_key=key,
        output_label=key,
        device_params=params,
        trigger_topic=topic,
        input_key=IN["device_key"],
        input_label=IN["device_label"],
        input_type=IN["type"],
        duration=duration,
        message="Gate Contact",
        now=NOW,
    )


G1_CONTROL_HEX = (
    "82a974696d657374616d70bf323032342d30372d32375432313a33363a35352e3530303030302b30303030a46461746192ad"
    "4761726167652042757a7a657202"
)
G3_TRIGGER_HEX = (
    "83a974696d657374616d70ce66a56877ac6163746976655f696e70757483aa6465766963655f6b6579b54761746520436f6e"
    "74616374202847617261676529ac6465766963655f6c6162656cac4761746520436f6e74616374ab6465766963655f7479"
    "7065a7436f6e74616374b06f75747075745f74726967676572656483aa6465766963655f6b6579ad4761726167652042757a"
    "7a6572ac6465766963655f6c6162656cad4761726167652042757a7a6572ad6465766963655f706172616d7302"
)
CAMERA_G1_HEX = (
    "82a974696d657374616d70bf323032342d30372d32375432313a33363a35352e3530303030302b30303030a46461746193ac"
    "46726f6e742043616d657261ac46726f6e742043616d657261bc61646d696e3a7077403139322e3136382e312e32303a3838"
    "2c353534"
)
CAMERA_NOW_HEX = (
    "83a974696d657374616d70ce66a56877ac6163746976655f696e70757483aa6465766963655f6b6579b54761746520436f6e"
    "74616374202847617261676529ac6465766963655f6c6162656cac4761746520436f6e74616374ab6465766963655f7479"
    "7065a7436f6e74616374b06f75747075745f74726967676572656483aa6465766963655f6b6579ac46726f6e742043616d65"
    "7261ac6465766963655f6c6162656cac46726f6e742043616d657261ad6465766963655f706172616d73bc61646d696e3a70"
    "77403139322e3136382e312e32303a38382c353534"
)


@pytest.mark.parametrize("generation", ["g1", "g2", None])
def test_g1_and_g2_boards_get_the_control_message_byte_for_byte(generation) -> None:
    out = protocols.encode(generation, trigger(duration=2))
    assert (out.routing_key, out.body.hex()) == ("event.control.ioboard", G1_CONTROL_HEX)
    assert msgpack.unpackb(out.body) == {
        "timestamp": "2024-07-27T21:36:55.500000+0000",
        "data": ["Garage Buzzer", 2],
    }
    assert dev.remote_monitor_g1(out.routing_key, out.body, {"Garage Buzzer"}) == dev.Pulse(
        "Garage Buzzer", 2.0
    )
    default = protocols.encode(generation, trigger(duration=None))
    assert msgpack.unpackb(default.body)["data"] == ["Garage Buzzer", None]
    assert dev.remote_monitor_g1(default.routing_key, default.body, {"Garage Buzzer"}).seconds == 1.0


def test_g3_board_gets_the_2024_trigger_byte_for_byte() -> None:
    out = protocols.encode("g3", trigger(duration=2))
    assert (out.routing_key, out.body.hex()) == ("event.trigger.ioboard", G3_TRIGGER_HEX)
    assert msgpack.unpackb(out.body) == {
        "timestamp": 1722116215,
        "active_input": {
            "device_key": IN["device_key"],
            "device_label": "Gate Contact",
            "device_type": "Contact",
        },
        "output_triggered": {
            "device_key": "Garage Buzzer",
            "device_label": "Garage Buzzer",
            "device_params": 2,
        },
    }
    assert dev.remote_monitor_g3(out.routing_key, out.body, {"Garage Buzzer"}) == dev.Pulse(
        "Garage Buzzer", 2.0
    )
    # fractional seconds are read with float() since 3bfc06b
    half = protocols.encode("g3", trigger(duration=0.5))
    assert dev.remote_monitor_g3(half.routing_key, half.body, {"Garage Buzzer"}).seconds == 0.5


def test_g3_null_duration_is_sent_as_nil_which_the_board_reads_as_its_default() -> None:
    out = protocols.encode("g3", trigger(duration=None))
    assert (
        msgpack.unpackb(out.body)["output_triggered"]["device_params"] is None
    )  # present: absent is a KeyError
    assert dev.remote_monitor_g3(out.routing_key, out.body, {"Garage Buzzer"}).seconds == 1.0


def test_the_specs_minimal_g3_trigger_parses_like_ours() -> None:
    minimal = bytes.fromhex(
        "81b06f75747075745f74726967676572656482aa6465766963655f6b6579ad4761726167652042757a7a6572ad6465766963655f706172616d73a134"
    )
    assert len(minimal) == 60
    assert dev.remote_monitor_g3("event.trigger.ioboard", minimal, {"Garage Buzzer"}) == dev.Pulse(
        "Garage Buzzer", 4.0
    )
    ours = protocols.encode("g3", trigger(duration=4))
    assert dev.remote_monitor_g3(ours.routing_key, ours.body, {"Garage Buzzer"}) == dev.Pulse(
        "Garage Buzzer", 4.0
    )


def test_cameras_of_both_generations_byte_for_byte() -> None:
    old = protocols.encode("g2", trigger("snapshot", params=CAMERA, key="Front Camera"))
    assert (old.routing_key, old.body.hex()) == ("event.control.snapshot", CAMERA_G1_HEX)
    assert dev.snapshot_g1(old.routing_key, old.body, {"Front Camera"}) == dev.Snap(
        "Front Camera", "Front Camera", "192.168.1.20:88"
    )
    now = protocols.encode("g3", trigger("snapshot", params=CAMERA, key="Front Camera"))
    assert (now.routing_key, now.body.hex()) == ("event.trigger.snapshot", CAMERA_NOW_HEX)
    body = msgpack.unpackb(now.body)
    assert body["timestamp"] == 1722116215 and body["output_triggered"] == {
        "device_key": "Front Camera",
        "device_label": "Front Camera",
        "device_params": CAMERA,
    }
    assert dev.snapshot_now(now.routing_key, now.body, {"Front Camera"}) == dev.Snap(
        "Front Camera", "Front Camera", "192.168.1.20:88"
    )


def test_the_two_formats_never_share_a_routing_key() -> None:
    # each crashes the other's device: a G1 body on event.trigger.ioboard, a G3 body on event.control.ioboard
    with pytest.raises(dev.DeviceDied):
        dev.remote_monitor_g3("event.trigger.ioboard", bytes.fromhex(G1_CONTROL_HEX), {"Garage Buzzer"})
    with pytest.raises(dev.DeviceDied):
        dev.remote_monitor_g1("event.control.ioboard", bytes.fromhex(G3_TRIGGER_HEX), {"Garage Buzzer"})
    with pytest.raises(protocols.Refused, match="G3 devices listen"):
        protocols.encode("g1", trigger(duration=1, topic="event.trigger.ioboard"))
    with pytest.raises(protocols.Refused, match="G1/G2 devices listen"):
        protocols.encode("g3", trigger(duration=1, topic="event.control.ioboard"))
    # a person's own topic stays theirs; TTS has no G3 client and keeps the G1 message
    siren = protocols.encode("g1", trigger(None, topic="event.trigger.siren", key="Siren"))
    assert siren.routing_key == "event.trigger.siren"
    assert msgpack.unpackb(siren.body)["data"] == ["Siren", "Siren", None, "Gate Contact"]
    tts = protocols.encode("g3", trigger("tts", key="Kitchen TTS"))
    assert tts.routing_key == "event.control.tts" and msgpack.unpackb(tts.body)["data"][0] == "Kitchen TTS"
    assert protocols.encode("g3", trigger(None, key="Weird")) is None


@pytest.mark.parametrize("generation", ["g1", "g2", "g3"])
@pytest.mark.parametrize("duration", [-1, math.nan, math.inf, -math.inf, "2s", True])
def test_durations_a_board_cannot_sleep_are_refused(generation, duration) -> None:
    with pytest.raises(protocols.Refused, match="pulse duration"):
        protocols.encode(generation, trigger(duration=duration))


@pytest.mark.parametrize("generation", ["g1", "g3"])
@pytest.mark.parametrize(
    "params",
    [
        None,
        "",
        "admin:pw192.168.1.20:88",
        "admin:pw@a@192.168.1.20:88",
        "adminpw@192.168.1.20:88",
        "admin:p:w@192.168.1.20:88",
        "admin:pw@192.168.1.20",
        "admin:pw@192.168.1.20:88:9",
        "admin:pw@192.168.1.20:88,554,555",
    ],
)
def test_camera_params_the_snapshot_processor_would_reject_are_refused(generation, params) -> None:
    with pytest.raises(protocols.Refused, match="camera parameters"):
        protocols.encode(generation, trigger("snapshot", params=params, key="Front Camera"))
    # and every one of them would indeed stop or be dropped by the device
    wanted = msgpack.packb(
        {
            "timestamp": 1,
            "output_triggered": {"device_key": "Front Camera", "device_label": "F", "device_params": params},
        }
    )
    try:
        outcome = dev.snapshot_now("event.trigger.snapshot", wanted, {"Front Camera"})
    except dev.DeviceDied:
        outcome = "died"
    assert outcome in (None, "died")  # dropped (AssertionError in CameraConfig) or the process stops


def test_page_problems_name_refusals_and_the_g3_long_pulse() -> None:
    assert protocols.setup_problems("g3", "ioboard", None, None, [None, 1, 30]) == (
        [],
        ["A G3 board pulses its relays one after another: a 30 s pulse holds its other relays for as long."],
    )
    assert protocols.setup_problems("g1", "ioboard", None, None, [None, 30]) == ([], [])
    refusals, _ = protocols.setup_problems(None, "snapshot", "nope", "event.trigger.snapshot", [])
    assert len(refusals) == 2 and "G3 devices listen" in refusals[0] and "'@'" in refusals[1]
    assert protocols.setup_problems("g3", "snapshot", CAMERA, None, []) == ([], [])
