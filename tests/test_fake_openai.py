"""The fake OpenAI server, driven by the real `openai` SDK: if these fail, the speech tests prove nothing."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx2
import openai
import pytest
from fake_openai import Behaviour, FakeOpenAI, ThreadedFakeOpenAI, pcm_for

TEXT = "The Antikythera mechanism predicted eclipses."
STEP_S = 10.0  # bound on every single wait, so a broken server fails the test instead of hanging it


def client_for(server: FakeOpenAI, max_retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=max_retries)


async def fetch(client: openai.AsyncOpenAI, received: bytearray, text: str = TEXT) -> None:
    """Stream one speech request into `received`, so a failing test can still see what arrived."""
    speech = client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="pcm"
    )
    async with speech as response:
        async for chunk in response.iter_bytes():
            received += chunk


async def speak(server: FakeOpenAI, text: str = TEXT, max_retries: int = 0) -> bytes:
    received = bytearray()
    async with client_for(server, max_retries) as client:
        await asyncio.wait_for(fetch(client, received, text), timeout=STEP_S)
    return bytes(received)


def test_pcm_is_deterministic_whole_frames_and_sized_by_text():
    short, long = pcm_for("Hi"), pcm_for(TEXT)
    assert pcm_for(TEXT) == long and short != long[: len(short)]
    assert len(short) == round(0.2 * 24_000) * 2  # the 0.2 s floor
    assert len(long) == round(len(TEXT) * 0.060 * 24_000) * 2
    assert len(pcm_for(TEXT, max_audio_s=0.5)) == 24_000
    assert all(len(pcm_for("x" * n, ms_per_char=7.3)) % 2 == 0 for n in range(1, 60))


@pytest.mark.asyncio
async def test_odd_chunk_sizes_deliver_exactly_pcm_for_text():
    async with FakeOpenAI(Behaviour(chunk_sizes=[1, 3, 7, 4095])) as server:
        audio = await speak(server)
    assert audio == pcm_for(TEXT)
    (request,) = server.requests
    assert request.authorization == "Bearer test-key"
    assert request.body["input"] == TEXT and request.body["response_format"] == "pcm"
    assert request.outcome == "complete" and request.bytes_sent == len(audio)


@pytest.mark.asyncio
async def test_status_500_raises_internal_server_error():
    async with FakeOpenAI(Behaviour(status=500)) as server:
        with pytest.raises(openai.InternalServerError):
            await speak(server)


@pytest.mark.asyncio
async def test_429_insufficient_quota_is_a_rate_limit_error_with_its_code():
    behaviour = Behaviour(status=429, error_code="insufficient_quota", retry_after="7")
    async with FakeOpenAI(behaviour) as server:
        with pytest.raises(openai.RateLimitError) as caught:
            await speak(server)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.asyncio
async def test_fail_times_lets_the_sdk_retry_into_success():
    async with FakeOpenAI(Behaviour(status=503, fail_times=1, retry_after="0")) as server:
        audio = await speak(server, max_retries=1)
    assert audio == pcm_for(TEXT)
    assert [r.outcome for r in server.requests] == ["error", "complete"]


@pytest.mark.asyncio
async def test_cut_after_bytes_ends_iteration_with_an_error_and_fewer_bytes():
    received = bytearray()
    server = FakeOpenAI(Behaviour(chunk_sizes=[333], cut_after_bytes=1001))
    async with server, client_for(server) as client:
        with pytest.raises((httpx2.TransportError, openai.APIConnectionError)):
            await asyncio.wait_for(fetch(client, received), timeout=STEP_S)
    assert len(received) <= 1001 < len(pcm_for(TEXT))
    assert bytes(received) == pcm_for(TEXT)[: len(received)]
    assert server.requests[0].outcome == "cut"


@pytest.mark.asyncio
async def test_first_byte_delay_and_stop_ends_a_hanging_request():
    async with FakeOpenAI(Behaviour(first_byte_delay_s=0.3)) as server:
        started = time.monotonic()
        await speak(server, "Hi")
        assert time.monotonic() - started >= 0.3
        server.behaviour.hang = True
        hanging = asyncio.create_task(speak(server))
        await asyncio.wait_for(_until(lambda: len(server.requests) == 2), timeout=STEP_S)
        await asyncio.wait_for(server.stop(), timeout=STEP_S)
    with pytest.raises(openai.APIConnectionError):
        await asyncio.wait_for(hanging, timeout=STEP_S)


def test_threaded_server_serves_a_synchronous_client():
    with ThreadedFakeOpenAI(Behaviour(chunk_sizes=[3])) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=0, timeout=STEP_S)
        with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input="Hi", response_format="pcm"
        ) as response:
            assert response.headers["content-type"] == "audio/pcm"
            assert response.read() == pcm_for("Hi")
        assert [model.id for model in client.models.list()]
        client.close()
    assert len(server.requests) == 1 and len(server.model_requests) == 1


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# --- network profiles (the benchmark's) ---


async def arrivals(server: FakeOpenAI, profile: str, seed: int, text: str = TEXT) -> list[tuple[float, int]]:
    """(seconds since the request, bytes) for each chunk the SDK hands over."""
    base_url = f"{server.url}/profiles/{profile}/{seed}/v1"
    got: list[tuple[float, int]] = []

    async def fetch_timed(client: openai.AsyncOpenAI) -> None:
        asked = time.monotonic()
        speech = client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text, response_format="pcm"
        )
        async with speech as response:
            async for chunk in response.iter_bytes():
                got.append((time.monotonic() - asked, len(chunk)))

    async with openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as client:
        await asyncio.wait_for(fetch_timed(client), timeout=STEP_S)
    return got


async def test_a_seed_replays_the_same_jittered_first_byte():
    profiles = {"jittery": Behaviour(first_byte_delay_s=0.3, jitter_s=0.2)}
    async with FakeOpenAI(profiles=profiles) as server:
        firsts = {seed: (await arrivals(server, "jittery", seed))[0][0] for seed in range(5)}
        again = (await arrivals(server, "jittery", 3))[0][0]
    assert abs(again - firsts[3]) < 0.05
    assert max(firsts.values()) - min(firsts.values()) > 0.1
    assert all(0.1 - 0.02 <= first <= 0.5 + 0.1 for first in firsts.values())


async def test_bursts_arrive_together_at_the_average_rate():
    text = "x" * 40  # 2.4 s of audio at 60 ms a character
    profiles = {"bursty": Behaviour(realtime_factor=2.0, burst_every_s=0.3, chunk_sizes=[4096])}
    async with FakeOpenAI(profiles=profiles) as server:
        got = await arrivals(server, "bursty", 1, text)
    times = [at for at, _ in got]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap < 0.1 or gap > 0.2 for gap in gaps), gaps
    assert sum(gap > 0.2 for gap in gaps) == 4  # 2.4 s at 2x is 1.2 s of sending: bursts at 0.3 0.6 0.9 1.2
    assert sum(size for _, size in got) == len(pcm_for(text))


async def test_stall_at_a_fraction_of_the_line():
    text = "y" * 50  # 3 s of audio
    profiles = {"stall": Behaviour(realtime_factor=4.0, stall_at_fraction=0.5, stall_s=0.5)}
    async with FakeOpenAI(profiles=profiles) as server:
        got = await arrivals(server, "stall", 0, text)
    times = [at for at, _ in got]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    longest = max(range(len(gaps)), key=gaps.__getitem__)
    before = sum(size for _, size in got[: longest + 1])
    assert gaps[longest] >= 0.5 - 0.02
    assert before == len(pcm_for(text)) // 2


async def test_unknown_profile_is_a_clear_404():
    async with FakeOpenAI(profiles={"typical": Behaviour()}) as server:
        with pytest.raises(openai.NotFoundError, match="no network profile 'nope'"):
            await arrivals(server, "nope", 0)
