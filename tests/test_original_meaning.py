"""A database made with the original's schema keeps its meaning: schedules, limits, pulses, layouts, SMS."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.settings import Settings
from app.engine import config_snapshot, meters, rules
from app.engine.presence import Presence
from app.engine.scheduler import AutoScheduler, DailyTrigger, zone_of
from app.outputs.telegram.sms import SmsSender
from app.store import db, original, registry
from app.store.models import InputConfig, MeterConfig, OutputConfig
from app.web import create_app
from tests.store.test_db import ORIGINAL_SCHEMA
from tests.web.test_api import StandInProcessor
from tests.web.test_auth import CSRF_FIELD, FAST_HASH, login

SYDNEY = "Australia/Sydney"  # UTC+11 in December, UTC+10 in June: a schedule moved by the offset shows


def make_original(path: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """A database file as the original left it: its schema, these rows, no alembic_version."""
    with sqlite3.connect(path) as conn:
        conn.executescript(ORIGINAL_SCHEMA.read_text())
        for table, table_rows in rows.items():
            for row in table_rows:
                conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    conn.close()


def upgraded(path: Path) -> sessionmaker[Session]:
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    return db.session_factory(engine)


# input_config: id, key, type, label, customized, activation_interval, auto_schedule, enable, disable,
# device_enabled, multi_trigger, group_name, info_notify
INPUTS = [
    (1, "Front Door Motion (Hallway)", "Motion", "Front Door", 1, 30, 1, "22:00", "06:30", 1, 0, None, 0),
    (2, "Garage Door", "Contact", None, 0, None, 0, None, None, 1, 0, None, 0),
    (3, "Electricity Meter", "meter", None, 0, None, 0, None, None, 1, 0, None, 0),
    (4, "Water Meter", "meter", None, 0, None, 0, None, None, 1, 0, None, 0),
    (5, "Gas Meter", "meter", None, 0, None, 0, None, None, 1, 0, None, 0),
    (6, "Porch Light Sensor", "Motion", None, 0, None, 1, "7:00", "", 1, 0, None, 0),
]
OUTPUTS = [
    (1, "Hallway Buzzer", "Buzzer", "Buzzer", None),
    (2, "SMS", "SMS", "SMS", "Mum;0412 345 678,Dad;+44 7700 900123,Gran;0061 2 9876 5432"),
]
# meter_config: id, input id, meter_value, register_value, meter_reading, topic, low, high, reset value,
# reset additive, unit, factor, precision
METERS = [
    (1, 3, 12, 4321, "4.32 kWh", "meter/electricity", 0, 4500, 0, 0, "kWh", 1000, 2),
    (2, 4, 0, 700, "233 L", "meter/water", 100, 1000, None, None, "L", 3, 0),
    (3, 5, 0, 50, "50", "meter/gas", -5, 80, None, None, "m3", None, None),
]
ORIGINAL = {
    "input_config": INPUTS,
    "output_config": OUTPUTS,
    "output_link": [(1, 1, 1), (2, 1, 2)],
    "meter_config": METERS,
}


@pytest.fixture
def original_db(tmp_path: Path) -> Path:
    path = tmp_path / "event_processor.db"
    make_original(path, ORIGINAL)
    return path


def test_the_adopted_database_is_marked_and_a_fresh_one_is_not(original_db: Path, tmp_path: Path) -> None:
    with upgraded(original_db)() as session:
        assert original.is_adopted(session)
        assert datetime.fromisoformat(original.adopted_at(session) or "").tzinfo is not None
    with upgraded(tmp_path / "fresh.db")() as session:
        assert not original.is_adopted(session)


# ---- 1. schedules ran in UTC ----------------------------------------------------------------------


def test_migrated_schedules_keep_firing_at_the_same_utc_instant(
    original_db: Path, make_settings: Callable[..., Settings]
) -> None:
    sessions = upgraded(original_db)
    with sessions() as session:
        zones = dict(session.execute(select(InputConfig.device_key, InputConfig.auto_schedule_tz)).all())
    # Only rows that hold times get UTC; one without times follows USER_TZ once someone sets them.
    assert zones["Front Door Motion (Hallway)"] == "UTC" and zones["Porch Light Sensor"] == "UTC"
    assert zones["Garage Door"] is None

    settings = make_settings(TABLESPACE_PATH=str(original_db), USER_TZ=SYDNEY)
    scheduler = AutoScheduler(settings, sessions)
    with sessions() as session:
        jobs = scheduler.wanted(session)
    front = {job.hhmm: job for job in jobs.values() if job.device_key == "Front Door Motion (Hallway)"}
    assert set(front) == {"22:00", "06:30"}
    # The original's container ran "22:00" at 22:00 UTC. The hub does too, summer and winter in Sydney.
    for now in (datetime(2026, 12, 6, 12, 0, tzinfo=UTC), datetime(2026, 6, 6, 12, 0, tzinfo=UTC)):
        for hhmm, expected_hour in (("22:00", 22), ("06:30", 6)):
            zone = zone_of(front[hhmm].zone, ZoneInfo(SYDNEY))
            assert zone is not None
            fire = DailyTrigger(hhmm, zone).get_next_fire_time(None, now)
            assert fire is not None
            fire_utc = fire.astimezone(UTC)
            assert (fire_utc.hour, fire_utc.minute) == (expected_hour, int(hhmm[3:]))
            assert timedelta(0) < fire_utc - now <= timedelta(days=1)


def test_a_new_schedule_uses_user_tz(original_db: Path, make_settings: Callable[..., Settings]) -> None:
    sessions = upgraded(original_db)
    with sessions() as session:
        registry.insert(session, registry.Advert("input", "Shed Door", "Shed Door", "Contact", None), "pi")
        session.commit()
        shed = session.scalars(select(InputConfig).where(InputConfig.device_key == "Shed Door")).one()
        assert shed.auto_schedule_tz is None  # its times will be read in USER_TZ


@pytest.fixture
def web(original_db: Path, make_settings: Callable[..., Settings]) -> Iterator[tuple[FlaskClient, Any]]:
    """The dashboard on the upgraded original database, login and CSRF on, a processor applying changes."""
    sessions = upgraded(original_db)
    settings = make_settings(
        TABLESPACE_PATH=str(original_db), USER_TZ=SYDNEY, APP_ADMIN_PASSWORD_HASH=FAST_HASH
    )
    stand_in = StandInProcessor(sessions)
    stand_in.start()
    app = create_app(settings, sessions, Presence())
    yield app.test_client(), sessions
    stand_in.done.set()
    stand_in.join(timeout=5)


def _front(sessions: sessionmaker[Session]) -> InputConfig:
    with sessions() as session:
        return session.scalars(select(InputConfig).where(InputConfig.id == 1)).one()


def test_the_schedule_page_shows_utc_and_converts_to_local_time_keeping_the_instant(
    web: tuple[FlaskClient, Any],
) -> None:
    client, sessions = web
    # Behind login: the convert form is a state change.
    response = client.post("/config/schedule/convert", data={"kind": "input", "id": "1"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert _front(sessions).auto_schedule_tz == "UTC"

    assert login(client).status_code == 302
    page = client.get("/config/schedule").get_data(as_text=True)
    assert ">UTC</span>" in page  # the badge on the migrated row
    assert "Enable at (UTC, HH:MM)" in page and f"Enable at ({SYDNEY}, HH:MM)" in page  # Garage Door: local
    assert "Convert to local time" in page and 'action="/config/schedule/convert#input-1"' in page

    # Without the CSRF token the POST is refused and nothing changes.
    assert client.post("/config/schedule/convert", data={"kind": "input", "id": "1"}).status_code == 400
    assert _front(sessions).auto_schedule_tz == "UTC"

    token = CSRF_FIELD.search(page)
    assert token
    before = datetime.now(UTC)
    response = client.post(
        "/config/schedule/convert", data={"kind": "input", "id": "1", "csrf_token": token.group(1)}
    )
    assert response.status_code == 302 and response.headers["Location"].endswith("/config/schedule#input-1")
    row = _front(sessions)
    assert row.auto_schedule_tz is None and row.auto_schedule
    sydney = ZoneInfo(SYDNEY)
    # The same instants today: 22:00 UTC and 06:30 UTC read as Sydney's wall clock.
    for stored, utc_hhmm in ((row.auto_schedule_enable, "22:00"), (row.auto_schedule_disable, "06:30")):
        hour, minute = (int(p) for p in utc_hhmm.split(":"))
        instant = datetime.combine(before.date(), datetime.min.time(), UTC).replace(hour=hour, minute=minute)
        assert stored == instant.astimezone(sydney).strftime("%H:%M")
    if sydney.utcoffset(datetime(before.year, before.month, before.day)) == timedelta(hours=11):
        assert (row.auto_schedule_enable, row.auto_schedule_disable) == ("09:00", "17:30")
    page = client.get("/config/schedule").get_data(as_text=True)
    assert "Converted the schedule of Front Door from UTC to Australia/Sydney" in page
    assert 'action="/config/schedule/convert#input-1"' not in page


def test_the_api_shows_the_zone_and_sets_it(web: tuple[FlaskClient, Any]) -> None:
    client, sessions = web
    login(client)
    token = CSRF_FIELD.search(client.get("/config/schedule").get_data(as_text=True))
    assert token
    headers = {"X-CSRFToken": token.group(1)}
    devices = {d["device_key"]: d for d in client.get("/api/schedules").get_json()["devices"]}
    front = devices["Front Door Motion (Hallway)"]
    assert front["timezone"] == "UTC" and front["own_timezone"] is True
    assert front["next_transition"]["at"].endswith("+00:00")
    assert devices["Garage Door"]["timezone"] == SYDNEY and devices["Garage Door"]["own_timezone"] is False
    bad = client.put(
        "/api/schedules/input/1", json={"auto_schedule": True, "timezone": "Mars/Base"}, headers=headers
    )
    assert bad.status_code == 400 and bad.get_json()["field"] == "timezone"
    ok = client.put("/api/schedules/input/1", json={"auto_schedule": True, "timezone": None}, headers=headers)
    assert ok.status_code == 200 and ok.get_json()["timezone"] == SYDNEY
    assert _front(sessions).auto_schedule_tz is None


# ---- 2. meter limits compared the raw register --------------------------------------------------------


def _original_fires(register: int, low: int | None, high: int | None) -> bool:
    """The original's range gate (original-behaviour.md §5.3 f): raw register, a 0 limit is no limit."""
    return bool((low and register < low) or (high and register > high))


