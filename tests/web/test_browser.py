"""Browser tests: Debian's chromium (Playwright) against a real hub with remote-monitor's devices."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.security import generate_password_hash

from app.core.settings import Settings
from app.store import registry
from app.store.models import Decision, InputConfig, OutputConfig
from tests.hubtools import Device, start_hub
from tests.support import wait_for
from tests.test_hub_e2e import IOBOARD_HEARTBEAT

# TEST_CHROMIUM: another browser binary (and how the test of the CI rule below pretends there is none)
CHROMIUM = os.environ.get("TEST_CHROMIUM") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"
FRONT = "Front Door Motion (Hallway)"

# What is missing, as the one line to act on. Under CI (CI set, as .ci/run runs) that fails the run: a
# green CI must mean the dashboard was driven in a browser. Elsewhere the tests are skipped with this
# line in pytest's summary (-ra).
try:
    from playwright import sync_api
except ImportError:
    sync_api = None
MISSING = (
    "the browser tests need Playwright: make install (it is in the dev extra)"
    if sync_api is None
    else "the browser tests need Debian's chromium: apt-get install chromium"
    if not Path(CHROMIUM).exists()
    else None
)
if MISSING and os.environ.get("CI"):
    pytest.fail(f"CI is set, so this does not skip: {MISSING}", pytrace=False)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture
def rig(make_settings: Callable[..., Settings]) -> Iterator[tuple[Any, str]]:
    settings = make_settings(APP_ADMIN_PASSWORD_HASH=generate_password_hash(PASSWORD))
    hub = start_hub(settings)
    device = Device(settings)
    device.publish("event.heartbeat.ioboard.pi-hallway", IOBOARD_HEARTBEAT)
    assert hub.sessions is not None

    def registered() -> bool:
        with hub.sessions() as s:
            return s.query(OutputConfig).filter_by(device_key="Hallway Buzzer").count() == 1

    wait_for(registered)
    yield hub, f"http://127.0.0.1:{hub.port}"
    device.close()
    hub.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def shot(page: Any, name: str) -> None:
    """Save a screenshot as a test artifact; with UPDATE_SCREENSHOTS=1 also as the README's copy.

    A plain test run must not rewrite tracked files, so the README's pictures change only on request.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")


def watch_console(page: Any) -> list[str]:
    """Console errors and uncaught exceptions of a page; a CSP violation shows up as a console error."""
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    # A listener in the page itself, for violations the console might word differently.
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
    )
    return problems


