"""The growth case (issue 17 item 5): the events pages and one activation's cost as the house grows.

A house of 2,000 inputs, 200 outputs and 1,000,000 stored decisions (tests/scale.py), built once and
kept in bench/data/. (a) The events page and GET /api/events, first pages and deep ones, through the
hub's own waitress server with an API token: median and p95 of REQUESTS requests each. (b) The hub's
CPU per activation (user + system of its process over the same paced stream of activations of the
same 20 inputs, until every decision is stored) in a house of 20 inputs and in the big one.
"""

from __future__ import annotations

import http.client
import re
import secrets
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench.clients import ControlConsumer, Publisher
from bench.config import LATENCY_RATE, LEG_CAPS, REPO, BenchError
from bench.devices import make_devices
from bench.hub import Hub, with_hub
from bench.legs import percentile, run_warmup
from bench.processes import cpu_seconds
from bench.report import fmt, verdict

DATA = REPO / "bench" / "data"  # the built house, reused while the schema and its size stay the same
INPUTS, OUTPUTS, DECISIONS = 2000, 200, 1_000_000
ACTIVE_INPUTS = 20  # the inputs activated (and the whole of the small house)
STREAM = 3000  # activations in the measured stream, paced at LATENCY_RATE
REQUESTS = 30  # per page
TARGET_PAGE_MS = 100.0  # p95 of each page
TARGET_CPU_RATIO = 1.25  # "costs the same": the big house's CPU per activation within 25 % of the small one's
# Both hubs alike: room for the 20 bench devices beside the house's 2,000 inputs and 200 outputs.
CAPS = LEG_CAPS | {"MAX_INPUTS": "2100", "MAX_OUTPUTS": "300"}
LEGACY = "/events?page=200 (old link)"  # read by offset (10,000 rows skipped): shown, not a target
# A search text no row holds: the page reads history.SEARCH_ROWS decisions (shown, not a target)
SEARCH = "/events?q= (no match)"
UNTARGETED = (LEGACY, SEARCH)
ADMIN = "admin"  # config/app.conf's APP_ADMIN_USER, whom Hub.authorize makes the token for


def house(log: list[str]) -> Path:
    """The big house's database file, built (a few minutes) when bench/data has none for this schema."""
    from app.core.settings import load
    from app.store import db, registry
    from app.store.schema_head import HEAD_REVISION
    from tests import scale

    path = DATA / f"house-{INPUTS}x{OUTPUTS}-{DECISIONS}-{HEAD_REVISION}.db"
    if path.exists():
        log.append(f"house: {path.relative_to(REPO)} (cached)")
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    building = path.with_suffix(".building")
    building.unlink(missing_ok=True)
    start = time.perf_counter()
    print(f"  building {path.relative_to(REPO)} (once; a few minutes) ...", flush=True)
    settings = load(env={"TABLESPACE_PATH": str(building)}, dotenv_path=DATA / "no.env")
    engine = db.make_engine(f"sqlite:///{building}")
    try:
        db.upgrade(engine)
        with db.session_factory(engine)() as session:
            registry.ensure_builtin(session, settings.device_name)
            scale.build_house(session, inputs=INPUTS, outputs=OUTPUTS, decisions=0)
            scale.add_history(session, DECISIONS, inputs=INPUTS, outputs=OUTPUTS)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # one self-contained file to copy
    finally:
        engine.dispose()
    building.rename(path)
    log.append(f"house: {path.relative_to(REPO)} (built in {time.perf_counter() - start:.0f} s)")
    return path


def _cpu_leg(hub: Hub, result: dict[str, Any]) -> None:
    """Warm up, then STREAM activations at LATENCY_RATE; CPU from before the first to the last stored."""
    devices = make_devices(ACTIVE_INPUTS)
    result["setup"] = hub.set_up(devices)
    publisher = Publisher(hub.exchange, devices)
    try:
        result["warmup"] = run_warmup(hub.exchange, publisher)
        hub.settle()
        consumer = ControlConsumer(hub.exchange)
        consumer.start_and_wait()
        before = cpu_seconds(hub.pid)
        try:
            sent, _lag = publisher.paced(LATENCY_RATE, STREAM)
            consumer.wait_for(STREAM, sent[-1][0])
        finally:
            consumer.stop()
        result["settle_s"] = hub.settle(60.0)
        after = cpu_seconds(hub.pid)
    finally:
        publisher.close()
    if before is None or after is None:
        raise BenchError("the hub's CPU time could not be read")
    result["stream"] = {"sent": STREAM, "received": len(consumer.arrivals), "rate": LATENCY_RATE}
    result["cpu_s"] = round(after - before, 2)
    result["cpu_ms_per_activation"] = round(1000 * (after - before) / STREAM, 3)


