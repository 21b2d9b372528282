"""Building the speaker's parts from a config: the engine chains (OpenAI, the local voice), the phrase cache, the
player on its device, the matched-loudness leveller — and, for one-off commands, a whole announcer.

Used by the service (at start and on a reload) and by the CLI's one-off commands (`kiosk say`, `kiosk cache`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

from kiosk.alsa_output import AlsaOutput
from kiosk.announcer import Announcer
from kiosk.cache import PhraseCache
from kiosk.captions.lines import Feed
from kiosk.chime import Chime, load_chime
from kiosk.config import AudioConfig, Config, OpenAIConfig, read_secret_file, resolve_api_key
from kiosk.errors import ConfigError, KioskError, SpeechError
from kiosk.loudness import Leveller
from kiosk.pcm import AudioFormat
from kiosk.player import Player, SinkOpener
from kiosk.speech import SpeechEngine
from kiosk.speech.chain import EngineChain
from kiosk.speech.openai_engine import OpenAIEngine

BUNDLED_VOICE = "joe-us"  # kiosk.speech.piper_engine.BUNDLED_VOICE, named here without loading onnxruntime


def alsa_opener(audio: AudioConfig) -> SinkOpener:
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(audio.device, fmt, audio.period_ms, audio.buffer_periods)

    return open_sink


def build_player(audio: AudioConfig, open_sink: SinkOpener | None = None) -> Player:
    """A player on the configured device (or `open_sink`), with the configured pre-roll."""
    return Player(open_sink or alsa_opener(audio), preroll_ms=audio.preroll_ms, preroll_max_ms=audio.preroll_max_ms)


def build_cache(cfg: Config) -> PhraseCache:
    return new_cache(cfg).open()


def new_cache(cfg: Config) -> PhraseCache:
    """The phrase cache as configured (not opened yet): where, how large, and the loudness lines are levelled to."""
    return PhraseCache(cfg.cache.dir, int(cfg.cache.max_mb * 1_000_000), loudness_lufs=cfg.audio.loudness_lufs)


def api_key_or_none(openai: OpenAIConfig) -> str | None:
    """The OpenAI key; None when there is none or its file cannot be read (the service reports that)."""
    try:
        return resolve_api_key(openai)
    except ConfigError:
        return None


def piper_installed() -> bool:
    return importlib.util.find_spec("piper") is not None


def build_engine(cfg: Config) -> SpeechEngine:
    """OpenAI when a key is configured; otherwise the local Piper voice if it is installed ("auto")."""
    key = api_key_or_none(cfg.openai)
    choice = cfg.speech.engine
    if choice == "auto":
        choice = "openai" if key or not piper_installed() else "piper"
    if choice == "piper":
        if not piper_installed():
            raise SpeechError("speech.engine is piper but Piper is not installed (pip install 'kiosk[piper]')")
        return build_local_voice(cfg.piper)
    return OpenAIEngine(cfg.openai, key)


def build_local_voice(piper_cfg) -> SpeechEngine:
    from kiosk.speech.piper_engine import PiperEngine  # imported only when used: it loads onnxruntime

    return PiperEngine(piper_cfg)


def build_leveller(cfg: Config, cache: PhraseCache) -> Leveller | None:
    """Matched loudness at the configured target, each engine's gain learned from the lines it has in the cache
    (so the first line heard after a restart is already at the right level). Reads every entry's header. None
    when matching is off (`audio.loudness_lufs: null`)."""
    if cfg.audio.loudness_lufs is None:
        return None
    leveller = Leveller(cfg.audio.loudness_lufs)
    entries = sorted(cache.list(), key=lambda info: info.created)  # the most recent last: they are remembered
    leveller.learn_all((info.engine, info.levelled) for info in entries)
    return leveller


def build_voices(cfg: Config, clock=time.monotonic) -> dict[str, EngineChain]:
    """The engines of each language after the first (the default, spoken by build_chain's): OpenAI with the
    language's own voice and instructions where given, then the language's local Piper voice where one is set. A
    language without a local voice needs the network until its lines are cached."""
    key = api_key_or_none(cfg.openai)
    voices = {}
    for n, lang in enumerate(cfg.languages[1:], start=1):
        hint = f"or give {lang.spoken_name} a local voice: languages[{n}].piper_voice"
        openai_cfg = dataclasses.replace(
            cfg.openai,
            voice=lang.voice or cfg.openai.voice,
            instructions=cfg.openai.instructions if lang.instructions is None else lang.instructions,
        )
        engines: list[SpeechEngine] = []
        if cfg.speech.engine != "piper" or key:
            engines.append(OpenAIEngine(openai_cfg, key, offline_hint=hint))
        if lang.piper_voice and piper_installed():
            engines.append(build_local_voice(dataclasses.replace(cfg.piper, voice=lang.piper_voice)))
        if not engines:  # speech.engine piper and no local voice for it: say so when asked, never fail silently
            engines.append(OpenAIEngine(openai_cfg, key, offline_hint=hint))
        voices[lang.code] = EngineChain(engines, failover_s=cfg.speech.failover_ms / 1000, clock=clock)
    return voices


def build_chain(cfg: Config, clock=time.monotonic) -> EngineChain:
    """The primary engine, then the local voice as fallback ("auto": when installed and not already primary)."""
    primary = build_engine(cfg)
    engines = [primary]
    wanted = cfg.speech.fallback
    if wanted == "piper" and not piper_installed():
        raise SpeechError("speech.fallback is piper but Piper is not installed (pip install 'kiosk[piper]')")
    if wanted != "none" and primary.name != "piper" and piper_installed():
        engines.append(build_local_voice(cfg.piper))
    return EngineChain(engines, failover_s=cfg.speech.failover_ms / 1000, clock=clock)


@contextlib.asynccontextmanager
async def open_announcer(cfg: Config, *, open_sink: SinkOpener | None = None) -> AsyncIterator[Announcer]:
    """An announcer whose device is already open; everything is closed again on exit."""
    cache = build_cache(cfg)
    engines, voices = build_chain(cfg), build_voices(cfg)
    player = build_player(cfg.audio, open_sink)
    player.start()
    try:
        leveller = build_leveller(cfg, cache)
        announcer = Announcer(engines=engines, cache=cache, player=player, leveller=leveller, voices=voices)
        announcer.pin_lines(cfg.all_lines())
        await player.open_device(engines.primary.fmt)
        yield announcer
    finally:
        await asyncio.to_thread(player.close)
        for chain in (engines, *voices.values()):
            await chain.aclose()


async def open_cache(cfg: Config, *, on_event: Callable[[str], None]) -> PhraseCache:
    """The phrase cache, opened; a read-only, full or missing cache directory is reported, never fatal."""
    cache = new_cache(cfg)
    try:
        await asyncio.to_thread(cache.open)
        stale = await asyncio.to_thread(cache.remove_stale_temps)
    except (KioskError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        on_event(f"phrase cache {cfg.cache.dir}: {reason}; lines already cached still play where readable")
        return cache
    if stale:
        on_event(f"removed {stale} unfinished cache file(s) left by a crash or power cut")
    return cache


async def new_announcer(
    cfg: Config,
    engines: EngineChain,
    voices: dict[str, EngineChain],
    cache: PhraseCache,
    player: Player,
    *,
    io: Executor,
    on_event: Callable[[str], None],
    captions: Feed | None = None,
) -> Announcer:
    """The service's announcer: its chime (one that cannot be read is reported and left out) and its leveller."""
    return Announcer(
        engines=engines,
        cache=cache,
        player=player,
        io=io,
        chime=_chime(cfg, engines.primary.fmt, on_event),
        leveller=await asyncio.to_thread(build_leveller, cfg, cache),
        voices=voices,
        captions=captions,
    )


def _chime(cfg: Config, fmt: AudioFormat, on_event: Callable[[str], None]) -> Chime | None:
    try:
        return load_chime(cfg.audio.chime, fmt)
    except ConfigError as exc:
        on_event(f"no chime: {exc.problems[0]}")
        return None


def api_token(cfg: Config) -> str | None:
    """The API's bearer token where one is configured; raises ConfigError when its file cannot be read."""
    return read_secret_file(cfg.api.token_file, "api.token_file") if cfg.api.token_file else None


def read_secrets(cfg: Config) -> tuple[str | None, str | None, list[str]]:
    """(API token, OpenAI key, problems). A damaged file is a problem for the status, never a reason not to start:
    without its key the speaker plays what is cached and the local voice speaks the rest; without its token the
    API refuses every call rather than open up."""
    problems = []
    try:
        token = api_token(cfg)
    except ConfigError as exc:
        token = secrets.token_urlsafe(32)  # a token nobody has: every call is refused
        problems.append(
            f"The API token cannot be read ({exc.problems[0]}); show controls are refused until it is fixed."
        )
    try:
        key = resolve_api_key(cfg.openai)
    except ConfigError as exc:
        key = None
        problems.append(
            f"The OpenAI key cannot be read ({exc.problems[0]}); lines not ready offline use the local voice."
        )
    return token, key, problems
