"""The staff page as staff use it, in a real headless Chromium at phone (390×844) and desktop (1280×800) sizes:
answers in place, nothing typed lost, honest health, history charts, and axe-core on every page.

Run with -s to see how long each task takes from the tap to the confirmation on screen. Screenshots of every page
at both sizes land in artifacts/screenshots/ (ignored by git). With KIOSK_REFRESH_SCREENSHOTS=1 the phone-size ones
of status, lines, voice and volume (and login, setup) also refresh docs/screenshots/, which README.md shows; the
default run never changes a tracked file.
"""

import asyncio
import csv
import io
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import Clock, file_sink_opener
from gpiozero.pins.mock import MockFactory

from kiosk.config import load_config
from kiosk.history import Outcome
from kiosk.service import Service
from kiosk.staff.auth import IDLE_S, PasswordFile, Sessions
from kiosk.systemd import Notifier

playwright_api = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
PASSWORD = "correct horse battery"
STEP_MS = 10_000  # bound on every browser wait
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
LED_PIN = 27
EXTRA_LINES = {f"case-{n:02d}": f"Case {n} holds minerals from the northern mines, number {n}." for n in range(1, 11)}


def write_config(tmp_path, server_url):
    config = tmp_path / "kiosk.yaml"
    extra = "".join(f"  {pid}: {text}\n" for pid, text in EXTRA_LINES.items())
    config.write_text(
        f"openai:\n  base_url: {server_url}/v1\nspeech:\n  fallback: none\n"
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\napi:\n  port: 0\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'pw'}\n"
        f"  settings_file: {tmp_path / 'staff.yaml'}\n"
        "buttons:\n"
        f"  - pin: 17\n    name: Entrance case\n    phrase: welcome\n    cooldown_ms: 0\n    led: {LED_PIN}\n"
        "  - pin: 23\n    name: Quartz case\n    phrase: quartz\n    cooldown_ms: 0\n"
        "  - pin: 22\n    name: Stop button\n    action: stop\n"
        "presence:\n  pin: 4\n"
        "phrases:\n  welcome: Welcome to the hall of minerals.\n  quartz: Quartz is the second most common mineral.\n"
        + extra
    )
    return config


@pytest.fixture
async def start_service(tmp_path, server, alsa_file, monkeypatch):
    """Start a real Service (MockFactory pins, ALSA's file plugin, or a device that fails to open)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ux-test-not-secret")
    config = write_config(tmp_path, server.url)
    running = []

    async def start(*, device=None, clock=time.monotonic, password=True):
        pins = MockFactory()
        svc = Service(
            load_config(config),
            config_path=config,
            open_sink=file_sink_opener(device or alsa_file[0]),
            pin_factory=pins,
            notifier=Notifier({}),
            clock=clock,
        )
        await asyncio.wait_for(svc.start(), timeout=10)
        svc.test_pins = pins
        svc.test_stopped = False
        running.append(svc)
        if password:
            PasswordFile(svc.cfg.staff.password_file).set(PASSWORD)
        return svc

    yield start
    for svc in running:
        if not svc.test_stopped:
            await svc.stop()


async def stop(svc):
    svc.test_stopped = True
    await svc.stop()


async def new_page(browser, size=PHONE, init_script=None, **context_options):
    """A page that collects script errors in `page.test_errors`; `context_options` go to the browser context (a
    locale, a time zone), `init_script` runs in every document before its own scripts."""
    context = await browser.new_context(viewport=size, device_scale_factor=1, accept_downloads=True, **context_options)
    if init_script:
        await context.add_init_script(init_script)
    page = await context.new_page()
    page.set_default_timeout(STEP_MS)
    page.set_default_navigation_timeout(STEP_MS)
    page.test_errors = []
    page.on("pageerror", lambda exc: page.test_errors.append(str(exc)))
    # Script errors and CSP refusals count; a 401 or a refused connection the test caused on purpose does not.
    page.on(
        "console",
        lambda msg: (
            msg.type == "error"
            and not msg.text.startswith("Failed to load resource")
            and page.test_errors.append(msg.text)
        ),
    )
    return page


def base(svc):
    return f"http://127.0.0.1:{svc.staff_port}"


async def log_in(page, svc, then="/status"):
    await page.goto(f"{base(svc)}{then}")
    await page.fill("#password", PASSWORD)
    await page.click("form[action='/login'] button[type=submit]")
    await page.wait_for_url(f"{base(svc)}{then}")


async def timed(task, action, done):
    """Milliseconds from `action` (a tap) until `done` is visible; printed for the -s report."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await action()
    await done.wait_for(state="visible")
    ms = (loop.time() - start) * 1000
    print(f"\ntime to done: {task}: {ms:.0f} ms", end="")
    return ms