def _cookies(response: http.client.HTTPResponse) -> str:
    return "; ".join(c.split(";", 1)[0] for c in response.msg.get_all("Set-Cookie") or [])


def _login(hub: Hub, password: str) -> str:
    """Log in through the login form as a person would; returns the session's Cookie header."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    try:
        conn.request("GET", "/login")
        response = conn.getresponse()
        form = response.read().decode()
        cookie = _cookies(response)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        if csrf is None:
            raise BenchError("the login page has no csrf_token")
        body = urllib.parse.urlencode({"username": ADMIN, "password": password, "csrf_token": csrf.group(1)})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
        conn.request("POST", "/login", body, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 302:
            raise BenchError(f"logging in answered {response.status}")
        return _cookies(response) or cookie
    finally:
        conn.close()


def _timed_get(hub: Hub, path: str, cookie: str) -> tuple[list[float], int]:
    """REQUESTS GETs of path on one keep-alive connection: each one's milliseconds, and the size.
    Pages with the logged-in session, the API with the bench's token."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=30)
    headers = {"Authorization": f"Bearer {hub.token}"} if path.startswith("/api/") else {"Cookie": cookie}
    took, size = [], 0
    try:
        for _ in range(REQUESTS + 1):
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            took.append((time.perf_counter() - start) * 1000)
            if response.status != 200:
                raise BenchError(f"GET {path} answered {response.status}: {body[:200]!r}")
            size = len(body)
    finally:
        conn.close()
    return took[1:], size  # the first one warms the connection and the hub's caches