def log_in(page: Any, base: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{base}/")


def row_id(hub: Any, model: type[Any], key: str) -> int:
    with hub.sessions() as s:
        row = s.query(model).filter_by(device_key=key).one()
        return int(row.id)


def api(page: Any, base: str, method: str, path: str, body: dict[str, Any]) -> None:
    """A JSON API call with the page's session cookie and CSRF token, as the dashboard's own scripts would."""
    page.goto(f"{base}/")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = page.request.fetch(f"{base}{path}", method=method, data=body, headers={"X-CSRFToken": token})
    assert response.ok, (path, response.status, response.text())


def test_log_in_enable_link_fire_panic_and_see_the_decision(rig: tuple[Any, str], browser: Any) -> None:
    hub, base = rig
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems = watch_console(page)
    log_in(page, base)
    response = page.goto(f"{base}/")
    assert "unsafe-inline" not in response.headers["content-security-policy"]

    # Enable an input from its dashboard row; the flash reports the saved state.
    row = page.locator('li.device-row[data-label="Front Door Motion"]')
    row.locator("button[type=submit]").click()
    page.wait_for_url(f"{base}/")
    assert "Front Door Motion is now enabled." in page.inner_text(".alert")
    assert "On" in row.locator("button[type=submit]").inner_text()

    # Link the panic button to the buzzer on the Links page, as a person would.
    panic = row_id(hub, InputConfig, registry.PANIC_BUTTON)
    buzzer = row_id(hub, OutputConfig, "Hallway Buzzer")
    page.goto(f"{base}/config/links?id={panic}")
    card = page.locator(f"#links-{panic}")
    card.locator(f"#links-{panic}-out-{buzzer}").check()
    card.locator("button[type=submit]").first.click()
    page.wait_for_load_state()
    assert page.locator(f"#links-{panic}-out-{buzzer}").is_checked()
    shot(page, "links")
    # A new install's panic button is not armed; arm it from the dashboard, as a person would.
    page.goto(f"{base}/")
    state = page.locator(".panic-state")
    assert "not armed" in state.inner_text() and "triggers Hallway Buzzer" in state.inner_text()
    state.locator("button[type=submit]").click()
    page.wait_for_url(f"{base}/")
    assert "Panic Button is now enabled." in page.inner_text(".alert")
    assert page.locator(".panic-state").get_attribute("data-armed") == "yes"

    # Fire the panic button: the JS confirm dialog asks, and accepting it sends confirm=yes.
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("button.panic-button")
    page.wait_for_url(f"{base}/")
    assert dialogs == ["Fire the panic button now?"]
    assert "Panic button fired: triggered Hallway Buzzer." in page.inner_text(".alert")
    shot(page, "dashboard")

    def decided() -> bool:
        with hub.sessions() as s:
            return s.query(Decision).filter_by(input_key=registry.PANIC_BUTTON).count() == 1

    wait_for(decided)
    page.goto(f"{base}/events")
    event = page.locator("li.event-row").first
    assert "Panic Button" in event.inner_text()
    assert "fired" in event.inner_text() and "Hallway Buzzer: triggered" in event.inner_text()
    shot(page, "events")

    page.goto(f"{base}/charts")
    assert page.locator(".chart-hourly svg").count() >= 1
    # The legend's colours come from app.css now that inline style attributes are refused.
    assert page.eval_on_selector(".legend-fired", "e => getComputedStyle(e).color") == "rgb(220, 53, 69)"
    shot(page, "charts")
    for path in (
        "/config/inputs",
        "/config/outputs",
        "/config/links",
        "/config/schedule",
        "/settings/tokens",
    ):
        page.goto(f"{base}{path}")
    # The tokens page's revoke confirmation is a data-confirm now, not an inline onsubmit.
    page.fill("#name", "browser test")
    page.click("form[action$='/settings/tokens'] button[type=submit]")
    page.wait_for_selector("#new-token")
    page.focus("#new-token")
    assert page.evaluate("document.activeElement.selectionEnd - document.activeElement.selectionStart") > 10
    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("form[action*='/revoke'] button[type=submit]")
    assert asked == ["Revoke this token? Scripts using it will stop working."]
    assert "revoked" not in page.inner_text("table")
    assert problems == [], problems  # no CSP violation, no script error on any page
    context.close()


def test_panic_confirmation_page_without_javascript(rig: tuple[Any, str], browser: Any) -> None:
    hub, base = rig
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    log_in(page, base)
    page.click("button.panic-button")
    page.wait_for_url(f"{base}/panic")
    assert "Fire the panic button?" in page.inner_text("main")
    page.click("text=Yes, fire it")
    page.wait_for_url(f"{base}/")
    # The panic button is registered disabled, so the hub records and reports why it did not fire.
    assert "The panic button did not fire: disabled" in page.inner_text(".alert")
    context.close()


def test_dashboard_fits_a_phone(rig: tuple[Any, str], browser: Any) -> None:
    _, base = rig
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    log_in(page, base)
    for path in ("/", "/events", "/charts"):
        page.goto(f"{base}{path}")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px on a phone"
    page.goto(f"{base}/")
    assert page.locator("button.panic-button").bounding_box()["width"] > 300
    shot(page, "phone-dashboard")
    context.close()


def test_output_generation_is_shown_and_overridden_with_a_warning(rig: tuple[Any, str], browser: Any) -> None:
    hub, base = rig
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log_in(page, base)
    buzzer = row_id(hub, OutputConfig, "Hallway Buzzer")
    front = row_id(hub, InputConfig, FRONT)
    api(page, base, "PATCH", f"/api/inputs/{front}", {"activation_interval": 30})
    api(page, base, "PUT", f"/api/inputs/{front}/outputs", {"output_ids": [buzzer]})

    page.goto(f"{base}/config/outputs?id={buzzer}")
    card = page.locator(f"#output-{buzzer}")
    # the heartbeat came in the 2023 nested layout from pi-hallway
    assert (
        "G1 (2023, nested data), detected from device pi-hallway."
        in card.locator(f"#output-{buzzer}-speaks").inner_text()
    )
    card.locator(f"#output-{buzzer}-generation_override").select_option("g3")
    card.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert "Saved Hallway Buzzer" in page.locator(".alert-success").inner_text()
    warning = page.locator(".alert-warning").inner_text()
    assert "A G3 board pulses its relays one after another: a 30 s pulse" in warning
    assert page.locator(f"#output-{buzzer}-generation_override").input_value() == "g3"
    assert "set by hand; heard speaking G1" in page.locator(f"#output-{buzzer}-speaks").inner_text()
    with hub.sessions() as s:
        assert s.get(OutputConfig, buzzer).generation_override == "g3"
    shot(page, "output-generation")
    context.close()


def test_convert_a_migrated_utc_schedule_to_local_time(
    make_settings: Callable[..., Settings], browser: Any, tmp_path: Path
) -> None:
    """A schedule from the original's database shows as UTC; one click moves it to USER_TZ, same instants."""
    from tests.test_original_meaning import make_original

    path = tmp_path / "original.db"
    row = (1, FRONT, "Motion", "Front Door", 1, 30, 1, "22:00", "06:30", 1, 0, None, 0)
    make_original(path, {"input_config": [row]})
    settings = make_settings(
        TABLESPACE_PATH=str(path),
        USER_TZ="Asia/Kolkata",
        APP_ADMIN_PASSWORD_HASH=generate_password_hash(PASSWORD),
    )
    hub = start_hub(settings)
    try:
        base = f"http://127.0.0.1:{hub.port}"
        page = browser.new_page()
        log_in(page, base)
        page.goto(f"{base}/config/schedule")
        card = page.locator("#input-1")
        assert card.locator("summary .badge", has_text="UTC").count() == 1
        card.locator("summary").click()
        assert "Enable at (UTC, HH:MM)" in card.inner_text()
        card.locator("text=Convert to local time").click()
        page.wait_for_url(f"{base}/config/schedule#input-1")
        # Kolkata is UTC+5:30 all year: 22:00 UTC is 03:30 there, 06:30 UTC is 12:00.
        assert "enable 22:00 → 03:30, disable 06:30 → 12:00" in page.inner_text(".alert")
        with hub.sessions() as s:
            front = s.query(InputConfig).filter_by(device_key=FRONT).one()
            assert (front.auto_schedule_enable, front.auto_schedule_disable, front.auto_schedule_tz) == (
                "03:30",
                "12:00",
                None,
            )
        assert page.locator("#input-1 summary .badge", has_text="UTC").count() == 0
        page.close()
    finally:
        hub.stop()


def test_long_lists_page_and_filter_in_the_browser(rig: tuple[Any, str], browser: Any) -> None:
    """A house of 120 more inputs: the inputs and links pages go page by page, the filter finds one."""
    hub, base = rig
    with hub.sessions() as s:
        s.add_all(
            InputConfig(device_key=f"Extra {i:03d}", device_label=f"Extra {i:03d}", device_type="Motion")
            for i in range(120)
        )
        s.commit()
    extra_42 = row_id(hub, InputConfig, "Extra 042")
    buzzer = row_id(hub, OutputConfig, "Hallway Buzzer")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    log_in(page, base)

    page.goto(f"{base}/config/inputs")
    assert "page 1 of 3" in page.inner_text(".list-count")
    first = page.locator("details.config-card").first.get_attribute("id")
    assert page.locator("details.config-card").count() == 50
    page.click(".list-pages a[rel=next]")
    page.wait_for_url(f"{base}/config/inputs?page=2")
    assert "page 2 of 3" in page.inner_text(".list-count")
    assert page.locator("details.config-card").first.get_attribute("id") != first

    page.fill("#filter-q", "extra 04")
    page.click(".list-filter button[type=submit]")
    page.wait_for_load_state()
    assert "10 inputs matching" in page.inner_text(".list-count")
    assert page.locator("details.config-card").count() == 10

    # The links page of a large house: a summary per input, the editor once it is opened.
    page.goto(f"{base}/config/links")
    assert page.locator("input[type=checkbox]").count() == 0
    card = page.locator(f"#links-{extra_42}")
    card.locator("summary").click()
    card.locator("a.edit-links").click()
    page.wait_for_load_state()
    editor = page.locator(f"#links-{extra_42}")
    assert editor.get_attribute("open") is not None
    editor.locator(f"#links-{extra_42}-out-{buzzer}").check()
    editor.locator("button[type=submit]").click()
    page.wait_for_load_state()
    assert "Saved Extra 042: triggers Hallway Buzzer" in page.inner_text(".alert")
    with hub.sessions() as s:
        from app.store.models import OutputLink

        assert s.query(OutputLink).filter_by(input_device_id=extra_42, output_device_id=buzzer).count() == 1

    # The dashboard goes page by page as well.
    page.goto(f"{base}/")
    assert page.locator("li.device-row").count() == 50 + 2  # 50 inputs, the buzzer and the SMS output
    page.locator(".list-pages a[rel=next]").first.click()
    page.wait_for_load_state()
    assert "page=2" in page.url and page.locator("li.device-row").count() > 1
    context.close()
