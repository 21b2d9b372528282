"""The core: a request to speak → phrase cache or speech engine → player, with a trace of how it went."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from kiosk.cache import Entry, PhraseCache, cache_key
from kiosk.errors import CacheError, KioskError
from kiosk.player import Playback, Player
from kiosk.speech import SpeechEngine

log = logging.getLogger(__name__)


@dataclass
class Trace:
    """How one line was spoken; printed by `kiosk say --trace` and kept for the status page."""

    source: str  # "cache" or the engine's name
    key: str  # phrase cache key (first 16 hex digits)
    text_chars: int
    first_byte_ms: float | None  # the engine's first audio byte after the request; None from the cache
    first_audio_ms: float | None  # first frame accepted by the audio device after the request
    frames: int  # audio frames played (without the silence that pads the last period)
    underruns: int  # device underruns recovered during playback
    duration_ms: float  # length of the audio played
    elapsed_ms: float  # request to the last frame played
    cached: bool  # this request stored a new cache entry
    stopped: bool  # playback was stopped before the end
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class Announcer:
    """Speaks text: from the cache when it holds the line, otherwise streamed from the engine and cached."""

    def __init__(
        self, *, engine: SpeechEngine, cache: PhraseCache, player: Player, clock: Callable[[], float] = time.monotonic
    ):
        self.engine = engine
        self.cache = cache
        self.player = player
        self._clock = clock
        self._current: Playback | None = None

    def key_for(self, text: str) -> str:
        return cache_key(self.engine.identity(), self.engine.fmt, text.strip())

    def pin_lines(self, texts: list[str]) -> None:
        """The configured exhibit lines under the current voice are never evicted from the cache."""
        self.cache.pin(self.key_for(t) for t in texts)

    def stop(self) -> None:
        """Silence what is playing now (within one period)."""
        if self._current is not None:
            self._current.stop()

    async def say(self, text: str, *, gain: float = 1.0) -> Trace:
        """Speak `text` and return once it has played; faults are reported in `Trace.error`, never raised."""
        started = self._clock()
        text = text.strip()
        key = self.key_for(text)
        entry = await self._lookup(key)
        if entry is not None:
            return await self._play_cached(entry, started, gain)
        return await self._play_streamed(text, key, started, gain)

    async def prepare(self, text: str) -> bool:
        """Synthesize `text` into the cache without playing it; False when it was cached already.

        Raises KioskError when the engine or the cache fails.
        """
        text = text.strip()
        key = self.key_for(text)
        if await asyncio.to_thread(self.cache.contains, key):
            return False
        audio = bytearray()
        await self.engine.synthesize(text, audio.extend)
        if not await self._store(key, bytes(audio), text):
            raise CacheError("the cache is not writable")
        return True

    async def _lookup(self, key: str) -> Entry | None:
        try:
            return await asyncio.to_thread(self.cache.get, key)
        except OSError as exc:
            log.warning("phrase cache unreadable, asking the engine instead: %s", exc)
            return None

    async def _play_cached(self, entry: Entry, started: float, gain: float) -> Trace:
        playback = self._start(entry.info.fmt, streamed=False, gain=gain)
        playback.feed(entry.pcm)
        playback.finish()
        error = await self._finish(playback)
        return self._trace("cache", entry.info.key, len(entry.info.text), started, None, playback, False, error)

    async def _play_streamed(self, text: str, key: str, started: float, gain: float) -> Trace:
        engine = self.engine
        playback = self._start(engine.fmt, streamed=True, gain=gain)
        audio = bytearray()
        first_byte_at: float | None = None

        def on_audio(chunk: bytes) -> None:
            nonlocal first_byte_at
            if first_byte_at is None:
                first_byte_at = self._clock()
            audio.extend(chunk)
            playback.feed(chunk)

        error = None
        try:
            await engine.synthesize(text, on_audio)
        except KioskError as exc:
            error = str(exc)
        except BaseException:  # cancelled: silence at once
            playback.stop()
            raise
        finally:
            playback.finish()  # what was heard stays; the device plays it out and stops cleanly
        cached = error is None and await self._store(key, bytes(audio), text)
        audio_error = await self._finish(playback)
        return self._trace(engine.name, key, len(text), started, first_byte_at, playback, cached, error or audio_error)

    async def _store(self, key: str, pcm: bytes, text: str) -> bool:
        """Commit the finished stream to the cache (off the event loop); a full or read-only disk is not fatal."""
        engine = self.engine
        whole = len(pcm) - len(pcm) % engine.fmt.frame_bytes
        try:
            await asyncio.to_thread(
                self.cache.put, key, pcm[:whole], fmt=engine.fmt, text=text, identity=engine.identity()
            )
        except CacheError as exc:
            log.warning("line played but not cached: %s", exc)
            return False
        return True

    def _start(self, fmt, *, streamed: bool, gain: float) -> Playback:
        if self._current is not None:
            self._current.stop()
        self._current = self.player.play(fmt, streamed=streamed, gain=gain)
        return self._current

    async def _finish(self, playback: Playback) -> str | None:
        """Wait for the playback to end; the device's error, if any."""
        try:
            await playback.wait()
            return None
        except KioskError as exc:
            return str(exc)
        finally:
            if self._current is playback:
                self._current = None

    def _trace(self, source, key, chars, started, first_byte_at, playback: Playback, cached, error) -> Trace:
        def ms(at: float | None) -> float | None:
            return None if at is None else round((at - started) * 1000, 1)

        stats = playback.stats
        return Trace(
            source=source,
            key=key[:16],
            text_chars=chars,
            first_byte_ms=ms(first_byte_at),
            first_audio_ms=ms(stats.first_audio_at),
            frames=stats.frames,
            underruns=stats.underruns,
            duration_ms=round(stats.frames / playback.fmt.rate * 1000, 1),
            elapsed_ms=ms(self._clock()),
            cached=cached,
            stopped=stats.stopped,
            error=error,
        )
