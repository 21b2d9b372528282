"""Wiring: config → cache, engine, player, announcer; and their orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator

from kiosk.alsa_output import AlsaOutput
from kiosk.announcer import Announcer
from kiosk.cache import PhraseCache
from kiosk.config import AudioConfig, Config, resolve_api_key
from kiosk.errors import SpeechError
from kiosk.pcm import AudioFormat
from kiosk.player import Player, SinkOpener
from kiosk.speech import SpeechEngine
from kiosk.speech.openai_engine import OpenAIEngine


def alsa_opener(audio: AudioConfig) -> SinkOpener:
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(audio.device, fmt, audio.period_ms, audio.buffer_periods)

    return open_sink


def build_cache(cfg: Config) -> PhraseCache:
    return PhraseCache(cfg.cache.dir, int(cfg.cache.max_mb * 1_000_000)).open()


def piper_installed() -> bool:
    return importlib.util.find_spec("piper") is not None


def build_engine(cfg: Config) -> SpeechEngine:
    """OpenAI when a key is configured; otherwise the local Piper voice if it is installed ("auto")."""
    key = resolve_api_key(cfg.openai)
    choice = cfg.speech.engine
    if choice == "auto":
        choice = "openai" if key or not piper_installed() else "piper"
    if choice == "piper":
        if not piper_installed():
            raise SpeechError("speech.engine is piper but Piper is not installed (pip install 'kiosk[piper]')")
        from kiosk.speech.piper_engine import PiperEngine  # imported only when chosen: it loads onnxruntime

        return PiperEngine(cfg.piper)
    return OpenAIEngine(cfg.openai, key)


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
