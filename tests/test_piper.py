"""The local Piper voice: speaks with no key and no network, at its own rate, and is cached like any engine."""

import asyncio
import wave

import pytest
from conftest import file_sink_opener

from kiosk.config import parse_config
from kiosk.service import build_engine, open_announcer

pytest.importorskip("piper", reason="the piper extra is not installed")

LINE = "The meteorite is older than any rock on Earth."


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_auto_picks_openai_with_a_key_and_piper_without(monkeypatch, no_key):
    assert build_engine(parse_config("")).name == "piper"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert build_engine(parse_config("")).name == "openai"
    assert build_engine(parse_config("speech:\n  engine: piper\n")).name == "piper"


async def test_uncached_line_spoken_by_piper_then_from_cache(tmp_path, no_key):
    wav = tmp_path / "out.wav"
    cfg = parse_config(f"cache:\n  dir: {tmp_path / 'cache'}\n")
    device = f"file:FILE={wav},FORMAT=wav"
    async with open_announcer(cfg, open_sink=file_sink_opener(device)) as announcer:
        assert announcer.engine.fmt.rate == 22_050
        first = await asyncio.wait_for(announcer.say(LINE), timeout=60)
        second = await asyncio.wait_for(announcer.say(LINE), timeout=10)
    assert first.error is None and first.source == "piper" and first.cached
    assert first.duration_ms > 1500  # about two seconds of speech, not silence
    assert second.source == "cache" and second.frames == first.frames
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 22_050
        audio = w.readframes(w.getnframes())
    assert max(abs(int.from_bytes(audio[i : i + 2], "little", signed=True)) for i in range(0, 20_000, 2)) > 1000
