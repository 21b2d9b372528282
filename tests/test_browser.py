"""The staff page in a real headless Chromium: log in, add a line, give it to a button, press the (mock) button,
watch the status page update. Screenshots of every page land in artifacts/screenshots/ (CI keeps them)."""

import asyncio
from pathlib import Path

import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory

from kiosk.config import load_config
from kiosk.service import Service
from kiosk.staff.auth import PasswordFile
from kiosk.systemd import Notifier

playwright_api = pytest.importorskip("playwright.async_api")

SHOTS = Path(__file__).parent.parent / "artifacts" / "screenshots"
PASSWORD = "correct horse battery"
STEP_MS = 30_000  # bound on every browser wait (generous: CI machines can be slow)


@pytest.fixture
async def service(tmp_path, server, alsa_file, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-browser-test")
    config = tmp_path / "kiosk.yaml"
    config.write_text(
        f"openai:\n  base_url: {server.url}/v1\nspeech:\n  fallback: none\n"
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\napi:\n  port: 0\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'pw'}\n"
        f"  settings_file: {tmp_path / 'staff.yaml'}\n"
        "buttons:\n  - pin: 17\n    phrase: welcome\n    cooldown_ms: 0\n  - pin: 22\n    action: stop\n"
        "phrases:\n  welcome: Welcome to the hall of minerals.\n  quartz: Quartz is the second most common mineral.\n"
    )
    pins = MockFactory()
    svc = Service(
        load_config(config),
        config_path=config,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=pins,
        notifier=Notifier({}),
    )
    await asyncio.wait_for(svc.start(), timeout=10)
    svc.test_pins = pins
    yield svc
    await svc.stop()


@pytest.fixture
async def page(browser):
    context = await browser.new_context(viewport={"width": 420, "height": 900}, device_scale_factor=1)
    page = await context.new_page()
    page.set_default_timeout(STEP_MS)
    return page


async def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_staff_flow_in_a_real_browser(service, page):
    base = f"http://127.0.0.1:{service.staff_port}"
    await page.goto(f"{base}/status")
    await page.get_by_text("Set a staff password first").wait_for()
    await shot(page, "setup")

    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await page.goto(f"{base}/status")
    assert page.url == f"{base}/login"
    await shot(page, "login")
    await page.fill("#password", "wrong password")
    await page.click("button[type=submit]")
    await page.get_by_text("Wrong password.").wait_for()
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/status")

    await page.click("nav >> text=Lines")
    await page.fill("#new-id", "garnet")
    await page.fill("#new-text", "Garnets <b>glow</b> deep red.")
    await page.click("text=Add line")  # saved in place: the page answers without a reload
    await page.locator('form[action="/lines/add"] .form-msg[data-kind=done]').wait_for()
    assert page.url == f"{base}/lines"
    assert await page.input_value("#text-garnet") == "Garnets <b>glow</b> deep red."
    assert await page.locator("#line-garnet b").count() == 0  # shown as text, not markup

    await page.select_option("#button-17", "garnet")
    await page.click("text=Save buttons")
    await page.locator('form[action="/buttons"] .form-msg[data-kind=done]').wait_for()
    assert await page.locator("#button-17").input_value() == "garnet"
    await page.locator('[data-ready-for="garnet"][data-ready="yes"]').wait_for()  # synthesized in the background
    await shot(page, "lines")

    await page.click("nav >> text=Status")
    await page.wait_for_url(f"{base}/status")
    service.test_pins.pin(17).drive_low()
    service.test_pins.pin(17).drive_high()
    await page.locator('[data-field="response_time"]', has_text="ms").wait_for()
    assert await page.locator('[data-field="last_line"]').inner_text() == "Played from a saved copy (offline)"
    await shot(page, "status")

    await page.click("nav >> text=Voice")
    await page.locator("#warm [data-field=warm_text]", has_text="3 of 3 lines ready").wait_for()
    assert "sk-browser-test" not in await page.content()
    await shot(page, "voice")

    await page.click("nav >> text=Volume")
    await page.fill("input[name='quiet.0.start']", "22:00")
    await page.fill("input[name='quiet.0.end']", "07:00")
    await page.click("text=Save volume")
    await page.locator(".form-msg[data-kind=done]").wait_for()
    assert page.url == f"{base}/volume"
    assert service.cfg.quiet_hours[0].start == "22:00"
    await shot(page, "volume")


async def test_staff_preview_of_a_new_line_plays_before_synthesis_ends(service, page, server):
    base = f"http://127.0.0.1:{service.staff_port}"
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await page.goto(f"{base}/login")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/status")
    server.behaviour.realtime_factor = 1.0  # from now on a line takes its own length (here 12 s) to arrive
    server.behaviour.chunk_sizes = [2400]
    text = (
        "Amethyst is a violet quartz. Its colour comes from iron and from natural radiation in the rock. "
        "Heat it and it turns yellow: much of the citrine sold in shops began its life as amethyst."
    )
    await page.goto(f"{base}/lines")
    await page.fill("#new-id", "amethyst")
    await page.fill("#new-text", text)
    await page.click("text=Add line")
    await page.wait_for_url(f"{base}/lines")
    service.supervisor.cancel("warm")  # the preview, not the background warm-up, must be what synthesizes it
    asked = len(server.requests)
    clicked = asyncio.get_running_loop().time()
    await page.click("#listen-amethyst")
    await page.wait_for_selector("#listen-amethyst[data-state=playing]")
    playing_ms = (asyncio.get_running_loop().time() - clicked) * 1000
    assert await page.get_attribute("#listen-amethyst", "data-audio") == "running"
    streaming = server.requests[asked:]
    assert streaming, "the preview did not reach the engine"
    assert streaming[0].outcome == "pending", "the browser played only after the engine had finished the line"
    print(f"staff preview: playing {playing_ms:.0f} ms after the click, engine still synthesizing")
    assert playing_ms < 1500, "a brand-new line should be heard within about a second"