def _pages(hub: Hub, password: str) -> dict[str, Any]:
    cookie = _login(hub, password)
    deep = _cursor_at(hub, DECISIONS // 2)  # a page half-way through the decisions
    listing = hub.get("/api/devices?q=Sensor+1234&limit=5")["inputs"]
    input_id = listing[0]["id"]
    outputs = hub.get("/api/devices?q=Room+007+Buzzer&limit=5")["outputs"]
    output_id = outputs[0]["id"]
    paths = {
        "/events": "/events",
        "/api/events": "/api/events",
        "/events (deep)": f"/events?before={deep}",
        "/api/events (deep)": f"/api/events?before={deep}",
        "/events?input= (one of 2,000)": f"/events?input={input_id}",
        "/events?output= (one of 200)": f"/events?output={output_id}",
        "/api/events?kind=history": "/api/events?kind=history",
        LEGACY: "/events?page=200",
        SEARCH: "/events?q=no+such+text",
    }
    timings = {}
    for name, path in paths.items():
        took, size = _timed_get(hub, path, cookie)
        ordered = sorted(took)
        timings[name] = {
            "median_ms": round(ordered[len(ordered) // 2], 1),
            "p95_ms": round(percentile(ordered, 95) or 0.0, 1),
            "bytes": size,
        }
    return timings


def _cursor_at(hub: Hub, decision_id: int) -> str:
    """A cursor just above decision decision_id (its own time, the next id): the next page starts with it."""
    from app.store import db, history
    from app.store.models import Decision

    engine = db.make_engine(f"sqlite:///{hub.database}")
    try:
        with db.session_factory(engine)() as session:
            row = session.get(Decision, decision_id)
            if row is None:
                raise BenchError(f"the house has no decision {decision_id}")
            return history.Cursor(row.timestamp, row.id + 1, "decision").text()
    finally:
        engine.dispose()


def run_growth(workdir: Path, mqtt_port: int) -> dict[str, Any]:
    """The small hub, then the big one (its CPU leg, then its pages); each a fresh `python -m app`."""
    log: list[str] = []
    big_db = house(log)
    print("  20 inputs ...", flush=True)
    small = Hub(workdir / "small", mqtt_port=mqtt_port, extra_env=CAPS)
    small.workdir.mkdir(parents=True, exist_ok=True)
    small_result = with_hub(small, lambda r: _cpu_leg(small, r), ("audit.", "processor."))
    print(f"  {INPUTS:,} inputs, {DECISIONS:,} decisions ...", flush=True)
    from app.store.accounts import hash_password

    password = secrets.token_urlsafe(16)
    big = Hub(
        workdir / "big",
        mqtt_port=mqtt_port,
        extra_env=CAPS | {"APP_ADMIN_PASSWORD_HASH": hash_password(password)},
    )
    big.workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(big_db, big.database)

    def big_legs(result: dict[str, Any]) -> None:
        _cpu_leg(big, result)
        try:
            result["pages"] = _pages(big, password)
        except BenchError as exc:  # the CPU figures still stand
            result["pages_error"] = str(exc)

    big_result = with_hub(big, big_legs, ("audit.", "processor."))
    return {
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "decisions": DECISIONS,
        "notes": log,
        "small": small_result,
        "big": big_result,
    }


def growth_targets(growth: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not growth or "error" in growth:
        return {}
    pages = growth["big"].get("pages", {})
    worst = max((t["p95_ms"] for name, t in pages.items() if name not in UNTARGETED), default=None)
    small = growth["small"].get("cpu_ms_per_activation")
    big = growth["big"].get("cpu_ms_per_activation")
    ratio = round(big / small, 2) if small and big else None
    return {
        "growth_events_p95_ms": {
            "value": worst,
            "target": f"<= {TARGET_PAGE_MS:g}",
            "met": None if worst is None else worst <= TARGET_PAGE_MS,
        },
        "growth_cpu_ratio": {
            "value": ratio,
            "target": f"<= {TARGET_CPU_RATIO:g}",
            "met": None if ratio is None else ratio <= TARGET_CPU_RATIO,
        },
    }


def growth_report(growth: dict[str, Any] | None) -> list[str]:
    if growth is None:
        return []
    if "error" in growth:
        return ["", f"growth case: could not run: {growth['error']}"]
    small, big = growth["small"], growth["big"]
    lines = [
        "",
        f"growth: {growth['inputs']:,} inputs, {growth['outputs']} outputs, {growth['decisions']:,} decisions"
        f" ({'; '.join(growth['notes'])})",
        f"  events pages through the hub's server (pages logged in, the API with a token),"
        f" {REQUESTS} requests each:",
        f"  {'page':36}{'median ms':>11}{'p95 ms':>9}{'KiB':>7}",
    ]
    if "pages_error" in big:
        lines.append(f"  could not time the pages: {big['pages_error']}")
    for name, t in big.get("pages", {}).items():
        ok = None if name in UNTARGETED else t["p95_ms"] <= TARGET_PAGE_MS
        lines.append(
            f"  {name:36}{t['median_ms']:>11.1f}{t['p95_ms']:>9.1f}{t['bytes'] / 1024:>7.0f}"
            f"  {verdict(ok)} (p95 <= {TARGET_PAGE_MS:g} ms)"
        )
    lines += [
        f"  CPU per activation ({STREAM:,} activations of {ACTIVE_INPUTS} inputs at {LATENCY_RATE}/s,"
        " until stored):",
        f"  {'house':36}{'ms/activation':>14}{'CPU s':>8}{'received':>10}{'start s':>9}",
    ]
    for name, side in ((f"{ACTIVE_INPUTS} inputs", small), (f"{growth['inputs']:,} inputs + history", big)):
        per = fmt(side.get("cpu_ms_per_activation"), "", 3)
        lines.append(
            f"  {name:36}{per:>14}{fmt(side.get('cpu_s'), '', 2):>8}"
            f"{fmt(side.get('stream', {}).get('received')):>10}{fmt(side.get('startup_s'), '', 2):>9}"
        )
    return lines  # the targets (growth_targets) are printed with the other cases' targets