async def until(predicate, timeout=10):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def press(svc, pin, *, wait=True):
    """A press on the mock pin, waited on (unless `wait` is false) until the line it says is done."""
    before = len(svc.speaker.history)
    svc.test_pins.pin(pin).drive_low()
    svc.test_pins.pin(pin).drive_high()
    if not wait:
        return
    await until(lambda: len(svc.speaker.history) > before)
    req = list(svc.speaker.history.values())[-1]
    await until(lambda: req.state in ("done", "failed", "stopped"))


def line(page, pid):
    return page.locator(f"#line-{pid}")


# -- nothing lost, and answers in place


async def test_save_answers_in_place_and_keeps_the_scroll_position(start_service, browser):
    svc = await start_service()
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/lines")
    card = line(page, "case-07")
    await card.scroll_into_view_if_needed()
    await page.evaluate("window.scrollBy(0, 200)")
    scrolled = await page.evaluate("window.scrollY")
    assert scrolled > 1000, "the line is far down the page"
    await card.locator("textarea").fill("Case 7 holds amethyst geodes from Uruguay.")
    assert await card.locator(".unsaved").inner_text() == "Not saved yet"
    await timed(
        "save a line → 'Saved' beside it",
        lambda: card.get_by_role("button", name="Save").click(),
        card.locator('.form-msg[data-kind="done"]', has_text="Saved"),
    )
    assert abs(await page.evaluate("window.scrollY") - scrolled) <= 2, "the page did not jump"
    assert svc.cfg.phrases["case-07"] == "Case 7 holds amethyst geodes from Uruguay."
    assert await card.locator(".unsaved").count() == 0
    assert page.url.endswith("/lines")

    before = len(svc.speaker.history)
    await timed(
        "play on the speaker → 'Playing on the speaker…'",
        lambda: card.get_by_role("button", name="Play on the speaker").click(),
        card.locator('.form-msg[data-kind="done"]', has_text="Playing on the speaker"),
    )
    assert abs(await page.evaluate("window.scrollY") - scrolled) <= 2
    await until(lambda: any(r.origin == "staff" for r in list(svc.speaker.history.values())[before:]))

    # A long line is accepted with a warning of how long it takes to say; more than ten lines get a filter.
    await card.locator("textarea").fill("A very long line. " * 280)
    warning = card.locator(".length.warning")
    await warning.wait_for()
    assert "5040 characters, about 6 min 18 s to say" in await warning.inner_text()
    await page.fill("#filter", "quartz")
    await page.get_by_text("Showing 1 of 12 lines").wait_for()
    assert await page.locator(".lines > li:visible").count() == 1
    assert not page.test_errors


async def test_two_edits_saving_one_keeps_the_other(start_service, browser):
    svc = await start_service()
    page = await new_page(browser, DESKTOP)
    await log_in(page, svc, "/lines")
    await line(page, "welcome").locator("textarea").fill("Welcome, everyone, to the hall of minerals.")
    await line(page, "quartz").locator("textarea").fill("Quartz is hard: it scratches glass.")
    welcome, quartz = line(page, "welcome"), line(page, "quartz")
    await timed(
        "save one of two edited lines → 'Saved'",
        lambda: welcome.get_by_role("button", name="Save").click(),
        welcome.locator('.form-msg[data-kind="done"]'),
    )
    assert svc.cfg.phrases["welcome"] == "Welcome, everyone, to the hall of minerals."
    # The other edit is still there, marked as not saved, and nothing of it was saved behind the staff's back.
    assert await quartz.locator("textarea").input_value() == "Quartz is hard: it scratches glass."
    assert await quartz.locator(".unsaved").inner_text() == "Not saved yet"
    assert svc.cfg.phrases["quartz"] == "Quartz is the second most common mineral."

    # Leaving the page with it unsaved asks first (the browser's own "leave the page?" question).
    dialogs = []

    async def dismiss(dialog):
        dialogs.append(dialog.type)
        await dialog.dismiss()

    page.on("dialog", lambda d: asyncio.ensure_future(dismiss(d)))
    await page.click("nav >> text=Status")
    await until(lambda: dialogs, timeout=5)
    assert dialogs == ["beforeunload"] and page.url.endswith("/lines")
    await quartz.get_by_role("button", name="Save").click()
    await quartz.locator('.form-msg[data-kind="done"]').wait_for()
    assert svc.cfg.phrases["quartz"] == "Quartz is hard: it scratches glass."
    assert not page.test_errors


