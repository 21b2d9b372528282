"""Speaking end to end: the real openai SDK against the loopback test server, real ALSA through its file plugin."""

import asyncio
import time

import pytest
from conftest import file_sink_opener
from fake_openai import Behaviour, FakeOpenAI, pcm_for

from kiosk.build import open_announcer
from kiosk.config import parse_config
from kiosk.pcm import OPENAI_PCM
from kiosk.speech.openai_engine import API_TEXT_LIMIT

PERIOD_BYTES = OPENAI_PCM.bytes_for_ms(40)
TEXT = "Welcome to the hall of minerals."


def make_config(server_url: str, cache_dir, **openai):
    deadlines = {"first_byte_timeout_s": 1.5, "chunk_gap_timeout_s": 0.5, "connect_timeout_s": 1, **openai}
    lines = "".join(f"  {k}: {v}\n" for k, v in deadlines.items())
    return parse_config(
        f"speech:\n  fallback: none\n"  # these tests are about the OpenAI engine itself
        "audio:\n  loudness_lufs: null\n"  # and the bytes it sent, exactly (tests/test_loudness.py: matching)
        f"openai:\n  base_url: {server_url}/v1\n  voice: sage\n  instructions: Calm.\n  speed: 1.1\n{lines}"
        f"cache:\n  dir: {cache_dir}\nphrases:\n  welcome: {TEXT}\n"
    )


async def say(cfg, device, text=TEXT):
    async with open_announcer(cfg, open_sink=file_sink_opener(device)) as announcer:
        return await asyncio.wait_for(announcer.say(text), timeout=20)


def assert_played_exactly(out, audio: bytes):
    got = out.read_bytes()
    assert got[: len(audio)] == audio
    assert got[len(audio) :] == bytes(len(got) - len(audio)) and len(got) - len(audio) < PERIOD_BYTES


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


async def test_streamed_then_cached_bytes_reach_alsa_exactly(server, tmp_path, alsa_file):
    device, out = alsa_file
    server.behaviour.chunk_sizes = [1, 3, 7, 4095, 333]
    cfg = make_config(server.url, tmp_path / "cache")

    first = await say(cfg, device)
    assert first.error is None, first.error
    assert first.source == "openai" and first.cached and first.first_byte_ms is not None
    assert first.frames == len(pcm_for(TEXT)) // 2
    assert_played_exactly(out, pcm_for(TEXT))
    request = server.requests[-1]
    assert request.body == {
        "input": TEXT,
        "model": "gpt-4o-mini-tts",
        "voice": "sage",
        "response_format": "pcm",
        "speed": 1.1,
        "instructions": "Calm.",
    }
    assert request.headers["authorization"] == "Bearer sk-test-not-secret"

    streamed_bytes = out.read_bytes()
    out.unlink()
    await server.stop()  # the network is gone: the cache still speaks
    again = await say(cfg, device)
    assert again.error is None and again.source == "cache" and again.first_byte_ms is None
    assert again.frames == first.frames and not again.cached
    assert out.read_bytes() == streamed_bytes


async def test_playback_starts_while_audio_is_still_arriving(server, tmp_path, alsa_file):
    device, _ = alsa_file
    server.behaviour.realtime_factor = 1.0
    server.behaviour.chunk_sizes = [960]
    text = "A line long enough to take a couple of seconds to arrive at real time."
    trace = await say(make_config(server.url, tmp_path / "c"), device, text)
    audio_ms = OPENAI_PCM.ms_for_bytes(len(pcm_for(text)))
    assert trace.error is None and audio_ms > 2000
    assert trace.first_audio_ms < 600, trace
    assert trace.elapsed_ms > audio_ms * 0.8, "the stream should still have been arriving"


async def test_text_over_the_api_limit_is_split_and_played_back_to_back(server, tmp_path, alsa_file):
    device, out = alsa_file
    server.behaviour.ms_per_char = 1.0
    text = " ".join(f"Sentence {i} describes one more crystal in this case." for i in range(120))
    assert len(text) > API_TEXT_LIMIT
    trace = await say(make_config(server.url, tmp_path / "c"), device, text)
    assert trace.error is None
    pieces = [r.body["input"] for r in server.requests]
    assert len(pieces) == 2 and all(len(p) <= API_TEXT_LIMIT for p in pieces)
    assert " ".join(pieces) == text
    assert_played_exactly(out, b"".join(pcm_for(p, ms_per_char=1.0) for p in pieces))


