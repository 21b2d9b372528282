"""It never stops speaking silently: each finding of an attacker's and a careless operator's afternoon, as a test."""

import asyncio
import logging
import subprocess
import time

import aiohttp
import pytest
from test_api import call
from test_service import QUARTZ, WELCOME, config, press, started, wait_idle
from test_staff import PASSWORD, csrf_of, log_in, operator, post, staff  # noqa: F401 (fixtures)

from kiosk.staff.auth import PasswordFile
from kiosk.supervisor import Supervisor

TIMEOUT = aiohttp.ClientTimeout(total=15)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


# -- 1. one bad line fails that request, never the speaker


async def test_an_unforeseen_exception_fails_one_request_and_the_speaker_goes_on(
    server, tmp_path, alsa_file, pins, caplog
):
    service = await started(config(server.url, tmp_path / "c"), alsa_file[0], pins)
    try:
        engine = service.engines.primary
        real_synthesize = engine.synthesize

        async def broken(text, on_audio):
            if text == WELCOME:  # what the SDK raised for a voice speed of NaN
                raise ValueError("Out of range float values are not JSON compliant")
            await real_synthesize(text, on_audio)

        service.supervisor.cancel("warm")
        engine.synthesize = broken
        with caplog.at_level(logging.ERROR, logger="kiosk"):
            bad = service.play(phrase="welcome", text=None, origin="api")
            good = service.play(phrase="quartz", text=None, origin="api", policy="queue")
            await wait_idle(service)
        assert bad.state == "failed" and "ValueError" in bad.trace.error
        assert good.state == "done" and good.trace.frames > 0
        assert len([r for r in caplog.records if r.exc_info]) == 1  # one traceback for the one failure
        assert service.health() == (True, "")
    finally:
        await service.stop()


async def test_text_that_cannot_be_encoded_is_refused_at_the_door(server, tmp_path, alsa_file, pins):
    service = await started(config(server.url, tmp_path / "c"), alsa_file[0], pins)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            body = '{"text": "Hello \\ud800 there"}'
            status, answer = await call(
                http, "POST", "/api/play", data=body, headers={"Content-Type": "application/json"}
            )
            assert status == 400 and "encoded" in answer["error"]
            status, _ = await call(http, "POST", "/api/play", json={"phrase": "quartz"})
            assert status == 202
        await wait_idle(service)
        assert service.speaker.queued == 0
    finally:
        await service.stop()


async def test_a_line_past_its_time_limit_is_given_up_and_the_next_one_plays(
    server, tmp_path, alsa_file, pins, monkeypatch
):
    monkeypatch.setattr("kiosk.speaker.line_limit_s", lambda text: 0.5)
    service = await started(config(server.url, tmp_path / "c"), alsa_file[0], pins)
    try:
        real_say = service.announcer.say

        async def hangs_on_welcome(text, gain=1.0, language=None, speed=1.0, private=False):
            if text == WELCOME:
                await asyncio.Event().wait()
            return await real_say(text, gain=gain, language=language, speed=speed)

        service.announcer.say = hangs_on_welcome
        stuck = service.play(phrase="welcome", text=None, origin="api")
        after = service.play(phrase="quartz", text=None, origin="api", policy="queue")
        await asyncio.wait_for(service.speaker.idle(), timeout=30)
        assert stuck.state == "failed" and "took longer than" in stuck.trace.error
        assert after.state == "done"
    finally:
        await service.stop()


async def test_a_wedged_speaker_loop_turns_health_red(server, tmp_path, alsa_file, pins, monkeypatch):
    monkeypatch.setattr("kiosk.speaker.line_limit_s", lambda text: 0.2)
    service = await started(config(server.url, tmp_path / "c"), alsa_file[0], pins)
    release = asyncio.Event()
    try:

        async def ignores_cancel(text, gain=1.0, language=None, speed=1.0, private=False):
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # like a call stuck where cancellation cannot reach
            raise asyncio.CancelledError

        service.announcer.say = ignores_cancel
        service.play(phrase="welcome", text=None, origin="api")
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            assert (await call(http, "GET", "/healthz"))[0] == 200
            deadline = time.monotonic() + 15
            while service.health()[0]:
                assert time.monotonic() < deadline, "health stayed green with a wedged speaker"
                await asyncio.sleep(0.1)
            status, body = await call(http, "GET", "/healthz")
        assert status == 503 and "speaker has shown no progress" in body["problem"]
    finally:
        release.set()
        await service.stop()


