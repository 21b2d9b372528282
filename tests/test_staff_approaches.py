"""The staff status page's chart of visitors who came close (the motion sensor) beside the buttons pressed, and how
many of those visitors pressed a button, over real HTTP from a real service."""

import asyncio
import time

import aiohttp
import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory

from kiosk.config import load_config
from kiosk.history import Outcome
from kiosk.history_summary import PRESS_AFTER_APPROACH_S, summarize
from kiosk.service import Service
from kiosk.staff.auth import PasswordFile
from kiosk.systemd import Notifier

PASSWORD = "correct horse battery"
TIMEOUT = aiohttp.ClientTimeout(total=15)
PRESENCE = "presence:\n  pin: 4\n"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


async def start(tmp_path, server, alsa_file, extra, buttons=""):
    path = tmp_path / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server.url}/v1\ncache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\napi:\n  port: 0\ncaptions:\n  port: 0\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'pw'}\n"
        f"  settings_file: {tmp_path / 'staff.yaml'}\n"
        f"buttons:\n  - {{pin: 17, phrase: welcome}}\n{buttons}"
        f"phrases:\n  welcome: Welcome to the hall of minerals.\n{extra}"
    )
    service = Service(
        load_config(path),
        config_path=path,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=MockFactory(),
        notifier=Notifier({}),
    )
    await asyncio.wait_for(service.start(), timeout=10)
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    return service


async def logged_in(http):
    async with http.get("/login") as r:
        token = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
    async with http.post("/login", data={"csrf": token, "password": PASSWORD}, allow_redirects=False) as r:
        assert r.status == 303


def visit(service, at, pressed_after_s=None):
    """A visitor comes close at `at` and, `pressed_after_s` later, presses the button (or never)."""
    service.history.record(Outcome(at, "presence", None, None, None, "approach"))
    if pressed_after_s is not None:
        service.history.record(Outcome(at + pressed_after_s, "button:17", "welcome", "cache", 2.0, "done"))


async def page_and_summary(service):
    base = f"http://127.0.0.1:{service.staff_port}"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http:
        await logged_in(http)
        async with http.get("/status") as r:
            assert r.status == 200
            html = await r.text()
        async with http.get("/status/history.json?days=30") as r:
            assert r.status == 200
            summary = await r.json()
    return html, summary


async def test_approaches_are_charted_beside_presses_with_the_share_that_pressed(server, tmp_path, alsa_file):
    service = await start(tmp_path, server, alsa_file, PRESENCE)
    try:
        now = time.time()
        visit(service, now - 1000, pressed_after_s=10)
        visit(service, now - 800, pressed_after_s=PRESS_AFTER_APPROACH_S + 30)  # too late: not this visitor's
        visit(service, now - 400)  # walked past
        visit(service, now - 200, pressed_after_s=5)
        html, summary = await page_and_summary(service)
        assert summary["presence"] is True
        assert sum(summary["approaches"]) == 4  # today's (and yesterday's, just after midnight)
        assert sum(summary["button_presses"]) == 3 and summary["approaches_pressed"] == 2
        assert summary["total"] == 3  # approaches are not presses
        assert 'data-chart="approaches"' in html and "Visitors who came close" in html
        assert "data-approach-summary" in html and 'data-table="approaches"' in html  # the numbers, as text too
    finally:
        await service.stop()


async def test_without_a_motion_sensor_the_chart_is_left_out(server, tmp_path, alsa_file):
    service = await start(tmp_path, server, alsa_file, "")
    try:
        html, summary = await page_and_summary(service)
        assert summary["presence"] is False and summary["approaches_pressed"] == 0
        assert 'data-chart="approaches"' not in html and 'data-chart="per_day"' in html
    finally:
        await service.stop()


async def test_the_staff_pages_say_what_a_slower_button_and_the_knob_do(server, tmp_path, alsa_file):
    slower = "  - {pin: 26, name: Slower please, action: slower}\n"
    service = await start(tmp_path, server, alsa_file, "knob:\n  a: 20\n  b: 21\n", slower)
    base = f"http://127.0.0.1:{service.staff_port}"
    jar = aiohttp.CookieJar(unsafe=True)
    try:
        async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http:
            await logged_in(http)
            for page in ("/status", "/lines"):
                async with http.get(page) as r:
                    html = await r.text()
                assert r.status == 200 and "Slower please" in html, page
                assert "ays the last line again, more slowly" in html, page
        assert service.knob is not None and service.knob.error is None
    finally:
        await service.stop()


def test_a_press_counts_for_the_visitor_who_came_close_just_before():
    def row(at, origin, outcome="done"):
        return Outcome(at, origin, None, None, None, outcome)

    now = time.time()
    rows = [
        row(now - 900, "button:17"),  # before anyone came close
        row(now - 800, "presence", "approach"),
        row(now - 790, "button:17"),
        row(now - 780, "button:17"),  # the same visitor again: still one
        row(now - 700, "presence", "approach"),
        row(now - 650, "api"),  # not a button at the exhibit
        row(now - 600, "presence", "approach"),
        row(now - 590, "presence", "done"),  # its invitation is not a press
        row(now - 100, "presence", "approach"),
        row(now - 99, "button:17", "quiet_hours"),  # a press that was not spoken is still a press
    ]
    summary = summarize(rows, 2, now)
    assert sum(summary["approaches"]) == 4 and summary["approaches_pressed"] == 2
    assert sum(summary["button_presses"]) == 4
    assert summarize([], 2, now)["approaches_pressed"] == 0
