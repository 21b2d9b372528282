"""Listening over HTTP (GET /api/speech, the staff page's "Listen here") never ends a line short without saying so:
an engine that fails mid-line is followed by the next one saying the line whole, in the WAV's format (Piper's
22 050 Hz resampled to the 24 000 Hz the header announced); when no engine can finish it, the response breaks off
and the staff page says so. The real openai SDK against the loopback test server, the local Piper voice."""

import array
import asyncio
import dataclasses
import math
import random

import aiohttp
import pytest
from conftest import file_sink_opener
from fake_openai import BYTES_PER_SECOND, Behaviour, pcm_for
from gpiozero.pins.mock import MockFactory

from kiosk.config import parse_config
from kiosk.listen import Resampler
from kiosk.pcm import OPENAI_PCM, AudioFormat, wav_stream_header
from kiosk.service import Service
from kiosk.speech.text import max_audio_s
from kiosk.staff.auth import PasswordFile
from kiosk.systemd import Notifier

LINE = "Welcome to the hall of minerals."
TIMEOUT = aiohttp.ClientTimeout(total=60)
PIPER_PCM = AudioFormat(rate=22_050)
FAULTS = {
    # cut mid-line, inside a sample: the listener gets whole samples only
    "cut": Behaviour(cut_after_bytes=9_001, chunk_sizes=[1000]),
    # 3 bytes at once, then 3 more only after 3 s: too slow from the start
    "trickle": Behaviour(chunk_sizes=[3], realtime_factor=1 / BYTES_PER_SECOND),
    # the line again and again, 8x faster than it plays
    "endless": Behaviour(endless=True, realtime_factor=8, chunk_sizes=[4800]),
}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


@pytest.fixture
async def make_service(tmp_path, alsa_file, server):
    """make_service(fallback): a running service (API and staff page) whose warm-up is stopped, so that lines are
    synthesized by the listener's request; with a fallback, the local voice is loaded and what it says recorded."""
    made = []

    async def make(fallback="auto"):
        if fallback != "none":
            pytest.importorskip("piper", reason="the fallback voice (piper extra) is not installed")
        cfg = parse_config(
            f"openai:\n  base_url: {server.url}/v1\nspeech:\n  failover_ms: 1000\n  fallback: {fallback}\n"
            f"cache:\n  dir: {tmp_path / 'cache'}\nhistory:\n  file: {tmp_path / 'history.sqlite3'}\n"
            f"api:\n  port: 0\n  allow_text: true\n  rate_limit_per_min: 1000\n"
            f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'pw'}\n"
            f"  settings_file: {tmp_path / 'staff.yaml'}\n"
            f"phrases:\n  welcome: {LINE}\n"
        )
        server.behaviour.first_byte_delay_s = 30  # the warm-up must not cache the line before it is cancelled
        service = Service(
            cfg, open_sink=file_sink_opener(alsa_file[0]), pin_factory=MockFactory(), notifier=Notifier({})
        )
        made.append(service)
        await asyncio.wait_for(service.start(), timeout=10)
        service.supervisor.cancel("warm")
        server.behaviour = Behaviour()
        await asyncio.wait_for(service.engines.primary.preload(), 30)  # the SDK's import is not the engine's fault
        service.piper_said = []
        if fallback != "none":
            await asyncio.wait_for(service.engines.engines[1].probe(), 60)
            record(service.engines.engines[1], service.piper_said)
        return service

    yield make
    for service in made:
        await service.stop()


def record(engine, into: list[bytes]) -> None:
    synthesize = engine.synthesize

    async def recording(text, on_audio):
        def keep(chunk):
            into.append(chunk)
            on_audio(chunk)

        await synthesize(text, keep)

    engine.synthesize = recording


