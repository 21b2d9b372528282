"""Live captions (issue #22): word times from text and audio, the caption feed, and the public captions server with
the real service (file ALSA sink, loopback fake OpenAI, MockFactory buttons), followed by a real SSE client."""

from __future__ import annotations

import array
import asyncio
import json
import math
import random

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_service import press, started, until, wait_idle

from kiosk.captions.feed import CaptionFeed, TooManyFollowers
from kiosk.captions.timing import align, estimate, split_words
from kiosk.config import parse_config
from kiosk.pcm import AudioFormat

FMT = AudioFormat(24000, 1, 2)
WELCOME = "Welcome to the hall of minerals. Look closely at the quartz, whose crystals grew slowly."


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def config(server_url, cache_dir, extra=""):
    return parse_config(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"cache:\n  dir: {cache_dir}\nhistory:\n  file: {cache_dir}.history.sqlite3\n"
        "staff:\n  enabled: false\napi:\n  port: 0\nspeech:\n  fallback: none\n"
        "captions:\n  port: 0\n  title: Hall of Minerals\n"
        f"phrases:\n  welcome: {WELCOME}\n"
        "buttons:\n  - {pin: 17, phrase: welcome, cooldown_ms: 0}\n  - {pin: 22, action: stop}\n" + extra
    )


# -- word times


def speechlike(text: str, seed: int = 1) -> tuple[bytes, list[float]]:
    """Audio with a burst per word (longer for longer words), small gaps between words and long ones after
    punctuation, and the true start of each word."""
    rng, rate = random.Random(seed), FMT.rate
    samples, starts = array.array("h", [0] * int(0.25 * rate)), []
    for word, _ in split_words(text):
        starts.append(len(samples) / rate)
        letters = sum(c.isalpha() for c in word)
        frames = int((0.06 + 0.055 * letters) * rng.uniform(0.8, 1.2) * rate)
        samples.extend(int(7000 * math.sin(2 * math.pi * 170 * k / rate)) for k in range(frames))
        stripped = word.strip()
        gap = 0.45 if stripped.endswith(".") else 0.25 if stripped.endswith(",") else rng.uniform(0.0, 0.05)
        samples.extend([0] * int(gap * rate))
    samples.extend([0] * int(0.2 * rate))
    return samples.tobytes(), starts


def test_words_keep_the_text_and_its_sentences():
    words = split_words("  Hello there, visitor.  Look up!\nThe ceiling…")
    assert "".join(w for w, _ in words) == "Hello there, visitor.  Look up!\nThe ceiling…"
    assert [n for _, n in words] == [0, 0, 0, 1, 1, 2, 2]
    assert [w for w, _ in split_words("这是测试。")] == ["这", "是", "测", "试。"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.floats(0, 60))
def test_estimated_times_rise_within_the_line(text, duration):
    words = estimate(text, duration)
    assert "".join(w.text for w in words) == text.lstrip()
    starts = [w.start_ms for w in words]
    assert starts == sorted(starts)
    assert all(0 <= s <= round(duration * 1000) for s in starts)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=200), st.binary(max_size=48000), st.integers(0, 3))
def test_aligned_times_rise_within_any_audio(text, pcm, shift):
    words = align(text, pcm[shift:], FMT)
    duration_ms = len(pcm[shift:]) // 2 / 24
    starts = [w.start_ms for w in words]
    assert starts == sorted(starts) and all(0 <= s <= duration_ms + 1 for s in starts)
    assert "".join(w.text for w in words) == text.lstrip()


def test_pauses_in_the_audio_fix_the_words_after_them():
    pcm, truth = speechlike(WELCOME)
    words = align(WELCOME, pcm, FMT)
    errors = [abs(w.start_ms / 1000 - t) for w, t in zip(words, truth, strict=True)]
    after_punctuation = [errors[i + 1] for i, (w, _) in enumerate(split_words(WELCOME)[:-1]) if w.strip()[-1] in ".,"]
    assert max(after_punctuation) < 0.03  # found in the audio, to a window or two
    assert max(errors) < 0.25
    # by weight alone, the same line drifts much further
    guessed = estimate(WELCOME, len(pcm) / 2 / FMT.rate)
    assert max(abs(w.start_ms / 1000 - t) for w, t in zip(guessed, truth, strict=True)) > max(errors)


# -- the feed


def test_the_feed_follows_a_line_from_first_sound_to_end():
    now = [100.0]
    feed = CaptionFeed(title="Hall", prompt="Press", clock=lambda: now[0])
    assert feed.state() == {"state": "idle", "title": "Hall", "prompt": "Press"}
    line = object()
    feed.heard(line, "Hello there.", "he", estimate("Hello there.", 1.0), heard_from=99.5)
    state = feed.state()
    assert state["state"] == "speaking" and state["position_ms"] == 500 and state["rtl"]
    assert [w[0] for w in state["words"]] == ["Hello ", "there."]
    feed.heard(line, "Hello there.", "he", [], heard_from=99.7)  # the device ran dry: heard 200 ms later
    assert feed.state()["position_ms"] == 300 and feed.state()["id"] == state["id"]
    feed.ended(object())  # another line's end changes nothing
    assert feed.state()["state"] == "speaking"
    feed.ended(line)
    assert feed.state()["state"] == "idle"