async def test_forms_on_every_page_answer_in_place(start_service, browser):
    """The same in-place answers on pages this file's templates do not know: Volume and Account."""
    svc = await start_service()
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/volume")
    await page.fill("input[name='quiet.0.start']", "22:00")
    await page.fill("input[name='quiet.0.end']", "07:00")
    await timed(
        "save quiet hours → 'Saved'",
        lambda: page.click("text=Save volume"),
        page.locator(".form-msg", has_text="Saved"),
    )
    assert svc.cfg.quiet_hours[0].start == "22:00" and page.url.endswith("/volume")

    await page.goto(f"{base(svc)}/account")
    for name, value in (("current", "not the password"), ("new", "a new password!"), ("repeat", "a new password!")):
        await page.fill(f"#{name}", value)
    error = page.locator("#current-error")
    await timed("wrong current password → error beside it", lambda: page.click("text=Change password"), error)
    assert await page.evaluate("document.activeElement.id") == "current" and page.url.endswith("/account")
    assert await page.input_value("#new") == "a new password!"  # what was typed stays
    assert not page.test_errors


async def test_settings_download_and_restore(start_service, browser, tmp_path):
    svc = await start_service()
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/account")
    async with page.expect_download() as download_info:
        await page.click("text=Download the settings")
    saved = tmp_path / "saved.yaml"
    await (await download_info.value).save_as(saved)
    settings = saved.read_text()
    assert settings.startswith("# Written by the kiosk staff page")
    changed = tmp_path / "changed.yaml"
    changed.write_text("audio:\n  volume: 35\n")
    await page.set_input_files("#settings", str(changed))
    done = page.locator(".notice, .form-msg", has_text="Settings restored")
    restore = "form[action='/account/settings'] button[type=submit]"
    await timed("restore the settings → 'Settings restored'", lambda: page.click(restore), done)
    assert svc.cfg.audio.volume == 35
    changed.write_text("phrases:\n  Not An Id: x\n")
    await page.set_input_files("#settings", str(changed))
    await page.click(restore)
    await page.locator("#settings-error", has_text="id must be").wait_for()
    assert svc.cfg.audio.volume == 35 and not page.test_errors


async def test_session_expiry_during_an_edit_keeps_the_text(start_service, browser):
    clock = Clock()
    svc = await start_service(clock=clock)
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/lines")
    typed = "Quartz glows under ultraviolet light — typed slowly, over a long coffee."
    quartz = line(page, "quartz")
    await quartz.locator("textarea").fill(typed)
    clock.now += IDLE_S + 1  # two hours without a request: the session has ended
    await timed(
        "save after the session ended → login page",
        lambda: quartz.get_by_role("button", name="Save").click(),
        page.locator("#password"),
    )
    assert "/login?next=/lines" in page.url
    await page.fill("#password", PASSWORD)
    await timed(
        "log in → back on Lines with the text restored",
        lambda: page.click("form[action='/login'] button"),
        line(page, "quartz").locator('.form-msg[data-kind="note"]'),
    )
    quartz = line(page, "quartz")
    assert page.url.endswith("/lines")
    assert await quartz.locator("textarea").input_value() == typed
    assert svc.cfg.phrases["quartz"] != typed  # not saved behind the staff's back: they press Save
    await quartz.get_by_role("button", name="Save").click()
    await quartz.locator('.form-msg[data-kind="done"]').wait_for()
    assert svc.cfg.phrases["quartz"] == typed
    assert not page.test_errors


def test_sessions_slide_with_activity_up_to_their_maximum():
    clock = Clock()
    sessions = Sessions(8 * 3600, clock, idle_s=2 * 3600)
    session = sessions.create()
    for _ in range(5):  # a request every 1.5 h keeps it going ...
        clock.now += 1.5 * 3600 - 60
        assert sessions.get(session.token) is session
    clock.now += 1.5 * 3600  # ... but never past 8 h from login
    assert sessions.get(session.token) is None
    idle = sessions.create()
    clock.now += 3600
    assert sessions.get(idle.token, touch=False) is idle  # a page polling in the background does not count
    clock.now += 3600 + 1
    assert sessions.get(idle.token) is None