async def test_supervisor_restarts_a_crashed_task_with_back_off_and_reports_it():
    events, runs = [], []

    async def flaky():
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    supervisor = Supervisor(on_event=events.append, first_backoff_s=0.05, max_backoff_s=0.2)
    supervisor.start("flaky", flaky)
    try:
        deadline = time.monotonic() + 5
        while len(runs) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert runs[2] - runs[1] >= 2 * (runs[1] - runs[0]) * 0.8  # the pause doubled
        assert supervisor.running("flaky")
        assert [s["restarts"] for s in supervisor.state()] == [2]
        assert "failed 2 time(s) (RuntimeError: boom)" in supervisor.problems()[0]
        assert len(events) == 2
    finally:
        await supervisor.stop(timeout=1)


async def test_a_silent_child_is_reported_stale():
    now = [0.0]
    supervisor = Supervisor(clock=lambda: now[0])
    supervisor.start("speaker", lambda: asyncio.Event().wait(), stale_after_s=5)
    try:
        await asyncio.sleep(0)
        now[0] = 4.0
        assert supervisor.stale() == []
        supervisor.beat("speaker")
        now[0] = 9.5
        assert supervisor.stale() == ["speaker has shown no progress for 6 s (running)"]
    finally:
        await supervisor.stop(timeout=1)


# -- 2. login flood: counted before the hash; cached presses unaffected


async def test_parallel_guesses_get_at_most_five_checks(staff, caplog, monkeypatch):  # noqa: F811
    service, http, _clock, pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    checks = []
    real_check = PasswordFile.check
    monkeypatch.setattr(PasswordFile, "check", lambda self, pw: checks.append(pw) or real_check(self, pw))
    token = await csrf_of(http, "/login")
    await service.announcer.prepare(service.cfg.phrases["welcome"])  # the cached line pressed during the flood

    async def guess(i):
        try:
            return (await post(http, "/login", {"csrf": token, "password": f"wrong guess {i}"}))[0]
        except aiohttp.ClientError:
            return "disconnected"  # beyond the connections one address may hold

    with caplog.at_level(logging.INFO):
        flood = asyncio.gather(*(guess(i) for i in range(300)))
        await asyncio.sleep(0.05)
        press(pins, 17)
        statuses = await asyncio.wait_for(flood, timeout=60)
        await wait_idle(service)
    assert len(checks) <= 5 and statuses.count(401) <= 5, sorted(set(map(str, statuses)))
    assert set(statuses) <= {401, 429, "disconnected"} and statuses.count(429) >= 50
    heard = [r for r in service.speaker.history.values() if r.origin == "button:17"]
    assert heard and heard[-1].trace.source == "cache" and heard[-1].state == "done"
    logged = caplog.text
    assert "wrong password from 127.0.0.1" in logged
    assert "wrong guess" not in logged  # the address, never the password