def test_the_feed_bounds_its_followers():
    feed = CaptionFeed(max_followers=3, max_per_address=2)
    a, _ = feed.follow("10.0.0.1"), feed.follow("10.0.0.1")
    with pytest.raises(TooManyFollowers):
        feed.follow("10.0.0.1")
    feed.follow("10.0.0.2")
    with pytest.raises(TooManyFollowers):
        feed.follow("10.0.0.3")
    feed.unfollow(a)
    feed.unfollow(a)  # twice is harmless
    feed.follow("10.0.0.1")
    assert feed.followers == 3


# -- the service


class CaptionReader:
    """A real SSE client of /captions/events: every state it was sent, in order."""

    def __init__(self, url: str):
        self.url, self.states, self._task = url, [], None

    async def __aenter__(self):
        self._session = aiohttp.ClientSession()
        self._response = await self._session.get(self.url, timeout=aiohttp.ClientTimeout(total=None, sock_read=30))
        assert self._response.status == 200
        assert self._response.headers["Content-Type"].startswith("text/event-stream")
        self._task = asyncio.ensure_future(self._read())
        await until(lambda: self.states)
        return self

    async def _read(self):
        async for raw in self._response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                self.states.append(json.loads(line[6:]))

    async def __aexit__(self, *exc):
        self._task.cancel()
        self._response.close()
        await self._session.close()

    def speaking(self):
        return [s for s in self.states if s["state"] == "speaking"]


async def test_a_pressed_line_is_captioned_as_heard_then_cached_with_the_same_words(
    server, tmp_path, pulse_device, pins
):
    server.behaviour.ms_per_char = 20  # lines of about two seconds, played in real time by the clocked sink
    service = await started(config(server.url, tmp_path / "c"), pulse_device, pins)
    try:
        url = f"http://127.0.0.1:{service.parts.captions_port}/captions/events"
        async with CaptionReader(url) as reader:
            assert reader.states[0] == {
                "state": "idle",
                "title": "Hall of Minerals",
                "prompt": "Press the button to hear about this exhibit.",
            }
            press(pins, 17)
            await until(lambda: reader.speaking())
            first = reader.speaking()[0]
            assert first["text"] == WELCOME and 0 <= first["position_ms"] < 500
            await wait_idle(service)
            await until(lambda: reader.states[-1]["state"] == "idle")
            streamed_words = reader.speaking()[-1]["words"]  # retimed from the whole audio once it was in
            assert "".join(w[0] for w in streamed_words) == WELCOME

            before = len(reader.states)
            press(pins, 17)  # now from the cache
            await until(lambda: len(reader.speaking()) and reader.states[-1]["state"] == "speaking")
            cached = reader.states[-1]
            assert cached["id"] != first["id"] and cached["words"] == streamed_words
            assert len(reader.states) > before
            await wait_idle(service)
            await until(lambda: reader.states[-1]["state"] == "idle")
    finally:
        await service.stop()


async def test_stop_clears_the_caption_at_once(server, tmp_path, pulse_device, pins):
    service = await started(config(server.url, tmp_path / "c"), pulse_device, pins)
    try:
        url = f"http://127.0.0.1:{service.parts.captions_port}/captions/events"
        async with CaptionReader(url) as reader:
            press(pins, 17)
            await until(lambda: reader.speaking())
            press(pins, 22)
            await until(lambda: reader.states[-1]["state"] == "idle", timeout=2)
            await wait_idle(service)
    finally:
        await service.stop()


async def test_pages_and_odd_requests_never_get_a_server_error(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    base = f"http://127.0.0.1:{service.parts.captions_port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/captions") as page:
                assert page.status == 200 and "Live captions" in await page.text()
                assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            for path in ("/captions.js", "/captions/captions.js", "/captions/captions.css"):
                async with session.get(base + path) as answer:
                    assert answer.status in (200, 404)
            for odd in (
                "/captions?%00=%ff&&=",
                "/captions/../etc/passwd",
                "/captions/%2e%2e/x",
                "/transcript?x=" + "a" * 4000,
            ):
                async with session.get(base + odd) as answer:
                    assert answer.status < 500, odd
            async with session.post(f"{base}/captions/events", data=b"x") as answer:
                assert answer.status == 405
            async with session.get(f"{base}/captions", headers={"Host": "evil.example"}) as answer:
                assert answer.status == 421
    finally:
        await service.stop()