@pytest.mark.parametrize("meter_id", [1, 2, 3])
def test_the_same_register_crosses_the_same_limit_before_and_after(original_db: Path, meter_id: int) -> None:
    _, _, _, _, _, _, low, high, *_rest, factor, _ = METERS[meter_id - 1]
    sessions = upgraded(original_db)
    with sessions() as session:
        row = session.get(MeterConfig, meter_id)
        assert row is not None
        rule = config_snapshot.meters_rule(row)
    registers = sorted({0, 1, 99, 100, 101, 999, 1000, 1001, 4499, 4500, 4501, 5000, 79, 80, 81, 10**6})
    for register in registers:
        zone = meters.zone(meters.normalise(register, rule), rule)
        assert (zone != meters.INSIDE) == _original_fires(register, low, high), (meter_id, register, zone)


def test_converted_limits_read_as_a_person_expects(original_db: Path) -> None:
    sessions = upgraded(original_db)
    with sessions() as session:
        limits = {m.id: (m.meter_low_limit, m.meter_high_limit) for m in session.scalars(select(MeterConfig))}
        electricity = session.get(MeterConfig, 1)
        assert electricity is not None
        rule = config_snapshot.meters_rule(electricity)
    assert limits[1] == (None, 4.5)  # 0 was "no limit"; 4500 Wh is 4.5 kWh
    assert limits[2] == (100 / 3, 1000 / 3)  # factor 3: the same float the hub's division gives
    assert limits[3] == (-5, 80)  # no factor: unchanged
    assert meters.crossing_detail(meters.ABOVE, rule) == "above 4.5 kWh"


