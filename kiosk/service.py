"""Wiring: config → cache, engine, player, announcer; and their orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from kiosk.alsa_output import AlsaOutput
from kiosk.announcer import Announcer
from kiosk.cache import PhraseCache
from kiosk.config import AudioConfig, Config, resolve_api_key
from kiosk.pcm import AudioFormat
from kiosk.player import Player, SinkOpener
from kiosk.speech.openai_engine import OpenAIEngine


def alsa_opener(audio: AudioConfig) -> SinkOpener:
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(audio.device, fmt, audio.period_ms, audio.buffer_periods)

    return open_sink


def build_cache(cfg: Config) -> PhraseCache:
    return PhraseCache(cfg.cache.dir, int(cfg.cache.max_mb * 1_000_000)).open()


def build_engine(cfg: Config) -> OpenAIEngine:
    return OpenAIEngine(cfg.openai, resolve_api_key(cfg.openai))


@contextlib.asynccontextmanager
async def open_announcer(cfg: Config, *, open_sink: SinkOpener | None = None) -> AsyncIterator[Announcer]:
    """An announcer whose device is already open; everything is closed again on exit."""
    cache = build_cache(cfg)
    engine = build_engine(cfg)
    player = Player(open_sink or alsa_opener(cfg.audio), preroll_ms=cfg.audio.preroll_ms)
    player.start()
    try:
        announcer = Announcer(engine=engine, cache=cache, player=player)
        announcer.pin_lines(list(cfg.phrases.values()))
        await player.open_device(engine.fmt)
        yield announcer
    finally:
        await asyncio.to_thread(player.close)
        await engine.aclose()