# -- listening, adding, assigning, identifying


async def test_listen_here_loads_plays_stops_one_at_a_time(start_service, browser, server, caplog):
    svc = await start_service()
    await until(lambda: not svc.warm["running"])
    page = await new_page(browser, DESKTOP)
    await log_in(page, svc, "/lines")
    await page.evaluate(
        """() => { window.states = [];
        new MutationObserver((changes) => changes.forEach((c) => window.states.push(c.target.id + ':' +
          c.target.dataset.state))).observe(document.querySelector('main'),
          { subtree: true, attributes: true, attributeFilter: ['data-state'] }); }"""
    )
    welcome, quartz = page.locator("#listen-welcome"), page.locator("#listen-quartz")
    await timed("listen here → playing", welcome.click, page.locator("#listen-welcome[data-state=playing]"))
    assert await welcome.inner_text() == "Stop" and await welcome.get_attribute("aria-pressed") == "true"
    await quartz.click()  # another line: the first stops, only one plays
    await page.locator("#listen-welcome[data-state=stopped]").wait_for()
    await page.locator("#listen-quartz[data-state=playing]").wait_for()
    assert await page.locator("[data-listen][aria-pressed=true]").count() == 1
    await timed("second tap → stopped", quartz.click, page.locator("#listen-quartz[data-state=stopped]"))
    assert await quartz.inner_text() == "Listen here"
    states = await page.evaluate("window.states")
    assert states[:3] == ["listen-welcome:loading", "listen-welcome:playing", "listen-welcome:stopped"]
    assert states[3:] == ["listen-quartz:loading", "listen-quartz:playing", "listen-quartz:stopped"]

    # A new line is streamed while it is synthesized; stopping it half way is not an error on the speaker.
    server.behaviour.realtime_factor = 1.0
    server.behaviour.chunk_sizes = [2400]
    await page.fill("#new-id", "slow")
    await page.fill("#new-text", "A long line that the voice takes its time over. " * 4)
    await page.click("text=Add line")
    await page.locator("#listen-slow").wait_for()
    svc.supervisor.cancel("warm")  # the preview, not the warm-up, synthesizes it
    await timed(
        "listen to a line not yet synthesized → playing",
        page.locator("#listen-slow").click,
        page.locator("#listen-slow[data-state=playing]"),
    )
    await page.locator("#listen-slow").click()
    await page.locator("#listen-slow[data-state=stopped]").wait_for()
    await asyncio.sleep(0.5)  # the abandoned stream ends on the server
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an abandoned preview is not an error"
    assert not page.test_errors


async def test_add_a_line_and_give_it_to_a_button(start_service, browser):
    svc = await start_service()
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/lines")
    await page.fill("#new-id", "Bad Id")
    assert await page.evaluate("document.getElementById('new-id').validity.patternMismatch")  # a valid v-flag regex
    await page.fill("#new-id", "quartz")
    await page.fill("#new-text", "Quartz again.")
    error = page.locator("#new-id-error")
    await timed("add with a taken name → error beside the field", lambda: page.click("text=Add line"), error)
    assert "already a line" in await error.inner_text()
    assert await page.get_attribute("#new-id", "aria-invalid") == "true"
    assert await page.evaluate("document.activeElement.id") == "new-id"
    assert await error.is_visible() and await page.input_value("#new-text") == "Quartz again."

    await page.fill("#new-id", "garnet")
    await page.fill("#new-text", "Garnets <b>glow</b> deep red.")
    await timed(
        "add a line → 'Added'",
        lambda: page.click("text=Add line"),
        page.locator('form[action="/lines/add"] .form-msg[data-kind="done"]', has_text="Added"),
    )
    assert await page.input_value("#text-garnet") == "Garnets <b>glow</b> deep red."
    assert await line(page, "garnet").locator("b").count() == 0  # text, never markup
    assert await page.input_value("#new-id") == ""
    await timed(
        "added line → 'Ready offline'",
        lambda: asyncio.sleep(0),
        page.locator('[data-ready-for="garnet"][data-ready="yes"]', has_text="Ready offline"),
    )

    await page.select_option("#button-17", "garnet")
    assert await page.inner_text("#says-17") == "“Garnets <b>glow</b> deep red.”"
    await timed(
        "give the line to a button → 'Saved'",
        lambda: page.click("text=Save buttons"),
        page.locator('form[action="/buttons"] .form-msg[data-kind="done"]'),
    )
    assert svc.cfg.buttons[0].phrase == "garnet"
    assert await page.inner_text("label[for=button-17]") == "Entrance case says"

    delete = line(page, "case-10").get_by_role("button", name="Delete")
    await delete.click()  # the first tap only asks
    assert await line(page, "case-10").get_by_role("button", name="Tap again to delete").count() == 1
    assert "case-10" in svc.cfg.phrases
    await timed(
        "delete (second tap) → 'Deleted'",
        line(page, "case-10").get_by_role("button", name="Tap again to delete").click,
        page.locator(".toast", has_text="Deleted the line 'case-10'"),
    )
    assert "case-10" not in svc.cfg.phrases and await line(page, "case-10").count() == 0
    assert not page.test_errors


