"""The pages case: every page and API list of a 2,000-input, 200-output house, timed server-side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.config import BenchError

# Pages case: the page and API timings with 2,000 inputs and 200 outputs (tests/scale.py's house).
PAGE_REPEATS = 3
SCALE_PAGES = (
    "/",
    "/events",
    "/charts",
    "/config/inputs",
    "/config/inputs?page=20",
    "/config/inputs?q=sensor+1",
    "/config/outputs",
    "/config/links",
    "/config/links?id={open_id}",
    "/config/schedule",
    "/api/devices",
    "/api/devices?limit=100&offset=1000",
    "/api/events",
    "/api/schedules",
    "/metrics",
)


def run_pages(workdir: Path) -> dict[str, Any]:
    """Render every page and API list of a 2,000-input, 200-output house (Flask test client, no login)."""
    from app.core.settings import load
    from app.engine.presence import Presence
    from app.store import db, registry
    from app.store.models import InputConfig
    from app.web import create_app
    from tests import scale

    path = workdir / "house.db"
    env = {"TABLESPACE_PATH": str(path), "APP_FLASK_HTTP_PORT": "0", "LOG_LEVEL": "WARNING"}
    settings = load(env=env, dotenv_path=workdir / "no.env")
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions() as session:
        registry.ensure_builtin(session, settings.device_name)
        scale.build_house(session)
        open_id = session.query(InputConfig.id).filter_by(device_key=scale.input_key(1000)).scalar()
    presence = Presence()
    presence.seen("ioboard", [scale.input_key(i) for i in range(0, scale.INPUTS, 2)])
    app = create_app(settings, sessions, presence)
    # Login is measured elsewhere; only the work of each page is timed here.
    app.config.update(WTF_CSRF_ENABLED=False, LOGIN_DISABLED=True)
    client = app.test_client()
    timings: dict[str, Any] = {}
    try:
        for page in SCALE_PAGES:
            url = page.format(open_id=open_id)
            took = []
            size = 0
            for _ in range(PAGE_REPEATS):
                start = time.perf_counter()
                response = client.get(url)
                took.append((time.perf_counter() - start) * 1000)
                size = len(response.data)
                if response.status_code != 200:
                    raise BenchError(f"GET {url} answered {response.status_code}")
            timings[page] = {"median_ms": round(sorted(took)[len(took) // 2], 1), "bytes": size}
    finally:
        engine.dispose()
    return {"inputs": scale.INPUTS, "outputs": scale.OUTPUTS, "decisions": scale.DECISIONS, "pages": timings}


def pages_report(pages: dict[str, Any] | None) -> list[str]:
    if pages is None:
        return []
    if "error" in pages:
        return ["", f"pages case: could not run: {pages['error']}"]
    lines = [
        "",
        f"pages with {pages['inputs']:,} inputs, {pages['outputs']} outputs, {pages['decisions']:,} decisions"
        f" (median of {PAGE_REPEATS}, server side):",
    ]
    for page, t in pages["pages"].items():
        lines.append(f"  {page:40}{t['median_ms']:>10.1f} ms{t['bytes'] / 1024:>10.0f} KiB")
    return lines
