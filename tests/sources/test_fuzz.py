"""Property-based fuzzing (hypothesis) of every decoder: each input gets a clean refusal or a result.

RabbitMQ bodies go through the RabbitSource, the HeartbeatFilter (real SQLite) and the
EventProcessor's envelope handling; MQTT sensor and meter payloads through the MqttSource's message
handler; SQS bodies through their decoder; API JSON and form fields through the real Flask app.
"Clean" means: no exception escapes, no error counter moves, no thread dies, no HTTP 500.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core import channels, health, limits
from app.core.settings import Settings
from app.engine.presence import Presence
from app.engine.processor import EventProcessor
from app.sources import sqs_control
from app.sources.heartbeat import HeartbeatFilter
from app.sources.mqtt_source import MqttSource
from app.sources.rabbit_source import RabbitSource
from app.store import db, registry
from pylib import inproc, wire
from tests.web.test_api import Hub
from tests.web.test_api import (
    hub as hub,  # the API tests' fixture: a web app on SQLite and a stand-in processor
)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(
            st.text(max_size=12) | st.integers(min_value=-(2**63), max_value=2**63 - 1), inner, max_size=6
        )
    ),
    max_leaves=40,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=40,
)
device_like = st.fixed_dictionaries(
    {"device_key": st.one_of(st.text(max_size=120), values)},
    optional={
        "device_label": values,
        "type": values,
        "location": values,
        "event_detail": values,
        "sample_value": values,
        "sample_values": values,
        "image": values,
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "timestamp": st.one_of(st.just("2023-11-25T09:07:07.123456+0000"), values),
        "data": st.one_of(
            values,
            st.fixed_dictionaries(
                {},
                optional={
                    "device_info": st.one_of(
                        values,
                        st.fixed_dictionaries(
                            {}, optional={"inputs": st.lists(device_like | values, max_size=5)}
                        ),
                    ),
                    "active_devices": st.one_of(values, st.lists(device_like | values, max_size=5)),
                    "storage_url": values,
                },
            ),
        ),
        "inputs": st.lists(device_like, max_size=4),
        "active_devices": st.lists(device_like, max_size=4),
    },
)


def no_errors(*names: str) -> None:
    counters = health.counters()
    assert not {n: counters.get(n) for n in names if counters.get(n)}, counters


class Sink:
    """A real inproc PULL socket a component's PUSH side is connected to."""

    def __init__(self, url: str) -> None:
        self.pull = inproc.bind_pull(url)
        self.push = inproc.connect_push(url)
        self.outbox = inproc.Outbox(self.push)  # as the threads on the event path send

    def frames(self) -> list[bytes]:
        self.outbox.flush()
        out = []
        while (frame := inproc.recv_frame(self.pull, 0)) is not None:
            out.extend(inproc.frames_of(frame))
        return out


@pytest.fixture
def pipeline(tmp_path: Path, make_settings: Callable[..., Settings]) -> Iterator[tuple[Any, ...]]:
    """RabbitSource -> HeartbeatFilter -> EventProcessor, called in this thread, on a real SQLite file."""
    settings = make_settings(TABLESPACE_PATH=str(tmp_path / "fuzz.db"))
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions() as session:
        registry.ensure_builtin(session, settings.device_name)
    source = RabbitSource(settings)
    to_filter = Sink("inproc://fuzz-to-filter")
    source._push = to_filter.outbox
    hb = HeartbeatFilter(
        sessions, Presence(), limits.Caps(inputs_per_device=20, inputs=200), limits.Refusals()
    )
    hb._learn_known(registry.load_known(session=sessions()))
    to_store = Sink("inproc://fuzz-to-store")  # the AuditWriter's end of registrations and last-seen
    hb._store.close(linger=0)
    hb._store = to_store.push
    to_processor = Sink("inproc://fuzz-to-processor")
    processor = EventProcessor(settings, sessions)
    outs = [Sink(f"inproc://fuzz-out-{i}") for i in range(3)]
    processor._out.control, processor._out.audit = outs[0].outbox, outs[1].outbox
    processor._out.config = outs[2].push
    processor._reload()
    outs.append(to_store)  # drained with the processor's outputs
    yield source, to_filter, hb, to_processor, processor, outs
    for sock in (hb._pull, processor._pull):
        sock.close(linger=0)
    engine.dispose()