async def get_speech(service, text=LINE) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http,
        http.get("/api/speech", params={"text": text}) as response,
    ):
        return response.status, await response.read()  # read() raises if the body broke off


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_line_failing_mid_stream_is_finished_by_the_next_engine(make_service, server, fault):
    service = await make_service()
    server.behaviour = dataclasses.replace(FAULTS[fault])
    status, body = await asyncio.wait_for(get_speech(service), 60)

    assert status == 200 and body.startswith(wav_stream_header(OPENAI_PCM))
    said = b"".join(service.piper_said)
    assert said, "the next engine was never asked to say the line"
    rest = Resampler(PIPER_PCM, OPENAI_PCM).push(said)
    assert abs(len(rest) // 2 - len(said) // 2 * 24_000 / 22_050) <= 2
    audio = body[44:]
    assert audio.endswith(rest), "the local voice's line, whole, at the header's rate"
    heard = audio[: len(audio) - len(rest)]
    assert heard == (pcm_for(LINE) * 100)[: len(heard)]  # ...after what OpenAI got out, in whole samples
    assert len(heard) % 2 == 0
    if fault == "cut":
        assert len(heard) == 9_000
    elif fault == "trickle":
        assert len(heard) == 2
    else:
        assert 0 < len(heard) <= max_audio_s(LINE) * BYTES_PER_SECOND
        assert service.engines.health["openai"].in_backoff
    print(f"\n{fault}: OpenAI's {len(heard)} bytes, then the local voice's {len(rest)} (resampled)")
    assert await cached_engines(service) == ["piper"]  # nothing partial from OpenAI


async def cached_engines(service, timeout=10.0) -> list[str]:
    """The engines of the cache's entries, once there are any (the line is stored just after its last byte went)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not service.cache.list() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return sorted(i.engine for i in service.cache.list())


async def test_when_no_engine_can_finish_the_line_the_response_breaks_off(make_service, server):
    service = await make_service(fallback="none")
    server.behaviour = Behaviour(cut_after_bytes=30_000, chunk_sizes=[1000])
    async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
        async with http.get("/api/speech", params={"text": LINE}) as response:
            assert response.status == 200
            got = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in response.content.iter_any():
                    got.extend(chunk)
        assert bytes(got) == wav_stream_header(OPENAI_PCM) + pcm_for(LINE)[:30_000]  # all it had, then no clean end
        # the connection was broken off, not the service: the next request is answered
        async with http.get("/api/status") as again:
            assert again.status == 200
    assert service.cache.list() == []


async def test_the_staff_page_says_the_line_could_not_be_finished(make_service, server, browser):
    service = await make_service(fallback="none")
    base = f"http://127.0.0.1:{service.staff_port}"
    PasswordFile(service.cfg.staff.password_file).set("correct horse battery")
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(20_000)
    await page.goto(f"{base}/login")
    await page.fill("#password", "correct horse battery")
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/status")
    await page.goto(f"{base}/lines")
    server.behaviour = Behaviour(cut_after_bytes=30_000, chunk_sizes=[1000])
    await page.click("#listen-welcome")
    message = page.locator("form:has(#listen-welcome) .form-msg[data-kind=error]")
    await message.wait_for()
    assert (await message.text_content()).startswith("The line could not be finished:")
    assert await page.get_attribute("#listen-welcome", "data-state") == "error"


# --- the resampler ------------------------------------------------------------------------------------------------


def sine(rate: int, frequency: float, seconds: float) -> bytes:
    samples = array.array(
        "h", (round(8000 * math.sin(2 * math.pi * frequency * n / rate)) for n in range(int(rate * seconds)))
    )
    return samples.tobytes()


def test_resampling_keeps_the_pitch_and_the_length():
    out = Resampler(PIPER_PCM, OPENAI_PCM).push(sine(22_050, 440, 1.0))
    expected = array.array("h", sine(24_000, 440, 1.0))
    got = array.array("h", out)
    assert abs(len(got) - 24_000) <= 2
    worst = max(abs(a - b) for a, b in zip(got, expected, strict=False))
    assert worst < 80  # linear interpolation of a 440 Hz tone: well under 1 % of its peak


@pytest.mark.parametrize("seed", range(5))
def test_resampling_does_not_depend_on_how_the_stream_was_cut(seed):
    pcm = sine(22_050, 300, 0.3)
    whole = Resampler(PIPER_PCM, OPENAI_PCM).push(pcm)
    rng = random.Random(seed)
    resampler, pieces, at = Resampler(PIPER_PCM, OPENAI_PCM), [], 0
    while at < len(pcm):
        size = rng.choice([1, 2, 3, 7, 100, 4095])  # odd sizes split samples, as HTTP chunks do
        pieces.append(resampler.push(pcm[at : at + size]))
        at += size
    assert b"".join(pieces) == whole
