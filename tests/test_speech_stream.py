"""GET /api/speech: a line as WAV, streamed while it is synthesized; a listener leaving early still gets it cached."""

import asyncio
import time

import aiohttp
import pytest
from conftest import file_sink_opener
from fake_openai import pcm_for
from gpiozero.pins.mock import MockFactory

from kiosk.config import parse_config
from kiosk.pcm import OPENAI_PCM, wav_stream_header
from kiosk.service import Service
from kiosk.systemd import Notifier

TIMEOUT = aiohttp.ClientTimeout(total=30)
LONG = "The hall of minerals holds four thousand specimens gathered from every continent over two centuries."


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


@pytest.fixture
async def api(tmp_path, alsa_file, server):
    cfg = parse_config(
        f"openai:\n  base_url: {server.url}/v1\nspeech:\n  fallback: none\ncache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\n"
        f"staff:\n  enabled: false\napi:\n  port: 0\n  allow_text: true\n  rate_limit_per_min: 1000\n"
        f"phrases:\n  hall: {LONG}\n"
    )
    service = Service(cfg, open_sink=file_sink_opener(alsa_file[0]), pin_factory=MockFactory(), notifier=Notifier({}))
    server.behaviour.realtime_factor = 1.0  # the line takes its own length (about 6 s) to arrive
    server.behaviour.first_byte_delay_s = 0.3
    server.behaviour.chunk_sizes = [2400]
    await asyncio.wait_for(service.start(), timeout=10)
    service.supervisor.cancel("warm")  # keep the line uncached: these tests are about streaming it
    async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
        yield service, http
    await service.stop()


async def test_first_bytes_arrive_while_the_line_is_still_being_synthesized(api, server):
    _service, http = api
    asked = time.monotonic()
    async with http.get("/api/speech", params={"phrase": "hall"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "audio/wav"
        assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["Content-Disposition"] == "inline"
        head = await response.content.readexactly(44 + 2400)
        first_audio_s = time.monotonic() - asked
        body = head + await response.read()
    audio_s = OPENAI_PCM.ms_for_bytes(len(pcm_for(LONG))) / 1000
    print(f"request → first audio byte over HTTP (uncached): {first_audio_s * 1000:.0f} ms; engine first byte 300 ms")
    assert first_audio_s < 0.3 + 1.0, "the first audio should follow the engine's first byte closely"
    assert first_audio_s < audio_s / 3, "long before the engine has finished the line"
    assert body == wav_stream_header(OPENAI_PCM) + pcm_for(LONG)

    asked = time.monotonic()
    async with http.get("/api/speech", params={"phrase": "hall"}) as response:
        cached = await response.read()
    print(f"request → whole cached line over HTTP: {(time.monotonic() - asked) * 1000:.0f} ms")
    assert cached == body and len(server.requests) == 1


async def test_a_listener_leaving_early_does_not_stop_the_line_being_cached(api, server):
    service, http = api
    async with http.get("/api/speech", params={"text": "A brand new line nobody has heard before."}) as response:
        await response.content.readexactly(44 + 100)
    # the connection is gone; the synthesis finishes on its own and commits the line
    key = service.announcer.key_for("A brand new line nobody has heard before.")
    deadline = time.monotonic() + 15
    while not service.cache.contains(key):
        assert time.monotonic() < deadline, "the line was not cached after the listener left"
        await asyncio.sleep(0.05)
    assert service.cache.get(key).pcm == pcm_for("A brand new line nobody has heard before.")


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"phrase": "nope"}, 404, "no phrase 'nope'"),
        ({"phrase": "hall", "text": "x"}, 400, "exactly one of"),
        ({}, 400, "exactly one of"),
        ({"phrase": "hall", "volume": "11"}, 400, "unknown parameter(s): volume"),
        ({"text": "x" * 4097}, 400, "the limit is 4096"),
    ],
)
async def test_bad_requests(api, params, status, message):
    _, http = api
    async with http.get("/api/speech", params=params) as response:
        assert response.status == status and message in (await response.json())["error"]


async def test_engine_down_is_a_json_503(api, server):
    _, http = api
    await server.stop()
    async with http.get("/api/speech", params={"text": "Nobody can say this now."}) as response:
        assert response.status == 503 and "cannot speak this line now" in (await response.json())["error"]