async def test_cut_mid_stream_keeps_what_was_heard_and_caches_nothing(server, tmp_path, alsa_file):
    device, out = alsa_file
    server.behaviour.cut_after_bytes = 20_001
    server.behaviour.chunk_sizes = [1000]
    cfg = make_config(server.url, tmp_path / "c")
    trace = await say(cfg, device)
    assert "stream was cut after" in trace.error
    assert not trace.cached and 0 < trace.frames <= 10_000
    assert_played_exactly(out, pcm_for(TEXT)[: trace.frames * 2])  # what was heard stays, nothing else
    assert len(server.requests) == 1, "no retry once audio has been heard"
    assert list((tmp_path / "c").glob("*.pcm")) == []


@pytest.mark.parametrize(
    ("behaviour", "message", "requests"),
    [
        (Behaviour(status=429, retry_after="0.1", fail_times=99), "429", 3),
        (Behaviour(status=500, fail_times=99), "500", 3),
        (Behaviour(status=429, error_code="insufficient_quota", fail_times=99), "run out of credit", 1),
        (Behaviour(status=400, error_message="voice is not valid"), "voice is not valid", 1),
    ],
)
async def test_error_answers_fail_clearly_within_the_deadline(
    server, tmp_path, alsa_file, behaviour, message, requests
):
    device, _ = alsa_file
    server.behaviour = behaviour
    started = time.monotonic()
    trace = await say(make_config(server.url, tmp_path / "c"), device)
    assert message in trace.error
    assert time.monotonic() - started < 1.5 + 0.5
    assert len(server.requests) == requests
    assert not trace.cached and trace.frames == 0 and list((tmp_path / "c").glob("*.pcm")) == []


async def test_one_server_error_is_retried_before_the_first_byte(server, tmp_path, alsa_file):
    device, out = alsa_file
    server.behaviour = Behaviour(status=500, fail_times=1)
    trace = await say(make_config(server.url, tmp_path / "c"), device)
    assert trace.error is None and trace.cached and len(server.requests) == 2
    assert_played_exactly(out, pcm_for(TEXT))


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (Behaviour(hang=True), "no audio within 1.5 s"),
        (Behaviour(first_byte_delay_s=5), "no audio within 1.5 s"),
        (Behaviour(headers_delay_s=5), "no audio within 1.5 s"),
    ],
)
async def test_hang_before_first_byte_fails_at_the_deadline(server, tmp_path, alsa_file, behaviour, message):
    device, _ = alsa_file
    server.behaviour = behaviour
    started = time.monotonic()
    trace = await say(make_config(server.url, tmp_path / "c"), device)
    took = time.monotonic() - started
    assert message in trace.error
    assert 1.4 < took < 1.5 + 0.6
    assert not trace.cached and list((tmp_path / "c").glob("*.pcm")) == []


async def test_stall_between_chunks_fails_at_the_gap_deadline(server, tmp_path, alsa_file):
    device, _ = alsa_file
    server.behaviour = Behaviour(stall_after_bytes=8192, stall_s=5)
    started = time.monotonic()
    trace = await say(make_config(server.url, tmp_path / "c"), device)
    assert "stalled for more than 0.5 s after 8192 bytes" in trace.error
    assert time.monotonic() - started < 1.5
    assert not trace.cached and trace.frames == 4096


async def test_server_down_is_a_clear_error(tmp_path, alsa_file):
    device, _ = alsa_file
    async with FakeOpenAI() as gone:
        url = gone.url
    started = time.monotonic()
    trace = await say(make_config(url, tmp_path / "c"), device)
    assert "cannot connect" in trace.error
    assert time.monotonic() - started < 2.0


async def test_refused_key_is_reported_without_the_key(server, tmp_path, alsa_file):
    device, _ = alsa_file
    server.behaviour = Behaviour(api_key="sk-the-right-one")
    trace = await say(make_config(server.url, tmp_path / "c"), device)
    assert "API key was refused (401)" in trace.error
    assert "sk-test-not-secret" not in trace.error and len(server.requests) == 1


async def test_request_deadline_bounds_a_slow_trickle(server, tmp_path, alsa_file):
    device, _ = alsa_file
    server.behaviour = Behaviour(realtime_factor=0.5, chunk_sizes=[480])
    trace = await say(make_config(server.url, tmp_path / "c", request_timeout_s=1), device)
    assert "longer than 1 s" in trace.error and not trace.cached