# ---- 3. switch pulses were a null duration --------------------------------------------------------------


def test_migrated_outputs_keep_the_device_default_pulse_and_new_ones_the_latch(
    original_db: Path, tmp_path: Path
) -> None:
    sessions = upgraded(original_db)
    with sessions() as session:
        buzzer = session.get(OutputConfig, 1)
        assert buzzer is not None and buzzer.pulse_seconds is None
        registry.insert(
            session, registry.Advert("output", "Porch Siren", "Porch Siren", "Buzzer", None), "pi"
        )
        session.commit()
        snap = config_snapshot.load_snapshot(session)
    front = snap.inputs_by_key["Front Door Motion (Hallway)"]
    by_key = {o.device_key: o for o in snap.outputs_by_id.values()}
    # The original sent [key, null]; the device then pulsed for its default 1 s (the wire: test_original_e2e).
    assert rules.pulse_duration(by_key["Hallway Buzzer"], front) is None
    # An output the hub registers keeps today's behaviour: the input's activation_interval.
    assert rules.pulse_duration(by_key["Porch Siren"], front) == 30
    # And the hub's own database keeps that behaviour for every output it already had.
    fresh = upgraded(tmp_path / "hub.db")
    with fresh() as session:
        registry.ensure_builtin(session, "hub")
        assert {o.pulse_seconds for o in session.scalars(select(OutputConfig))} == {-1}