async def test_identify_a_button_and_see_a_press(start_service, browser):
    svc = await start_service()
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/status")
    card = page.locator('[data-button="17"]')
    assert "Entrance case" in await card.inner_text() and "Welcome to the hall of minerals." in await card.inner_text()
    await timed(
        "identify → 'blinking' beside it",
        lambda: card.get_by_role("button", name="Identify").click(),
        card.locator('.form-msg[data-kind="done"]', has_text="blinking"),
    )
    led = svc.test_pins.pin(LED_PIN)
    seen = set()
    for _ in range(40):  # 1.2 s: the LED blinks at 2 Hz
        seen.add(led.state)
        await asyncio.sleep(0.03)
    assert seen == {True, False}, "the LED toggles"

    quartz = page.locator('[data-button="23"]')
    assert "No light to blink" in await quartz.inner_text()
    lit = page.locator('[data-button="23"].lit')
    await timed("press a button → its card lights up", lambda: press(svc, 23, wait=False), lit)
    assert (await quartz.locator('[data-field="pressed_ago"]').inner_text()).startswith("Pressed ")
    assert not page.test_errors


# -- honest health


async def test_headline_with_the_speaker_missing(start_service, browser):
    svc = await start_service(device="hw:99")
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/status")
    headline = page.locator("#headline")
    await page.locator('#headline[data-state="attention"]').wait_for()
    assert (await headline.inner_text()).startswith("Needs attention: Speaker missing")
    assert await page.inner_text('#status [data-field="state"]') == "missing"
    details = page.locator('details[data-field-box="speaker_problem"]')
    assert await details.is_visible() and await details.get_attribute("open") is None  # raw text tucked away
    assert "hw:99" in await details.locator("pre").text_content()
    await shot(page, "status-speaker-missing-phone")
    await page.click("nav >> text=Lines")  # the headline is on every page
    assert (await page.inner_text("#headline")).startswith("Needs attention: Speaker missing")
    assert not page.test_errors


async def test_headline_says_connection_lost_when_the_service_stops(start_service, browser):
    svc = await start_service()
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/status")
    await page.locator("#headline", has_text="All good").wait_for()
    await timed(
        "service stopped → 'The speaker does not answer … retrying…'",
        lambda: stop(svc),
        page.locator('#headline[data-state="lost"]', has_text="The speaker does not answer"),
    )
    assert await page.get_attribute("body", "data-connection") == "lost"
    opacity = await page.evaluate("getComputedStyle(document.getElementById('status')).opacity")
    assert float(opacity) < 0.5, "live values are greyed out, not shown as if current"
    await shot(page, "status-connection-lost-phone")


async def test_headline_says_when_it_is_the_phone_that_has_no_network(start_service, browser):
    svc = await start_service()
    page = await new_page(browser, PHONE)
    await log_in(page, svc, "/status")
    await page.locator("#headline", has_text="All good").wait_for()
    await page.context.set_offline(True)  # Wi-Fi off: the speaker is fine
    await page.locator('#headline[data-state="lost"]', has_text="This phone or computer has no network").wait_for(
        timeout=10_000
    )
    await page.context.set_offline(False)
    await page.locator("#headline", has_text="All good").wait_for(timeout=10_000)


# -- history