async def test_a_malformed_multipart_login_is_a_400(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    status, body, _ = await post(
        http,
        "/login",
        b"--x\r\nContent-Disposition: form-data; name=\r\n\r\n\xff\xfe",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert status == 400 and "could not be read" in body


async def test_staff_page_refuses_a_foreign_host_name(staff):  # noqa: F811
    _service, http, _clock, _pins = staff
    async with http.get("/login", headers={"Host": "attacker.example"}) as response:
        assert response.status == 421


# -- 3. bounded connections


async def test_health_and_a_cached_press_during_an_idle_connection_flood(server, tmp_path, alsa_file, pins):
    service = await started(config(server.url, tmp_path / "c"), alsa_file[0], pins)
    idle = []
    try:
        await service.announcer.prepare(QUARTZ)
        for _ in range(600):
            idle.append(await asyncio.open_connection("127.0.0.1", service.port))
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            assert (await call(http, "GET", "/healthz"))[0] == 200
        req = service.play(phrase="quartz", text=None, origin="api")
        await wait_idle(service)
        assert req.state == "done" and req.trace.source == "cache"
    finally:
        for _reader, writer in idle:
            writer.close()
        await service.stop()


# -- 4. no 5xx from a body


@pytest.mark.parametrize("path", ["/api/play", "/api/stop"])
async def test_deeply_nested_json_is_a_400(server, tmp_path, alsa_file, pins, path):
    service = await started(config(server.url, tmp_path / "c"), alsa_file[0], pins)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            status, body = await call(http, "POST", path, data="[" * 2000, headers={"Content-Type": "application/json"})
        assert status == 400 and "nested" in body["error"]
    finally:
        await service.stop()


async def test_api_refuses_foreign_host_origin_and_non_json_posts(server, tmp_path, alsa_file, pins):
    service = await started(config(server.url, tmp_path / "c"), alsa_file[0], pins)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            status, _ = await call(http, "GET", "/api/status", headers={"Host": "rebound.attacker.example"})
            assert status == 421
            status, _ = await call(
                http, "POST", "/api/play", json={"phrase": "quartz"}, headers={"Origin": "http://attacker.example"}
            )
            assert status == 403
            status, body = await call(
                http, "POST", "/api/play", data='{"phrase": "quartz"}', headers={"Content-Type": "text/plain"}
            )
            assert status == 415 and "application/json" in body["error"]
            assert service.speaker.history == {}
            status, _ = await call(
                http,
                "POST",
                "/api/play",
                json={"phrase": "quartz"},
                headers={"Origin": f"http://localhost:{service.port}"},
            )
            assert status == 202
    finally:
        await service.stop()


# -- 5. start never crash-loops on the cache


@pytest.fixture
def read_only_cache(tmp_path):
    """A cache directory holding an entry's leftover temp file, mounted read-only (as after an SD card fault)."""
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    (cache / ".0123abcd.pcm.999999.0badf00d.tmp").write_bytes(b"half an entry")  # its writer (pid) is gone
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(cache), str(cache)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount read-only here: {mounted.stderr.decode().strip()}")
    with pytest.raises(OSError):
        (cache / "probe").write_bytes(b"")  # read-only even for root
    yield cache
    subprocess.run(["umount", str(cache)], check=False)


async def test_start_with_a_read_only_cache_and_a_leftover_temp_file(
    server, tmp_path, alsa_file, pins, read_only_cache
):
    service = await started(config(server.url, read_only_cache), alsa_file[0], pins)
    try:
        assert any("phrase cache" in e["text"] for e in service.events)
        req = service.play(phrase="quartz", text=None, origin="api")
        await wait_idle(service)
        assert req.state == "done" and not req.trace.cached  # spoken, though it cannot be kept
        assert service.announcer.cache_problem
    finally:
        await service.stop()


# -- 7. a key saved on the staff page is used at once


async def test_a_new_key_takes_effect_on_reload(server, tmp_path, alsa_file, pins, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    server.behaviour.api_key = "sk-the-right-one"
    key_file = tmp_path / "key"
    key_file.write_text("sk-a-wrong-one\n")
    path = tmp_path / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server.url}/v1\n  api_key_file: {key_file}\nspeech:\n  fallback: none\n"
        f"cache:\n  dir: {tmp_path / 'c'}\n"
        f"history:\n  file: {tmp_path / 'c'}.history.sqlite3\nstaff:\n  enabled: false\napi:\n  port: 0\n"
        f"phrases:\n  quartz: {QUARTZ}\n"
    )
    from kiosk.config import load_config

    service = await started(load_config(path), alsa_file[0], pins, config_path=path)
    try:
        refused = service.play(phrase="quartz", text=None, origin="api")
        await wait_idle(service)
        assert refused.state == "failed" and "refused" in refused.trace.error
        key_file.write_text("sk-the-right-one\n")  # what the staff page's Voice form writes before it reloads
        assert await service.reload()
        spoken = service.play(phrase="quartz", text=None, origin="api")
        await wait_idle(service)
        assert spoken.state == "done" and spoken.trace.source == "openai"
    finally:
        await service.stop()


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8080", True),
        ("[::1]:8080", True),
        ("192.168.1.40", True),
        ("localhost:8000", True),
        ("hall2", True),
        ("HALL2.local", True),
        ("speaker.museum.lan:8000", True),
        ("attacker.example", False),
        ("hall2.attacker.example", False),
        ("", False),
        ("[::1", False),
    ],
)
def test_host_names_that_name_this_device(host, allowed):
    from kiosk.web.hosts import HostNames

    assert HostNames(["speaker.museum.lan"], hostname="hall2").allows_host(host) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [(None, True), ("http://hall2.local:8000", True), ("null", False), ("http://attacker.example", False)],
)
def test_origins_that_name_this_device(origin, allowed):
    from kiosk.web.hosts import HostNames

    assert HostNames(hostname="hall2").allows_origin(origin) is allowed