@FUZZ
@given(body=st.one_of(st.binary(max_size=600), bodies.map(lambda b: msgpack.packb(b, use_bin_type=True))))
def test_rabbitmq_bodies(pipeline: tuple[Any, ...], body: bytes) -> None:
    source, to_filter, hb, to_processor, processor, outs = pipeline
    source._handle("event.notify.ioboard.fuzz", body, time.time())
    for frame in to_filter.frames():
        hb._handle(inproc.decode(frame), frame, to_processor.outbox)
    for frame in to_processor.frames():
        processor._on_envelope(inproc.decode(frame))
    for sink in outs:
        sink.frames()
    no_errors(
        "rabbitmq_source.errors", "heartbeat_filter.db_errors", "processor.errors", "processor.db_errors"
    )


@FUZZ
@given(body=st.binary(max_size=2000))
def test_wire_decoder_on_any_bytes(body: bytes) -> None:
    try:
        decoded = wire.decode_body(body, 1024 * 1024)
    except wire.WireError:
        return
    assert isinstance(decoded["data"], dict)


sensor_inputs = st.dictionaries(
    st.from_regex(r"input_[0-9]{1,7}", fullmatch=True) | st.text(max_size=10),
    st.fixed_dictionaries(
        {},
        optional={"input_label": json_values, "active": json_values, "sample_value": json_values},
    )
    | json_values,
    max_size=8,
)
sensor_payloads = st.builds(
    lambda base, inputs: json.dumps({**base, **inputs}).encode(),
    st.fixed_dictionaries(
        {},
        optional={
            "device_id": st.one_of(st.text(max_size=120), json_values),
            "input_location": st.one_of(st.text(max_size=120), json_values),
            "uptime": json_values,
            "last_minute_metered": json_values,
            "register_reading": json_values,
        },
    ),
    sensor_inputs,
)
topics = st.sampled_from(
    [
        "sensor/garage/esp32_1",
        "meter/electricity",
        "sensor/heartbeat/esp32_1",
        "meter",
        "other/x",
        "sensor//x",
    ]
) | st.text(max_size=30)


@pytest.fixture
def mqtt_source(make_settings: Callable[..., Settings]) -> Iterator[tuple[MqttSource, Sink]]:
    source = MqttSource(make_settings())
    sink = Sink(channels.HEARTBEAT_FILTER)
    source._push = sink.push
    yield source, sink
    source._pull.close(linger=0)


@FUZZ
@given(
    topic=topics,
    payload=st.one_of(
        sensor_payloads, st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())
    ),
)
def test_mqtt_sensor_and_meter_payloads(
    mqtt_source: tuple[MqttSource, Sink], topic: str, payload: bytes
) -> None:
    source, sink = mqtt_source
    source._on_message(topic, payload)
    for frame in sink.frames():
        assert isinstance(inproc.decode(frame), channels.Envelope)
    no_errors("mqtt.errors")


@FUZZ
@given(
    body=st.one_of(
        st.text(max_size=300),
        json_values.map(json.dumps),
        st.builds(lambda doc: json.dumps({"Type": "Notification", "Message": json.dumps(doc)}), json_values),
    )
)
def test_sqs_bodies(body: str) -> None:
    try:
        request = sqs_control.decode(body)
    except sqs_control.InvalidMessage:
        return
    assert request.action in sqs_control.ACTIONS


# ---- the web app: API JSON and form fields ------------------------------------------------------

