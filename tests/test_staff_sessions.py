"""Staff sessions outlive a restart of the service, not a reboot, a new password, or their own deadlines; the file
that keeps them logs nobody in by itself."""

import asyncio
import json
import stat

import aiohttp
from conftest import Clock, file_sink_opener
from gpiozero.pins.mock import MockFactory
from test_staff import PASSWORD, TIMEOUT, log_in, operator  # noqa: F401 (a fixture)

from kiosk.config import load_config
from kiosk.service import Service
from kiosk.staff.app import SESSIONS_FILE
from kiosk.staff.auth import PasswordFile, Sessions
from kiosk.staff.session_store import SessionStore
from kiosk.systemd import Notifier


def store_in(tmp_path, boot="boot-1"):
    (tmp_path / "boot_id").write_text(boot + "\n")
    password = tmp_path / "staff.passwd"
    if not password.exists():
        PasswordFile(password).set(PASSWORD)
    return SessionStore(tmp_path / SESSIONS_FILE, lambda: password, boot_id=tmp_path / "boot_id")


def test_a_session_outlives_a_restart_and_the_file_holds_no_token(tmp_path):
    clock = Clock()
    first = Sessions(3600, clock, idle_s=600, store=store_in(tmp_path))
    session = first.create()
    again = Sessions(3600, clock, idle_s=600, store=store_in(tmp_path))
    restored = again.get(session.token)
    assert restored is not None and restored.csrf == session.csrf
    path = tmp_path / SESSIONS_FILE
    assert session.token not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert again.get("another-token") is None


def test_a_reboot_a_new_password_logout_and_the_deadlines_end_sessions(tmp_path):
    clock = Clock()
    sessions = Sessions(3600, clock, idle_s=600, store=store_in(tmp_path))
    kept, ended = sessions.create(), sessions.create()
    sessions.end(ended.token)
    after = Sessions(3600, clock, idle_s=600, store=store_in(tmp_path))
    assert after.get(ended.token) is None and after.get(kept.token) is not None

    assert Sessions(3600, clock, idle_s=600, store=store_in(tmp_path, boot="boot-2")).get(kept.token) is None
    clock.now += 601  # idle past its deadline
    assert Sessions(3600, clock, idle_s=600, store=store_in(tmp_path)).get(kept.token) is None

    clock.now = 1000.0
    PasswordFile(tmp_path / "staff.passwd").set("a new password for the staff")  # kiosk passwd, or a setup code
    assert Sessions(3600, clock, idle_s=600, store=store_in(tmp_path)).get(kept.token) is None


def test_a_damaged_sessions_file_logs_everyone_out_and_nothing_else(tmp_path):
    store = store_in(tmp_path)
    for junk in (
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"boot": "boot-1"}',
        b"{" * 100_000,
        json.dumps({"sessions": [1]}).encode(),
    ):
        (tmp_path / SESSIONS_FILE).write_bytes(junk)
        assert Sessions(3600, Clock(), store=store).create() is not None  # and a new login works
    (tmp_path / SESSIONS_FILE).write_text(
        json.dumps(
            {
                "boot": "boot-1",
                "password": store._password(),
                "sessions": [
                    {"digest": "x", "csrf": "c", "expires": 1e9, "idle_until": 1e9},  # not a digest
                    {"digest": "a" * 64, "csrf": "c", "expires": "NaN", "idle_until": 1e9},
                ],
            }
        )
    )
    assert store.load() == []


async def start(operator_path, alsa_file):
    service = Service(
        load_config(operator_path),
        config_path=operator_path,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=MockFactory(),
        notifier=Notifier({}),
    )
    await asyncio.wait_for(service.start(), timeout=10)
    return service


async def test_staff_stay_logged_in_when_the_service_restarts(operator, alsa_file):  # noqa: F811
    service = await start(operator, alsa_file)
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    jar = aiohttp.CookieJar(unsafe=True)
    try:
        base = f"http://127.0.0.1:{service.staff_port}"
        async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http:
            await log_in(http)
    finally:
        await service.stop()
    service = await start(operator, alsa_file)  # a restart: another process, the same boot
    try:
        base = f"http://127.0.0.1:{service.staff_port}"
        async with (
            aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http,
            http.get("/status", allow_redirects=False) as r,
        ):
            assert r.status == 200, r.headers.get("Location")
            assert "logged out" not in await r.text()
    finally:
        await service.stop()
