"""The setup code spoken by the speaker (issue #23): staff hold the setup button, the speaker says a six-digit code,
and the code with a new password on the staff page sets the password and logs staff in.

Real parts throughout: a Service with MockFactory pins, ALSA's file plugin, the loopback fake OpenAI server (whose
recorded request `input` is what reached the audio path), the staff app over HTTP, and headless Chromium.
"""

import asyncio
import logging
import re

import aiohttp
import pytest
import yarl
from test_staff_ux import AXE, PHONE, base, check_page, new_page, start_service, until, write_config  # noqa: F401

from kiosk.config import parse_config
from kiosk.errors import ConfigError
from kiosk.setup_code import HOLD_S as HOLD_S_DEFAULT
from kiosk.setup_code import VALID_S, SetupCodes, spoken
from kiosk.speech.chain import EngineChain
from kiosk.staff.auth import PasswordFile

SETUP_PIN = 17  # the first configured button: the default setup button
NEW_PASSWORD = "a new staff password"
HOLD_S = 0.3  # the code's default is 5 s (kiosk.setup_code.HOLD_S); gpiozero's hold timing runs on real time
SPOKEN = re.compile(r"Your setup code is (\d) (\d) (\d), (\d) (\d) (\d)\. I repeat: \1 \2 \3, \4 \5 \6\.")


async def hold_for_code(svc, server) -> str:
    """Hold the setup button past its hold time; the code as the speaker was asked to say it."""
    before = len(server.requests)
    pin = svc.test_pins.pin(SETUP_PIN)
    pin.drive_low()
    try:
        await until(lambda: any(_code(r) for r in server.requests[before:]), timeout=10)
    finally:
        pin.drive_high()
    return next(c for c in map(_code, server.requests[before:]) if c)


def _code(request) -> str | None:
    text = (request.body or {}).get("input", "")
    match = SPOKEN.fullmatch(text)
    return "".join(match.groups()) if match else None


@pytest.fixture
async def speaker(start_service):  # noqa: F811 (the fixture from test_staff_ux)
    svc = await start_service(password=False)
    svc.presses.setup_hold_s = HOLD_S
    svc.presses.connect(svc.cfg.buttons, pin_factory=svc.test_pins)
    return svc


