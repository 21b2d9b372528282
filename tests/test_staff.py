"""The staff page's handlers over real HTTP: access control, CSRF, validation beside the field, atomic saves."""

import asyncio
import logging
import os
import stat
import time
from datetime import datetime

import aiohttp
import pytest
import yaml
from conftest import Clock, file_sink_opener
from gpiozero.pins.mock import MockFactory

from kiosk.config import load_config, read_staff_settings
from kiosk.service import Service
from kiosk.staff.auth import PasswordFile
from kiosk.systemd import Notifier

PASSWORD = "correct horse battery"
TIMEOUT = aiohttp.ClientTimeout(total=15)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def operator(tmp_path, server):
    return write_operator(tmp_path, server)


def write_operator(tmp_path, server, extra=""):
    (tmp_path / "key").write_text("sk-original-key\n")
    path = tmp_path / "kiosk.yaml"
    path.write_text(
        f"# the operator's own comment\n"
        f"openai:\n  base_url: {server.url}/v1\n  api_key_file: {tmp_path / 'key'}\n  speed: 1.0\n"
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\napi:\n  port: 0\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'state' / 'pw'}\n"
        f"  settings_file: {tmp_path / 'state' / 'staff.yaml'}\n"
        "buttons:\n  - pin: 17\n    phrase: welcome\n    cooldown_ms: 0\n  - pin: 22\n    action: stop\n"
        "phrases:\n  welcome: Welcome to the hall of minerals.\n  quartz: Quartz is hard.\n" + extra
    )
    return path


@pytest.fixture
async def staff(tmp_path, operator, alsa_file):
    clock = Clock()
    pins = MockFactory()
    service = Service(
        load_config(operator),
        config_path=operator,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=pins,
        notifier=Notifier({}),
        clock=clock,
    )
    await asyncio.wait_for(service.start(), timeout=10)
    base = f"http://127.0.0.1:{service.staff_port}"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http:
        yield service, http, clock, pins
    await service.stop()


async def get(http, path):
    async with http.get(path, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def post(http, path, data, **kwargs):
    async with http.post(path, data=data, allow_redirects=False, **kwargs) as r:
        return r.status, await r.text(), r.headers


async def csrf_of(http, path="/lines"):
    _, html, _ = await get(http, path)
    return html.split('name="csrf" value="')[1].split('"')[0]


async def log_in(http, password=PASSWORD):
    token = await csrf_of(http, "/login")
    return await post(http, "/login", {"csrf": token, "password": password})


def settings_of(service):
    path = service.cfg.staff.settings_file
    return yaml.safe_load(path.read_text()) if path.exists() else None


async def test_without_a_password_only_the_setup_notice_is_shown(staff):
    service, http, _, _ = staff
    for path in ("/", "/status", "/login", "/lines", "/voice", "/status.json"):
        status, html, _ = await get(http, path)
        assert status == 503 and "for 5 seconds; the speaker says a" in html and "Welcome to the hall" not in html
        assert "kiosk passwd" not in html and str(service.cfg.staff.password_file) not in html  # no internal path
    status, _, _ = await post(http, "/lines/add", {"id": "x", "text": "y"})
    assert status == 503 and settings_of(service) is None


async def test_unauthenticated_requests_are_sent_to_login(staff):
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    for path in ("/", "/status", "/lines", "/voice", "/volume", "/lines/welcome/preview.wav"):
        status, _, headers = await get(http, path)
        assert status == 303 and headers["Location"].startswith(("/login", "/status")), path
    assert (await get(http, "/lines"))[2]["Location"] == "/login?next=/lines"  # and back to it after login
    for path in ("/status.json", "/voice/progress.json", "/status/history.json"):
        status, body, _ = await get(http, path)
        assert status == 401 and "log in again" in body, path
    posts = (
        "/lines/add",
        "/lines/welcome/edit",
        "/lines/welcome/delete",
        "/lines/welcome/play",
        "/buttons",
        "/buttons/17/identify",
        "/voice",
        "/volume",
        "/logout",
    )
    base = str(http._base_url)
    for path in posts:  # a plain form goes to the login page, which brings staff back to the page it came from
        status, _, headers = await post(http, path, {"csrf": "x"}, headers={"Referer": f"{base}/lines"})
        assert status == 303 and headers["Location"] == "/login?next=/lines", path
        # the page's own script is told where to log in, so it can keep what was typed first
        status, body, _ = await post(http, path, {"csrf": "x"}, headers={"X-Kiosk-Fetch": "1"})
        assert status == 401 and '"login": "/login"' in body, path
    assert settings_of(service) is None


async def test_login_lockout_and_its_expiry(staff, caplog):
    service, http, clock, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    with caplog.at_level(logging.INFO, logger="kiosk.staff"):
        for _ in range(5):
            status, html, _ = await log_in(http, "guess")
            assert status == 401 and "Wrong password" in html
    assert caplog.text.count("wrong password from 127.0.0.1") == 4
    assert "127.0.0.1 locked out for 300 s" in caplog.text and "guess" not in caplog.text
    status, html, _ = await log_in(http)  # even the right password is refused while locked out
    assert status == 429 and "Too many failed attempts" in html
    clock.now += 301
    status, _, headers = await log_in(http)
    assert status == 303 and headers["Location"] == "/status"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=" in cookie


async def test_session_expires_and_logout_ends_it(staff):
    service, http, clock, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    assert (await get(http, "/status"))[0] == 200
    clock.now += service.cfg.staff.session_hours * 3600 + 1
    assert (await get(http, "/status"))[0] == 303
    await log_in(http)
    token = await csrf_of(http)
    assert (await post(http, "/logout", {"csrf": token}))[0] == 303
    assert (await get(http, "/status"))[0] == 303


async def test_csrf_and_same_origin_are_enforced(staff):
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http)
    assert (await post(http, "/lines/add", {"id": "new", "text": "A line."}))[0] == 403
    assert (await post(http, "/lines/add", {"id": "new", "text": "A line.", "csrf": "forged"}))[0] == 403
    evil = {"Origin": "http://evil.example"}
    assert (await post(http, "/lines/add", {"id": "new", "text": "A line.", "csrf": token}, headers=evil))[0] == 403
    login_token = await csrf_of(http, "/login")
    assert (await post(http, "/login", {"csrf": login_token + "x", "password": PASSWORD}))[0] == 403
    assert settings_of(service) is None