async def test_history_charts_and_csv_download(start_service, browser):
    svc = await start_service()
    now = time.time()
    for at in (now - 600, now - 2):  # two visitors came close; the second pressed the buttons
        svc.history.record(Outcome(at, "presence", None, None, None, "approach"))
    for pin in (17, 17, 17, 23, 23):
        await press(svc, pin)
    await svc.history.flush()
    page = await new_page(browser, DESKTOP)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await log_in(page, svc, "/status")
    await page.locator('[data-history][data-drawn="5"]').wait_for(state="attached")
    print(f"\ntime to done: log in → status with history charts drawn: {(loop.time() - start) * 1000:.0f} ms", end="")
    assert await page.locator("#history canvas").count() >= 3
    assert "5 presses in the last 30 days" in await page.inner_text("[data-chart-summary]")
    assert "welcome: 3" in await page.inner_text('[data-legend="per_day"]')
    assert await page.inner_text("[data-approach-summary]") == "Of 2 visitors who came close, 1 pressed a button."
    assert "Visitors who came close: 2" in await page.inner_text('[data-legend="approaches"]')
    assert await page.locator("#history canvas").count() >= 4
    await shot(page, "status-history-desktop")

    async with page.expect_download() as download_info:
        await page.click("#history >> text=Download")
    download = await download_info.value
    assert download.suggested_filename == "exhibit-speaker-history-30-days.csv"
    rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text(encoding="utf-8-sig"))))
    presses = [(r["Button"], r["Line"], r["Outcome"]) for r in rows if r["Who"] == "visitor button"]
    names = {b.pin: b.name or f"GPIO {b.pin}" for b in svc.cfg.buttons}
    assert sorted(presses) == sorted([(names[17], "welcome", "played")] * 3 + [(names[23], "quartz", "played")] * 2)

    for query in ("days=0", "days=abc", "days=3651", "weeks=2"):
        response = await page.request.get(f"{base(svc)}/status/history.csv?{query}")
        assert response.status == 400, query
    assert not page.test_errors


# -- every page: accessibility, tap targets, screenshots


PAGES = ("status", "lines", "voice", "volume", "schedule", "account")
DOC_PAGES = {"setup", "login", "status", "lines", "voice", "volume"}  # the ones README.md shows (and had before)


async def test_every_page_passes_axe_at_both_sizes(start_service, browser):
    svc = await start_service(password=False)
    for pin in (17, 23, 17):
        await press(svc, pin)
    await svc.history.flush()
    await until(lambda: not svc.warm["running"])
    axe = AXE.read_text()
    for size_name, size in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await new_page(browser, size)
        await page.goto(f"{base(svc)}/status")
        await page.get_by_text("Set a staff password first").wait_for()
        await check_page(page, axe, "setup", size_name)
        PasswordFile(svc.cfg.staff.password_file).set(PASSWORD)
        await page.goto(f"{base(svc)}/status")
        await check_page(page, axe, "login", size_name)
        await log_in(page, svc)
        for name in PAGES:
            await page.goto(f"{base(svc)}/{name}")
            if name == "status":
                await page.locator('[data-history][data-drawn="3"]').wait_for(state="attached")
            await check_page(page, axe, name, size_name)
        assert not page.test_errors, page.test_errors
        await page.context.close()
        svc.cfg.staff.password_file.unlink()


async def check_page(page, axe, name, size_name):
    await page.evaluate("document.fonts.ready")
    await page.evaluate(axe)  # from the test, not the page: the page's Content-Security-Policy stays as it is
    result = await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
    violations = [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in result["violations"]]
    print(f"\naxe {name} ({size_name}): {len(violations)} violations", end="")
    assert not violations, violations
    if size_name == "phone":
        small = await page.evaluate(SMALL_TARGETS)
        assert not small, f"tap targets under 44 px on {name}: {small}"
    await shot(page, f"{name}-{size_name}")
    if size_name == "phone" and name in DOC_PAGES and os.environ.get("KIOSK_REFRESH_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / f"{name}-{size_name}.png", DOCS / f"{name}.png")


# Every control staff tap is at least 44×44 px (a checkbox counts with its label, which is the target).
SMALL_TARGETS = """() => [...document.querySelectorAll('a, button, input, select, textarea, summary')]
  .filter((el) => el.type !== 'hidden' && el.getClientRects().length)
  .map((el) => (el.type === 'checkbox' || el.type === 'radio') && el.closest('label') ? el.closest('label') : el)
  .map((el) => [el, el.getBoundingClientRect()])
  .filter(([, r]) => r.height < 43.5 || r.width < 43.5)
  .map(([el, r]) => `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${el.textContent.trim().slice(0, 20)}"`
    + ` ${Math.round(r.width)}x${Math.round(r.height)}`)"""


async def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