# ---- 6. SMS numbers without + ---------------------------------------------------------------------------


@pytest.fixture
def moto_sns(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from tests.moto_server import TEST_KEYS, moto_server

    with moto_server() as url:
        for name, value in TEST_KEYS.items():
            monkeypatch.setenv(name, value)
        try:
            yield url
        finally:
            # moto keeps its backends in this process: leave no SMS behind for another test to find
            requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()


def _sms_numbers(region: str) -> list[str]:
    from moto.sns.models import sns_backends

    # ThreadedMotoServer runs in this process, so its backend is readable directly.
    return [number for number, _ in sns_backends["123456789012"][region].sms_messages.values()]


def test_migrated_sms_numbers_without_plus_get_the_country_code(
    original_db: Path, make_settings: Callable[..., Settings], moto_sns: str, caplog: pytest.LogCaptureFixture
) -> None:
    with upgraded(original_db)() as session:
        sms = session.scalars(select(OutputConfig).where(OutputConfig.device_key == "SMS")).one()
        params = sms.device_params
    region = "ap-southeast-2"
    settings = make_settings(AWS_ENDPOINT_URL=moto_sns, AWS_DEFAULT_REGION=region, SMS_COUNTRY_CODE="61")
    assert settings.sms_country_code == "+61"
    assert SmsSender(settings).send(params, "Front Door (9:05)") == 3
    assert sorted(_sms_numbers(region)) == ["+447700900123", "+61298765432", "+61412345678"]

    # Without a country code the national number is skipped, with a warning that names no number.
    caplog.set_level(logging.WARNING, logger="app.outputs.telegram.sms")
    other = "ca-central-1"
    bare = make_settings(AWS_ENDPOINT_URL=moto_sns, AWS_DEFAULT_REGION=other)
    assert SmsSender(bare).send(params, "Front Door (9:05)") == 2
    assert sorted(_sms_numbers(other)) == ["+447700900123", "+61298765432"]
    warning = [r.getMessage() for r in caplog.records if "SMS_COUNTRY_CODE" in r.getMessage()]
    assert warning and "0412" not in warning[0] and "1 SMS number" in warning[0]


def test_converting_a_schedule_the_original_stored_badly_is_refused_on_the_page(
    web: tuple[FlaskClient, Any],
) -> None:
    """The original's "7:00" and "" (a schedule it would crash on): the page says why and keeps the row."""
    client, sessions = web
    login(client)
    token = CSRF_FIELD.search(client.get("/config/schedule").get_data(as_text=True))
    assert token
    form = {"kind": "input", "id": "6", "csrf_token": token.group(1)}
    response = client.post("/config/schedule/convert", data=form)
    assert response.status_code == 400
    assert "disable is needed when the schedule is on" in response.get_data(as_text=True)
    with sessions() as session:
        porch = session.get(InputConfig, 6)
        assert porch is not None
        assert (porch.auto_schedule_enable, porch.auto_schedule_disable, porch.auto_schedule_tz) == (
            "7:00",
            "",
            "UTC",
        )
    assert client.post("/config/schedule/convert", data={**form, "id": "99"}).status_code == 404
    assert client.post("/config/schedule/convert", data={**form, "kind": "meter"}).status_code == 400
