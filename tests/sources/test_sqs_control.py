"""SQS control end to end: real boto3 against moto's server, a real hub on RabbitMQ, and the schema file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import jsonschema
import pytest

from app.core import health
from app.core.channels import Reply
from app.core.settings import Settings
from app.hub import Hub
from app.sources import sqs_control
from app.store import registry
from pylib import threads
from tests.hubtools import Api, ControlConsumer, Device, start_hub
from tests.moto_server import TEST_KEYS, aws_env, moto_server
from tests.support import free_port, wait_for
from tests.test_hub_e2e import BACK, FRONT, IOBOARD_HEARTBEAT, SNAPSHOT_HEARTBEAT
from tests.test_original_meaning import make_original

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "sqs-control.schema.json").read_text())
REGION = "eu-west-1"
VISIBILITY = 2  # seconds before a message that was not deleted is handed out again


def aws(url: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=TEST_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_KEYS["AWS_SECRET_ACCESS_KEY"],
    )


# ---- the schema file and the code agree ----------------------------------------------------------

VALID: list[Any] = [
    {"action": "enable", "device": FRONT},
    {"action": "disable", "device": "Front Camera", "kind": "output"},
    {"action": "disable", "device": "front door motion", "kind": "input", "version": 1},
    {"action": "enable", "device": "  x  "},
    {"action": "enable", "device": "d" * 100},
    {"action": "panic"},
    {"action": "panic", "reason": "intruder in the garden"},
    {"action": "panic", "reason": ""},
    {"action": "panic", "reason": "r" * 255, "version": 1},
    {"action": "panic", "version": 1.0},  # JSON Schema counts 1.0 as the number 1
    {"action": "outputs", "enabled": False},
    {"action": "outputs", "enabled": True, "version": 1},
    # the original's shape: input events
    {"data": {"active_devices": [{"device_key": FRONT}]}},
    {"data": {"active_devices": [{"device_key": FRONT, "event_detail": "IFTTT", "device_label": "x"}]}},
    {"data": {"active_devices": [{"device_key": "k" * 100, "event_detail": ""}], "storage_url": "x"}},
    {"data": {"active_devices": [{"device_key": FRONT}] * 20}},
    {"data": {"active_devices": [{"device_key": FRONT}]}, "timestamp": "2023-11-25T09:07:07.123456+0000"},
    {"data": {"active_devices": [{"device_key": FRONT}]}, "timestamp": "2023-11-25T09:07:07Z"},
]
INVALID: list[Any] = [
    None,
    [],
    [{"action": "panic"}],
    "panic",
    42,
    True,
    {},
    {"action": "explode"},
    {"action": "Panic"},
    {"action": None},
    {"action": ["panic"]},
    {"device": FRONT},
    {"action": "disable"},
    {"action": "disable", "device": ""},
    {"action": "disable", "device": "   "},
    {"action": "disable", "device": "d" * 101},
    {"action": "disable", "device": 7},
    {"action": "disable", "device": None},
    {"action": "disable", "device": FRONT, "kind": "meter"},
    {"action": "disable", "device": FRONT, "kind": None},
    {"action": "disable", "device": FRONT, "minutes": 30},
    {"action": "disable", "device": FRONT, "enabled": False},
    {"action": "panic", "reason": 5},
    {"action": "panic", "reason": "r" * 256},
    {"action": "panic", "device": FRONT},
    {"action": "panic", "extra": 1},
    {"action": "outputs"},
    {"action": "outputs", "enabled": "false"},
    {"action": "outputs", "enabled": 0},
    {"action": "outputs", "enabled": None},
    {"action": "outputs", "enabled": True, "device": FRONT},
    {"action": "panic", "version": 2},
    {"action": "panic", "version": "1"},
    {"action": "panic", "version": True},
    {"action": "panic", "version": None},
    {"data": {}},
    {"data": None},
    {"data": [{"device_key": FRONT}]},
    {"data": {"active_devices": []}},
    {"data": {"active_devices": [{"device_key": FRONT}] * 21}},
    {"data": {"active_devices": [FRONT]}},
    {"data": {"active_devices": [{"device_label": FRONT}]}},
    {"data": {"active_devices": [{"device_key": ""}]}},
    {"data": {"active_devices": [{"device_key": "  "}]}},
    {"data": {"active_devices": [{"device_key": "k" * 101}]}},
    {"data": {"active_devices": [{"device_key": 7}]}},
    {"data": {"active_devices": [{"device_key": FRONT, "event_detail": 5}]}},
    {"data": {"active_devices": [{"device_key": FRONT, "event_detail": "d" * 256}]}},
    {"data": {"active_devices": [{"device_key": FRONT}]}, "extra": 1},
    {"data": {"active_devices": [{"device_key": FRONT}]}, "timestamp": 1700000000},
    {"data": {"active_devices": [{"device_key": FRONT}]}, "timestamp": "yesterday"},
    {"action": "panic", "data": {"active_devices": [{"device_key": FRONT}]}},
    {"Type": "Notification", "Message": "{}"},  # an envelope is unwrapped by decode, never by validate
]


def schema_says(doc: Any) -> bool:
    return jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)


def code_says(doc: Any) -> bool:
    try:
        sqs_control.validate(doc)
    except sqs_control.InvalidMessage:
        return False
    return True


def test_the_schema_file_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    # The limits the code enforces are the ones the file documents.
    defs = SCHEMA["$defs"]
    assert defs["switch"]["properties"]["device"]["maxLength"] == sqs_control.DEVICE_MAX
    assert defs["panic"]["properties"]["reason"]["maxLength"] == sqs_control.REASON_MAX
    assert defs["version"]["const"] == sqs_control.SCHEMA_VERSION
    actions = {a for d in defs.values() for a in d.get("properties", {}).get("action", {}).get("enum", [])}
    actions |= {
        d["properties"]["action"]["const"]
        for d in defs.values()
        if "const" in d.get("properties", {}).get("action", {})
    }
    assert actions == set(sqs_control.ACTIONS)


@pytest.mark.parametrize("doc", VALID, ids=[json.dumps(d)[:60] for d in VALID])
def test_valid_examples_pass_both_the_schema_and_the_code(doc: Any) -> None:
    assert schema_says(doc) and code_says(doc)


@pytest.mark.parametrize("doc", INVALID, ids=[json.dumps(d)[:60] for d in INVALID])
def test_invalid_examples_fail_both_the_schema_and_the_code(doc: Any) -> None:
    assert not schema_says(doc) and not code_says(doc)


def test_decode_unwraps_an_sns_envelope_and_refuses_what_is_not_json() -> None:
    envelope = {"Type": "Notification", "MessageId": "m", "Message": json.dumps({"action": "panic"})}
    assert sqs_control.decode(json.dumps(envelope)) == sqs_control.ControlRequest("panic")
    assert sqs_control.decode('{"action": "disable", "device": " Hall "}').device == "Hall"
    # The original's shape, also inside an SNS envelope, becomes input events.
    legacy = {
        "data": {"active_devices": [{"device_key": "Hall", "event_detail": "IFTTT"}, {"device_key": "Gate"}]}
    }
    sns = {"Type": "Notification", "Message": json.dumps(legacy)}
    expected = sqs_control.ControlRequest(sqs_control.ACTIVATE, devices=(("Hall", "IFTTT"), ("Gate", None)))
    assert sqs_control.decode(json.dumps(legacy)) == sqs_control.decode(json.dumps(sns)) == expected
    stamped = sqs_control.decode(json.dumps({**legacy, "timestamp": "2023-11-25T09:07:07.500000+0000"}))
    assert stamped.timestamp == 1700903227.5
    for body, why in [
        ("", "not JSON"),
        ("not json", "not JSON"),
        ('{"action": "outputs", "enabled": NaN}', "not JSON"),
        ("[" * 5000 + "]" * 5000, "not JSON"),
        (json.dumps({"Type": "SubscriptionConfirmation", "Message": "{}"}), "not a Notification"),
        (json.dumps({"Type": "Notification", "Message": "nope"}), "SNS Message is not JSON"),
        (json.dumps({"Type": "Notification", "Message": {"action": "panic"}}), "without a Message string"),
        (json.dumps({"data": {"active_devices": []}}), "list of 1 to 20 devices"),
        (json.dumps({"action": "panic", "reason": "x" * 20000}), "byte limit"),
    ]:
        with pytest.raises(sqs_control.InvalidMessage, match=why):
            sqs_control.decode(body)


def test_a_huge_body_is_logged_truncated() -> None:
    text = sqs_control.excerpt("x" * 300_000)
    assert len(text) < 300 and text.endswith("(300000 characters)")


def test_a_hub_without_sqs_control_never_imports_boto3() -> None:
    code = "import sys, app.hub; assert 'botocore' not in sys.modules, 'botocore imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# ---- a real hub -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@dataclass
class Rig:
    settings: Settings
    hub: Hub
    api: Api
    sqs: Any
    queue_url: str

    def send(self, body: Any) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=text)

    def in_queue(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
        return sum(int(attrs[n]) for n in names)

    def enabled(self, kind: str, key: str) -> bool:
        return bool(self.api.device(kind, key)["device_enabled"])


def counter(name: str) -> int:
    return health.counters().get(f"sqs_control.{name}", 0)


def state() -> dict[str, Any]:
    return health.components().get(sqs_control.COMPONENT, {})


def listener_alive() -> bool:
    return any(t.name == "SqsControl" and t.is_alive() for t in threads.tracked())


def hub_settings(make_settings: Any, url: str, queue: str) -> Settings:
    env = {"SNS_CONTROL_ENABLED": "true", "SQS_QUEUE": queue, "SQS_WAIT_SECONDS": "1", **aws_env(url, REGION)}
    settings: Settings = make_settings(**env)
    return settings


def make_queue(sqs: Any, name: str) -> str:
    url: str = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": str(VISIBILITY)})["QueueUrl"]
    return url


@pytest.fixture
def rig(make_settings: Any, moto_url: str, unique_name: Any) -> Iterator[Rig]:
    """A hub listening on its own queue, with the remote-monitor and snapshot devices registered."""
    name = unique_name("control")
    sqs = aws(moto_url, "sqs")
    queue_url = make_queue(sqs, name)
    settings = hub_settings(make_settings, moto_url, name)
    hub = start_hub(settings)
    device = Device(settings)
    try:
        api = Api(hub)
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        device.publish("event.heartbeat.snapshot", SNAPSHOT_HEARTBEAT)
        wait_for(lambda: len(api.get("/api/devices")["outputs"]) >= 3)
        wait_for(lambda: state().get("state") == "connected", what="SQS control connected")
        yield Rig(settings, hub, api, sqs, queue_url)
    finally:
        device.close()
        hub.stop()


def test_an_input_is_enabled_and_disabled_through_the_processor(rig: Rig, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="app.engine.config_changes")
    assert not rig.enabled("inputs", FRONT)  # a new input starts disabled
    rig.send({"action": "enable", "device": FRONT})
    wait_for(lambda: rig.enabled("inputs", FRONT), what="input enabled")
    # By label, any case; kind names the table to look in.
    rig.send({"version": 1, "action": "disable", "device": "front door MOTION", "kind": "input"})
    wait_for(lambda: not rig.enabled("inputs", FRONT), what="input disabled")
    audit = [r.getMessage() for r in caplog.records if r.name == "app.engine.config_changes"]
    assert f"configuration change by sqs: input {FRONT!r}: device_enabled False -> True" in audit
    assert f"configuration change by sqs: input {FRONT!r}: device_enabled True -> False" in audit
    assert not rig.enabled("inputs", BACK)
    wait_for(lambda: rig.in_queue() == 0, what="both messages deleted")
    assert counter("handled") == 2 and counter("invalid") == 0


def test_an_output_and_the_outputs_switch(rig: Rig) -> None:
    # "Front Camera" is an input and an output: without kind it is ambiguous, so refused.
    rig.send({"action": "disable", "device": "Front Camera"})
    wait_for(lambda: counter("invalid") == 1, what="ambiguous name refused")
    assert rig.enabled("outputs", "Front Camera")
    rig.send({"action": "disable", "device": "Front Camera", "kind": "output"})
    wait_for(lambda: not rig.enabled("outputs", "Front Camera"), what="output disabled")
    rig.send({"action": "outputs", "enabled": False})
    wait_for(lambda: rig.api.get("/api/outputs-enabled") == {"enabled": False}, what="outputs off")
    rig.send({"action": "outputs", "enabled": True})
    wait_for(lambda: rig.api.get("/api/outputs-enabled") == {"enabled": True}, what="outputs on")
    rig.send({"action": "enable", "device": "front camera", "kind": "output"})
    wait_for(lambda: rig.enabled("outputs", "Front Camera"), what="output enabled")
    # Two inputs with one label: the label is ambiguous, the key is not.
    rig.api.patch("inputs", FRONT, device_label="Door")
    rig.api.patch("inputs", BACK, device_label="Door")
    rig.send({"action": "enable", "device": "door"})
    wait_for(lambda: counter("invalid") == 2, what="ambiguous label refused")
    rig.send({"action": "enable", "device": BACK})
    wait_for(lambda: rig.enabled("inputs", BACK), what="input enabled by key")
    assert not rig.enabled("inputs", FRONT)
    wait_for(lambda: rig.in_queue() == 0)


def test_panic_fires_the_panic_button_as_the_dashboard_does(rig: Rig) -> None:
    consumer = ControlConsumer(rig.settings)
    try:
        rig.api.patch("inputs", registry.PANIC_BUTTON, device_enabled=True)
        rig.api.link(registry.PANIC_BUTTON, "Hallway Buzzer")
        rig.send({"action": "panic", "reason": "intruder in the garden"})
        assert consumer.wait(1)[0][2]["data"] == ["Hallway Buzzer", None]
    finally:
        consumer.close()
    decision = wait_for(lambda: rig.api.decisions(registry.PANIC_BUTTON))[0]
    assert decision["origin"] == f"{rig.settings.device_name} (sqs)" and decision["fired"] is True
    assert decision["event_detail"] == "intruder in the garden"
    wait_for(lambda: rig.in_queue() == 0)


def test_an_sns_notification_is_unwrapped(rig: Rig, unique_name: Any) -> None:
    sns = aws(rig.settings.aws_endpoint_url, "sns")
    topic = sns.create_topic(Name=unique_name("control"))["TopicArn"]
    attrs = rig.sqs.get_queue_attributes(QueueUrl=rig.queue_url, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=attrs["QueueArn"])  # not raw: the envelope
    sns.publish(TopicArn=topic, Message=json.dumps({"action": "enable", "device": BACK}))
    wait_for(lambda: rig.enabled("inputs", BACK), what="input enabled through SNS")
    wait_for(lambda: rig.in_queue() == 0)
    assert counter("handled") == 1


BAD_BODIES = [
    "not json",
    "[1, 2]",
    json.dumps({"action": "explode"}),
    json.dumps({"action": "disable"}),
    json.dumps({"action": "disable", "device": "No Such Device"}),
    json.dumps({"action": "outputs", "enabled": "false"}),
    json.dumps({"action": "panic", "extra": 1}),
    json.dumps({"data": {"active_devices": [{"device_key": "No Such Input"}]}}),
    json.dumps({"Type": "SubscriptionConfirmation", "Message": "{}"}),
    json.dumps({"action": "enable", "device": FRONT, "comment": "z" * 200_000}),
]


def test_invalid_messages_are_deleted_counted_and_the_next_valid_one_works(rig: Rig, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="app.sources.sqs_control")
    for body in BAD_BODIES:
        rig.send(body)
    rig.send({"action": "enable", "device": FRONT})
    wait_for(lambda: rig.enabled("inputs", FRONT), what="the valid message applied")
    wait_for(lambda: counter("invalid") == len(BAD_BODIES), what="every invalid message counted")
    wait_for(lambda: rig.in_queue() == 0, what="every message deleted")
    assert listener_alive() and state()["state"] == "connected"
    logged = [r.getMessage() for r in caplog.records if "invalid message" in r.getMessage()]
    assert len(logged) == len(BAD_BODIES)
    assert max(len(line) for line in logged) < 600  # the 200 KB body is cut short
    assert any("no input or output is called 'No Such Device'" in line for line in logged)
    assert any("no input is called 'No Such Input'" in line for line in logged)  # the original's shape


def test_a_message_the_processor_did_not_take_is_left_for_redelivery(rig: Rig, monkeypatch: Any) -> None:
    def no_answer(*_args: Any, **_kwargs: Any) -> Reply:
        return Reply(ok=False, error="the event processor did not answer in time", status=503)

    # Only the listener's view of the processor goes quiet; the API still reaches it.
    monkeypatch.setattr(sqs_control, "commands", SimpleNamespace(request=no_answer))
    rig.send({"action": "enable", "device": FRONT})
    wait_for(lambda: counter("unanswered") >= 1, what="an unanswered request")
    assert rig.in_queue() == 1 and counter("handled") == 0
    monkeypatch.undo()
    # Handed out again after the visibility timeout, and applied this time.
    wait_for(lambda: rig.enabled("inputs", FRONT), timeout=VISIBILITY + 10, what="redelivered and applied")
    wait_for(lambda: rig.in_queue() == 0)


def test_hub_stop_ends_the_listener(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    assert listener_alive()
    rig.hub.stop(timeout=0.1)  # the listener's own grace (its long poll + 2 s) still applies
    assert not listener_alive() and state() == {**state(), "state": "down", "detail": "stopped"}
    assert not any("still running" in r.getMessage() for r in caplog.records)


def test_a_missing_queue_is_reported_and_picked_up_once_created(
    make_settings: Any, moto_url: str, unique_name: Any
) -> None:
    name = unique_name("control")
    hub = start_hub(hub_settings(make_settings, moto_url, name))
    try:
        down = wait_for(lambda: state().get("state") == "down" and state(), what="queue missing reported")
        assert "SQS_QUEUE" in down["detail"] and name in down["detail"]
        assert listener_alive()
        sqs = aws(moto_url, "sqs")
        queue_url = make_queue(sqs, name)
        wait_for(lambda: state().get("state") == "connected", timeout=20, what="queue found")
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"action": "outputs", "enabled": False}))
        wait_for(lambda: counter("handled") == 1, what="message handled")
    finally:
        hub.stop()


def test_sqs_going_away_and_coming_back(make_settings: Any, unique_name: Any) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def serve() -> ThreadedMotoServer:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        return server

    server = serve()
    name = unique_name("control")
    sqs = aws(url, "sqs")
    queue_url = make_queue(sqs, name)
    hub = start_hub(hub_settings(make_settings, url, name))
    try:
        wait_for(lambda: state().get("state") == "connected", what="listening")
        server.stop()
        down = wait_for(lambda: state().get("state") == "down" and state(), what="outage reported")
        assert "unreachable" in down["detail"] and listener_alive()
        server = serve()  # moto keeps its queues in the process, so the queue is still there
        wait_for(lambda: state().get("state") == "connected", timeout=20, what="reconnected")
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"action": "outputs", "enabled": False}))
        wait_for(lambda: counter("handled") == 1, what="message handled after the outage")
    finally:
        hub.stop()
        server.stop()


# ---- the original's shape, on the original's database -------------------------------------------------

ORIGINAL_ROWS = {
    "input_config": [(1, FRONT, "Motion", "Front Door", 1, 30, 0, None, None, 1, 0, None, 0)],
    "output_config": [(1, "Hallway Buzzer", "Buzzer", "Buzzer", None)],
    "output_link": [(1, 1, 1)],
}


def test_the_original_shape_fires_inputs_of_an_original_database(
    make_settings: Any, moto_url: str, unique_name: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="app.sources.sqs_control")
    path = tmp_path / "original.db"
    make_original(path, ORIGINAL_ROWS)
    name = unique_name("control")
    sqs = aws(moto_url, "sqs")
    queue_url = make_queue(sqs, name)
    env = {
        "SNS_CONTROL_ENABLED": "true",
        "SQS_QUEUE": name,
        "SQS_WAIT_SECONDS": "1",
        **aws_env(moto_url, REGION),
    }
    settings = make_settings(TABLESPACE_PATH=str(path), **env)
    hub = start_hub(settings)
    device, consumer = Device(settings), ControlConsumer(settings)
    try:
        api = Api(hub)
        device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
        wait_for(lambda: state().get("state") == "connected", what="SQS control connected")
        rig = Rig(settings, hub, api, sqs, queue_url)
        # As an IFTTT applet sent it to the original: no action, no timestamp.
        rig.send({"data": {"active_devices": [{"device_key": FRONT, "event_detail": "IFTTT"}]}})
        # The migrated link keeps the original's null pulse.
        assert consumer.wait(1)[0][2]["data"] == ["Hallway Buzzer", None]
        decision = wait_for(lambda: api.decisions(FRONT))[0]
        assert decision["fired"] is True and decision["event_detail"] == "IFTTT"
        assert decision["origin"] == f"{settings.device_name} (sqs)"
        # Through the rules: within the latch the same event does not fire again.
        rig.send({"data": {"active_devices": [{"device_key": FRONT, "event_detail": "IFTTT"}]}})
        wait_for(lambda: len(api.decisions(FRONT)) == 2, what="second decision")
        assert api.decisions(FRONT)[0]["fired"] is False and consumer.quiet(0.5)[1:] == []
        # A timestamp older than MAX_MESSAGE_VALIDITY_SECONDS is stale, as a device's would be.
        rig.send(
            {"data": {"active_devices": [{"device_key": FRONT}]}, "timestamp": "2023-11-25T09:07:07+0000"}
        )
        wait_for(lambda: counter("handled") == 3, what="stale message handled")
        assert consumer.quiet(0.5)[1:] == []
        # Unknown keys are skipped beside a known one; alone they make the message invalid.
        rig.send({"data": {"active_devices": [{"device_key": "Nobody"}]}})
        wait_for(lambda: counter("invalid") == 1, what="unknown input refused")
        wait_for(lambda: rig.in_queue() == 0, what="every message deleted")
        assert any("no input is called 'Nobody'" in r.getMessage() for r in caplog.records)
    finally:
        device.close()
        consumer.close()
        hub.stop()