async def test_lines_add_edit_delete_are_validated_saved_and_applied(staff, operator):
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http)
    operator_text = operator.read_text()

    status, html, _ = await post(http, "/lines/add", {"csrf": token, "id": "Bad Id", "text": "Fine."})
    assert status == 400 and 'role="alert">id must be' in html and settings_of(service) is None
    status, html, _ = await post(http, "/lines/add", {"csrf": token, "id": "quartz", "text": "Again."})
    assert status == 400 and "already a line" in html

    script = "Gold <script>alert('x')</script> & silver"
    status, _, headers = await post(http, "/lines/add", {"csrf": token, "id": "gold", "text": script})
    assert status == 303 and headers["Location"] == "/lines"
    assert settings_of(service)["phrases"]["gold"] == script and service.cfg.phrases["gold"] == script
    _, html, _ = await get(http, "/lines")
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; silver" in html

    status, html, _ = await post(http, "/lines/gold/edit", {"csrf": token, "text": "   "})
    assert status == 400 and "text is empty" in html and service.cfg.phrases["gold"] == script
    assert (await post(http, "/lines/gold/edit", {"csrf": token, "text": "Gold is soft."}))[0] == 303
    assert service.cfg.phrases["gold"] == "Gold is soft."
    assert service.cfg.staff.settings_file.with_name("staff.yaml.bak").exists()

    status, html, _ = await post(http, "/lines/welcome/delete", {"csrf": token})
    assert status == 400 and "GPIO 17" in html and "welcome" in service.cfg.phrases
    assert (await post(http, "/lines/gold/delete", {"csrf": token}))[0] == 303
    assert "gold" not in service.cfg.phrases
    assert (await post(http, "/lines/nope/edit", {"csrf": token, "text": "x"}))[0] == 404
    assert operator.read_text() == operator_text  # the operator's file and its comments are never rewritten


async def test_assign_a_line_to_a_button_and_press_it(staff, server):
    service, http, _, pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http)
    status, html, _ = await post(http, "/buttons", {"csrf": token, "button.17": "nope"})
    assert status == 400 and "choose one of the lines" in html
    assert (await post(http, "/buttons", {"csrf": token, "button.17": "quartz"}))[0] == 303
    assert settings_of(service)["button_phrases"] == {"17": "quartz"}
    pins.pin(17).drive_low()
    pins.pin(17).drive_high()
    await asyncio.wait_for(
        _until(lambda: any(r.phrase == "quartz" and r.state == "done" for r in service.speaker.history.values())), 10
    )


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.01)


async def test_voice_settings_and_the_key_never_sent_back(staff, tmp_path):
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/voice")
    form = {
        "csrf": token,
        "engine": "openai",
        "model": "gpt-4o-mini-tts",
        "voice": "sage",
        "instructions": "Slow.",
        "speed": "fast",
        "api_key": "",
    }
    status, html, _ = await post(http, "/voice", form)
    assert status == 400 and "must be a number" in html and settings_of(service) is None
    status, html, _ = await post(http, "/voice", {**form, "speed": "9"})
    assert status == 400 and "9.0 is out of range" in html and settings_of(service) is None

    status, _, _ = await post(http, "/voice", {**form, "speed": "1.2", "api_key": "••••••••"})
    assert status == 303 and (tmp_path / "key").read_text() == "sk-original-key\n"
    assert service.cfg.openai.voice == "sage" and service.cfg.openai.speed == 1.2
    _, html, _ = await get(http, "/voice")
    assert "sk-original-key" not in html and "set; type a new key" in html

    assert (await post(http, "/voice", {**form, "speed": "1.2", "api_key": "sk-replaced"}))[0] == 303
    assert (tmp_path / "key").read_text() == "sk-replaced\n"
    assert stat.S_IMODE(os.stat(tmp_path / "key").st_mode) == 0o600
    _, html, _ = await get(http, "/voice")
    assert "sk-replaced" not in html
    await asyncio.wait_for(_until(lambda: not service.warm["running"]), 10)
    async with http.get("/voice/progress.json") as r:
        progress = await r.json()
    assert progress["total"] == 2 and progress["done"] == 2 and "2 of 2 lines ready" in progress["text"]


