"""Every HTTP endpoint against the real service on loopback, including its bad inputs."""

import asyncio

import aiohttp
import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory

from kiosk.config import parse_config
from kiosk.service import Service
from kiosk.systemd import Notifier

TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


async def start_service(tmp_path, device, api="", server_url="http://127.0.0.1:9"):
    cfg = parse_config(
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\n"
        f"staff:\n  enabled: false\napi:\n  port: 0\n{api}"
        "phrases:\n  welcome: Welcome to the hall of minerals.\n  quartz: Quartz.\n"
    )
    service = Service(cfg, open_sink=file_sink_opener(device), pin_factory=MockFactory(), notifier=Notifier({}))
    await asyncio.wait_for(service.start(), timeout=10)
    return service


@pytest.fixture
async def api(tmp_path, alsa_file, server):
    service = await start_service(tmp_path, alsa_file[0], "  allow_text: true\n", server.url)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
        yield service, http
    await service.stop()


async def call(http, method, path, **kwargs):
    if method == "POST" and "json" not in kwargs:
        kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
    async with http.request(method, path, **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body


async def test_play_phrase_then_poll_it_and_see_status(api):
    service, http = api
    status, body = await call(http, "POST", "/api/play", json={"phrase": "welcome"})
    assert status == 202 and body["id"]
    await asyncio.wait_for(service.speaker.idle(), 10)
    status, playback = await call(http, "GET", f"/api/play/{body['id']}")
    assert status == 200 and playback["state"] == "done" and playback["trace"]["source"] == "openai"
    status, st = await call(http, "GET", "/api/status")
    assert status == 200 and st["state"] == "idle"
    assert st["cache"]["lines_configured"] == 2 and "welcome" in st["cache"]["ready_ids"]
    assert st["last_trace"]["frames"] > 0 and st["engine"]["name"] == "openai"
    assert {"first_byte_ms", "first_audio_ms", "underruns", "duration_ms"} <= st["last_trace"].keys()


async def test_free_text_stop_healthz_and_metrics(api):
    service, http = api
    status, body = await call(http, "POST", "/api/play", json={"text": "The café closes at five."})
    assert status == 202
    status, body = await call(http, "POST", "/api/stop")
    assert status == 200 and isinstance(body["stopped"], bool)
    await asyncio.wait_for(service.speaker.idle(), 10)
    assert await call(http, "GET", "/healthz") == (200, {"ok": True, "problem": None})
    status, text = await call(http, "GET", "/metrics")
    assert status == 200
    for name in (
        "kiosk_press_to_first_audio_seconds",
        "kiosk_underruns_total",
        "kiosk_cache_hits_total",
        "kiosk_cache_misses_total",
        "kiosk_engine_errors_total",
        "kiosk_button_presses_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"data": b"{not json"}, 400, "body must be JSON"),
        ({"data": b"\xff\xfe"}, 400, "body must be JSON"),
        ({"json": ["welcome"]}, 400, "must be a JSON object"),
        ({"json": {"phrase": 7}}, 400, "'phrase' must be a string"),
        ({"json": {"text": ["a"]}}, 400, "'text' must be a string"),
        ({"json": {}}, 400, "exactly one of"),
        ({"json": {"phrase": "welcome", "text": "hi"}}, 400, "exactly one of"),
        ({"json": {"phrase": "welcome", "volume": 11}}, 400, "unknown field(s): volume"),
        ({"json": {"text": "   "}}, 400, "'text' is empty"),
        ({"json": {"text": "x" * 4097}}, 400, "the limit is 4096"),
        ({"data": b'{"text": "' + b"x" * 20_000 + b'"}'}, 413, "too large"),
        ({"json": {"phrase": "nope"}}, 404, "no phrase 'nope'"),
    ],
)
async def test_bad_input_is_a_4xx_json_error(api, kwargs, status, message):
    _, http = api
    got_status, body = await call(http, "POST", "/api/play", **kwargs)
    assert got_status == status and message in body["error"]


async def test_unknown_routes_and_methods_are_json_errors(api):
    _, http = api
    status, body = await call(http, "GET", "/api/nothing")
    assert status == 404 and body == {"error": "not found"}
    status, body = await call(http, "GET", "/api/play")
    assert status == 405 and "error" in body
    status, body = await call(http, "POST", "/api/stop", data=b"[1]")
    assert status == 400


async def test_free_text_needs_allow_text(tmp_path, alsa_file):
    service = await start_service(tmp_path, alsa_file[0])
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            status, body = await call(http, "POST", "/api/play", json={"text": "Hello"})
        assert status == 403 and "api.allow_text" in body["error"]
    finally:
        await service.stop()


async def test_triggers_are_rate_limited(tmp_path, alsa_file, server):
    service = await start_service(tmp_path, alsa_file[0], "  rate_limit_per_min: 3\n", server.url)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            answers = [await call(http, "POST", "/api/play", json={"phrase": "quartz"}) for _ in range(5)]
            async with http.post("/api/play", json={"phrase": "quartz"}) as response:
                assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
        assert [s for s, _ in answers] == [202, 202, 202, 429, 429]
    finally:
        await service.stop()


async def test_busy_queue_is_bounded(tmp_path, alsa_file, server):
    server.behaviour.realtime_factor = 1.0
    service = await start_service(
        tmp_path, alsa_file[0], "  rate_limit_per_min: 1000\nspeech:\n  queue_limit: 2\n", server.url
    )
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            answers = [await call(http, "POST", "/api/play", json={"phrase": "welcome"}) for _ in range(6)]
        statuses = [s for s, _ in answers]
        assert statuses[:3] == [202, 202, 202] and set(statuses[3:]) == {409}
        assert "queue is full" in answers[-1][1]["error"]
    finally:
        await service.stop()


async def test_bearer_token_required_beyond_loopback(tmp_path, alsa_file):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    service = await start_service(tmp_path, alsa_file[0], f"  bind: 0.0.0.0\n  token_file: {token}\n")
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            status, body = await call(http, "POST", "/api/play", json={"phrase": "welcome"})
            assert status == 401 and "bearer token" in body["error"]
            wrong = {"Authorization": "Bearer nope"}
            assert (await call(http, "POST", "/api/play", json={"phrase": "welcome"}, headers=wrong))[0] == 401
            right = {"Authorization": "Bearer s3cret-token"}
            assert (await call(http, "POST", "/api/play", json={"phrase": "welcome"}, headers=right))[0] == 202
            assert (await call(http, "GET", "/healthz"))[0] == 200  # health checks need no token
    finally:
        await service.stop()


def test_open_bind_without_token_is_a_config_error():
    from kiosk.errors import ConfigError

    with pytest.raises(ConfigError, match=r"api\.token_file: required when api\.bind \(0\.0\.0\.0\)"):
        parse_config("api:\n  bind: 0.0.0.0\n")


async def test_a_retried_trigger_with_the_same_idempotency_key_speaks_once(api):
    service, http = api
    headers = {"Idempotency-Key": "show-42-cue-7"}
    first = await call(http, "POST", "/api/play", json={"phrase": "welcome"}, headers=headers)
    again = await call(http, "POST", "/api/play", json={"phrase": "welcome"}, headers=headers)
    assert first[0] == again[0] == 202 and first[1]["id"] == again[1]["id"]
    await asyncio.wait_for(service.speaker.idle(), 10)
    assert len(service.speaker.history) == 1
    other = await call(http, "POST", "/api/play", json={"phrase": "quartz"}, headers=headers)
    assert other[0] == 422 and "different request" in other[1]["error"]
    fresh = await call(http, "POST", "/api/play", json={"phrase": "welcome"}, headers={"Idempotency-Key": "cue-8"})
    assert fresh[0] == 202 and fresh[1]["id"] != first[1]["id"]
    bad = await call(http, "POST", "/api/play", json={"phrase": "welcome"}, headers={"Idempotency-Key": "x" * 300})
    assert bad[0] == 400