JSON_BODIES = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(
            [
                "device_enabled",
                "device_label",
                "activation_interval",
                "multi_trigger",
                "multi_trigger_rate",
                "multi_trigger_interval",
                "group_name",
                "info_notify",
                "device_params",
                "trigger_interval",
                "trigger_topic",
                "output_ids",
                "input_ids",
                "enabled",
                "value",
                "mode",
                "auto_schedule",
                "enable",
                "disable",
                "not_before",
                "not_after",
                "all_outputs",
                "level",
                "meter_high_limit",
            ]
        ),
        json_values,
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
)


@FUZZ
@given(
    body=JSON_BODIES,
    target=st.sampled_from(["door", "hall", "panic", "buzzer", "cam", "nothing"]),
    route=st.integers(min_value=0, max_value=8),
)
def test_api_json(
    hub: Hub,  # noqa: F811
    body: bytes,
    target: str,
    route: int,
) -> None:
    row = hub.ids.get(target, 999)
    method, path = [
        ("PATCH", f"/api/inputs/{row}"),
        ("PATCH", f"/api/outputs/{row}"),
        ("PUT", f"/api/inputs/{row}/outputs"),
        ("PUT", f"/api/inputs/{row}/inputs"),
        ("PUT", "/api/outputs-enabled"),
        ("PUT", "/api/quiet-hours"),
        ("PUT", f"/api/schedules/input/{row}"),
        ("POST", f"/api/meters/{row}/reset"),
        ("PUT", "/api/logging"),
    ][route]
    response = hub.client.open(path, method=method, data=body, content_type="application/json")
    assert response.status_code < 500, (method, path, body, response.get_data(as_text=True))
    assert response.is_json


FORM_FIELDS = st.dictionaries(
    st.sampled_from(
        [
            "id",
            "device_label",
            "group_name",
            "activation_interval",
            "multi_trigger",
            "multi_trigger_rate",
            "multi_trigger_interval",
            "info_notify",
            "alert_offline",
            "meter_iot_topic",
            "meter_reading_unit",
            "meter_reading_unit_factor",
            "meter_reading_unit_precision",
            "meter_low_limit",
            "meter_high_limit",
            "device_params",
            "trigger_topic",
            "trigger_interval",
            "device_enabled",
            "output_ids",
            "input_ids",
            "enabled",
            "group",
            "value",
            "mode",
            "confirm",
            "kind",
            "auto_schedule",
            "enable",
            "disable",
            "not_before",
            "not_after",
            "all_outputs",
            "q",
            "page",
        ]
    ),
    st.text(max_size=30) | st.lists(st.text(max_size=8), max_size=3) | st.integers().map(str),
    max_size=8,
)


@FUZZ
@given(
    form=FORM_FIELDS,
    route=st.integers(min_value=0, max_value=10),
    target=st.sampled_from(["door", "hall", "panic", "buzzer", "cam"]),
)
def test_form_fields(
    hub: Hub,  # noqa: F811
    form: dict[str, Any],
    route: int,
    target: str,
) -> None:
    row = hub.ids[target]
    form = {**form, "id": form.get("id", str(row))} if route < 3 else form
    path = [
        "/config/inputs",
        "/config/outputs",
        "/config/links",
        "/config/schedule",
        f"/inputs/{row}/enabled",
        f"/outputs/{row}/enabled",
        "/groups/enabled",
        "/outputs-enabled",
        f"/meters/{row}/reset",
        "/panic",
        "/config/schedule/quiet-hours",
    ][route]
    response = hub.client.post(path, data=form)
    assert response.status_code < 500, (path, form, response.get_data(as_text=True)[:500])
    for page in ("/config/inputs", "/config/outputs", "/config/links", "/events", "/charts"):
        query = {k: v for k, v in form.items() if k in ("q", "page", "id", "input", "output")}
        answer = hub.client.get(page, query_string=query)
        assert answer.status_code < 500, (page, query)