@pytest.fixture
async def http(speaker):
    async with aiohttp.ClientSession(
        headers={"Origin": base(speaker)}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as session:
        yield session


async def setup_form(http, svc) -> str:
    async with http.get(f"{base(svc)}/setup") as response:
        html = await response.text()
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def post_code(http, svc, code, password=NEW_PASSWORD):
    csrf = await setup_form(http, svc)
    form = {"csrf": csrf, "code": code, "new": password, "repeat": password}
    async with http.post(f"{base(svc)}/setup", data=form, allow_redirects=False) as response:
        return response.status, await response.text()


async def test_a_held_button_speaks_a_code_that_sets_the_password_and_logs_in(speaker, http, server, caplog):
    caplog.set_level(logging.DEBUG)
    async with http.get(f"{base(speaker)}/status") as response:
        html = await response.text()
    assert response.status == 503 and "Hold the <strong>Entrance case</strong> button" in html
    assert str(speaker.cfg.staff.password_file) not in html
    code = await hold_for_code(speaker, server)
    status, _ = await post_code(http, speaker, code)
    assert status == 303
    assert PasswordFile(speaker.cfg.staff.password_file).check(NEW_PASSWORD)
    async with http.get(f"{base(speaker)}/status") as response:
        assert response.status == 200 and "Log in" not in await response.text()
    await until(lambda: not speaker.speaking)
    await speaker.history.flush()
    await assert_nowhere(code, speaker, caplog)


async def assert_nowhere(code, svc, caplog):
    spaced = " ".join(code[:3]) + ", " + " ".join(code[3:])
    for record in caplog.records:
        assert code not in record.getMessage() and spaced not in record.getMessage()
    for event in svc.events:
        assert code not in event["text"] and spaced not in event["text"]
    for row in await svc.app.history_rows(1):
        assert code not in str(row) and spaced not in str(row)
    cache_dir = svc.cfg.cache.dir
    for path in cache_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert code.encode() not in data and spaced.encode() not in data
    status = await svc.app.status()
    assert code not in str(status) and spaced not in str(status)


async def test_wrong_expired_and_reused_codes_are_refused(speaker, http, server):
    clock = [0.0]
    speaker.parts.setup_codes = SetupCodes(clock=lambda: clock[0])
    code = await hold_for_code(speaker, server)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert (await post_code(http, speaker, wrong))[0] == 401
    clock[0] = 601.0
    assert (await post_code(http, speaker, code))[0] == 401  # expired
    clock[0] = 0.0
    code = await hold_for_code(speaker, server)
    assert (await post_code(http, speaker, code))[0] == 303
    assert (await post_code(http, speaker, code))[0] == 401  # used once already


async def test_a_new_hold_replaces_the_code_and_a_reset_ends_every_session(speaker, http, server):
    first = await hold_for_code(speaker, server)
    await until(lambda: not speaker.speaking)
    second = await hold_for_code(speaker, server)
    assert (await post_code(http, speaker, first))[0] == 401 or first == second
    assert (await post_code(http, speaker, second))[0] == 303
    old_cookie = http.cookie_jar.filter_cookies(yarl.URL(base(speaker)))["kiosk_session"].value
    third = await hold_for_code(speaker, server)
    async with aiohttp.ClientSession(
        headers={"Origin": base(speaker)}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as other:  # forgot the password
        assert (await post_code(other, speaker, third, "another staff password"))[0] == 303
    async with (
        aiohttp.ClientSession(
            cookies={"kiosk_session": old_cookie}, cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as stale,
        stale.get(f"{base(speaker)}/status", allow_redirects=False) as response,
    ):
        assert response.status == 303  # the old session ended with the reset


async def test_300_parallel_wrong_codes_are_locked_out_like_logins(speaker, server):
    code = await hold_for_code(speaker, server)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    jar, connector = aiohttp.CookieJar(unsafe=True), aiohttp.TCPConnector(limit=30)  # the server bounds connections
    async with aiohttp.ClientSession(headers={"Origin": base(speaker)}, cookie_jar=jar, connector=connector) as http:
        csrf = await setup_form(http, speaker)
        form = {"csrf": csrf, "code": wrong, "new": NEW_PASSWORD, "repeat": NEW_PASSWORD}

        async def guess():
            async with http.post(f"{base(speaker)}/setup", data=form, allow_redirects=False) as response:
                return response.status

        statuses = await asyncio.wait_for(asyncio.gather(*(guess() for _ in range(300))), 60)
        assert statuses.count(401) <= 5 and statuses.count(429) >= 295, sorted(set(statuses))
        assert (await post_code(http, speaker, code))[0] == 429  # even the right code waits out the lockout


async def test_first_visit_in_a_phone_browser(speaker, server, browser):
    page = await new_page(browser, PHONE)
    await page.goto(f"{base(speaker)}/status")
    await page.get_by_text("Set a staff password first").wait_for()
    await check_page(page, AXE.read_text(), "setup-code", "phone")
    code = await hold_for_code(speaker, server)
    await page.fill("#code", code)
    await page.fill("#new", NEW_PASSWORD)
    await page.fill("#repeat", NEW_PASSWORD)
    await page.click("form[action='/setup'] button[type=submit]")
    await page.wait_for_url(f"{base(speaker)}/status")
    await page.locator("form[action='/logout']").wait_for(state="attached")
    await page.context.clear_cookies()  # forgot the password: from the login page to the same form
    await page.goto(f"{base(speaker)}/login")
    await page.click("a[href='/setup']")
    await page.get_by_text("Set a new staff password").wait_for()
    await check_page(page, AXE.read_text(), "setup-reset", "phone")
    assert not page.test_errors, page.test_errors
    await page.context.close()


def test_the_setup_button_must_be_a_configured_buttons_pin():
    buttons = "buttons:\n  - {pin: 17, phrase: a}\n  - {pin: 23, phrase: a}\nphrases:\n  a: A.\n"
    assert parse_config(buttons + "staff:\n  setup_button: 23\n").staff.setup_button == 23
    assert parse_config(buttons).staff.setup_button is None  # the first button's
    with pytest.raises(ConfigError) as info:
        parse_config(buttons + "staff:\n  setup_button: 24\n")
    assert "staff.setup_button: GPIO 24 is no button's pin (buttons: 17, 23)" in str(info.value)


def test_a_code_is_six_digits_said_twice_valid_once_and_for_ten_minutes():
    clock = [0.0]
    codes = SetupCodes(clock=lambda: clock[0])
    code = codes.new()
    assert re.fullmatch(r"\d{6}", code) and SPOKEN.fullmatch(spoken(code))
    assert not codes.use("") and not codes.use("١٢٣٤٥٦") and codes.use(code[:3] + " " + code[3:])
    assert not codes.use(code)  # once
    code = codes.new()
    clock[0] = VALID_S
    assert not codes.use(code)  # expired
    assert HOLD_S_DEFAULT == 5.0


class _Engine:
    """Only its name and where it runs matter here: which engine a line is asked of first."""

    fmt = None

    def __init__(self, name: str, on_device: bool):
        self.name, self.on_device = name, on_device


def test_a_setup_code_is_asked_of_the_voice_on_this_machine_first():
    """The code is a secret for whoever stands at the exhibit: with a local voice it never goes to OpenAI (whose
    requests are kept on its side); without one it still is said (it lives ten minutes, once, on the museum's LAN)."""
    online, local = _Engine("openai", on_device=False), _Engine("piper", on_device=True)
    chain = EngineChain([online, local], failover_s=2.5)
    assert chain.attempts() == [(online, 2.5), (local, None)]  # every other line: the configured order
    assert chain.attempts(private=True) == [(local, 2.5), (online, None)]
    assert EngineChain([online], failover_s=2.5).attempts(private=True) == [(online, None)]


async def test_a_held_button_with_a_local_voice_sends_no_code_to_openai(tmp_path, server, start_service):  # noqa: F811
    config = write_config(tmp_path, server.url)  # the file start_service loads, written again: now with a local voice
    config.write_text(config.read_text().replace("fallback: none", "fallback: piper"))
    svc = await start_service(password=False)
    svc.presses.setup_hold_s = HOLD_S
    svc.presses.connect(svc.cfg.buttons, pin_factory=svc.test_pins)
    before = len(server.requests)
    svc.test_pins.pin(SETUP_PIN).drive_low()
    await until(lambda: any(r.origin == "setup" for r in svc.speaker.history.values()), timeout=10)
    svc.test_pins.pin(SETUP_PIN).drive_high()
    request = next(r for r in svc.speaker.history.values() if r.origin == "setup")
    await until(lambda: request.trace is not None, timeout=20)
    assert request.trace.engine == "piper" and request.trace.error is None, request.trace
    assert not [r for r in server.requests[before:] if _code(r)]