async def test_volume_and_quiet_hours(staff):
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/volume")
    status, html, _ = await post(http, "/volume", {"csrf": token, "volume": "loud"})
    assert status == 400 and "whole number" in html
    bad = {"csrf": token, "volume": "60", "quiet.0.start": "25:00", "quiet.0.end": "07:00", "quiet.0.volume": "0"}
    status, html, _ = await post(http, "/volume", bad)
    assert status == 400 and "25:00 is not a time of day (00:00 to 23:59)" in html and settings_of(service) is None
    good = {**bad, "quiet.0.start": "22:00"}
    assert (await post(http, "/volume", good))[0] == 303
    assert service.cfg.audio.volume == 60 and service.cfg.quiet_volume(datetime(2026, 12, 1, 23, 0)) == 0
    assert settings_of(service)["quiet_hours"] == [{"start": "22:00", "end": "07:00", "volume": 0}]


async def test_preview_play_status_json(staff):
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    await asyncio.wait_for(_until(lambda: not service.warm["running"]), 10)
    async with http.get("/lines/welcome/preview.wav") as r:
        wav = await r.read()
        assert r.status == 200 and r.content_type == "audio/wav" and wav[:4] == b"RIFF"
    token = await csrf_of(http)
    assert (await post(http, "/lines/quartz/play", {"csrf": token}))[0] == 303
    await asyncio.wait_for(_until(lambda: any(r.origin == "staff" for r in service.speaker.history.values())), 5)
    async with http.get("/status.json") as r:
        info = await r.json()
    assert info["cache"]["lines_ready"] == 2 and info["engine"]["name"] == "openai"
    _, html, headers = await get(http, "/status")
    assert 'lines_ready">2</span> of <span data-field="lines_configured">2' in html
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"


async def test_attacks_that_must_fail(staff, operator):
    """Path traversal, YAML tags in text, oversized bodies, framing and a forged session cookie."""
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    status, _, headers = await get(http, "/status")
    assert status == 303
    http.cookie_jar.update_cookies({"kiosk_session": "forged-token"})
    assert (await get(http, "/status"))[0] == 303
    await log_in(http)
    token = await csrf_of(http)
    for path in ("/lines/..%2F..%2Fetc%2Fpasswd/preview.wav", "/static/..%2Fapp.py", "/static/../auth.py"):
        status, body, _ = await get(http, path)
        assert status in (403, 404) and "scrypt" not in body and "def " not in body, path
    tagged = "Gold: !!python/object/apply:os.system ['touch /tmp/kiosk-pwned']"
    assert (await post(http, "/lines/add", {"csrf": token, "id": "tagged", "text": tagged}))[0] == 303
    assert load_config(operator).phrases["tagged"] == tagged  # stored and read back as plain text
    assert not os.path.exists("/tmp/kiosk-pwned")
    big = {"csrf": token, "id": "big", "text": "x" * 100_000}
    assert (await post(http, "/lines/add", big))[0] == 413
    _, _, headers = await get(http, "/lines")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


async def test_a_staff_save_and_an_mqtt_volume_at_once_are_both_kept(staff, monkeypatch):
    """Both read the staff settings, change one thing, write them back and reload: one at a time, or the later writer
    would put back what it read before the other's change (the new line, or the volume, would be lost)."""
    service, http, _, _ = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http)
    staff_has_read, loop = asyncio.Event(), asyncio.get_running_loop()

    def slow_read(path):  # the staff page's read takes a while (an SD card under load); runs in a worker thread
        settings = read_staff_settings(path)
        loop.call_soon_threadsafe(staff_has_read.set)
        time.sleep(0.3)
        return settings

    monkeypatch.setattr("kiosk.staff.common.read_staff_settings", slow_read)
    staff_save = asyncio.create_task(post(http, "/lines/add", {"csrf": token, "id": "amber", "text": "Amber glows."}))
    await asyncio.wait_for(staff_has_read.wait(), timeout=5)
    await asyncio.wait_for(service.fleet.control.payload("volume", b"30", "mqtt"), timeout=10)
    assert (await asyncio.wait_for(staff_save, timeout=10))[0] == 303
    saved = settings_of(service)
    assert saved["phrases"]["amber"] == "Amber glows." and saved["audio"]["volume"] == 30
    assert service.cfg.phrases["amber"] == "Amber glows." and service.cfg.audio.volume == 30
