"""The core: a request to speak → phrase cache or engine chain → player, with a trace of how it went.

Order: the cache (the primary engine's entry, then a fallback engine's), then the engines that are not in
back-off, each held to the chain's rules (kiosk.speech.chain: first audio within `failover_s` while a fallback
stands behind it, a lag behind real time of at most `failover_s`, no more audio than the text can need). A line
cut mid-stream keeps what was heard and is then spoken whole by the next engine, so it is never left half said;
nothing partial is ever cached. An engine that ran away is silenced at once instead: what it still has queued is
not the line, which was said long before. Listeners over HTTP get the same failover (kiosk.listen).

Longer than most because the one path from a request to sound (cache, engines, failover, store) reads best whole.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor

from kiosk.attempt import Attempt, as_played, identity_at
from kiosk.cache import PhraseCache
from kiosk.cache_entry import BLOCK_BYTES, CachedAudio, CorruptEntry, EntryInfo, cache_key
from kiosk.captions.lines import Feed, LineCaption
from kiosk.captions.timing import Pace, align, estimate
from kiosk.chime import Chime, beep
from kiosk.errors import CacheError, KioskError, SpeechError
from kiosk.in_step import Start, first_audio, record
from kiosk.listen import Syntheses, once
from kiosk.loudness import Levelled, Leveller, linear
from kiosk.player import Playback, Player
from kiosk.speech import SpeechEngine
from kiosk.speech.chain import EngineChain
from kiosk.trace import SPEECH_S_PER_CHAR, Trace

log = logging.getLogger(__name__)


class Announcer:
    """Speaks text: from the cache when it holds the line, otherwise streamed from the engine chain and cached."""

    def __init__(
        self,
        *,
        engines: EngineChain,
        cache: PhraseCache,
        player: Player,
        io: Executor | None = None,
        chime: Chime | None = None,
        leveller: Leveller | None = None,
        voices: Mapping[str, EngineChain] | None = None,
        captions: Feed | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engines = engines  # the default language's voice
        self.voices = dict(voices or {})  # language → its own engines, for the other languages
        self.cache = cache
        self.player = player
        self._io = io  # threads for cache reads and writes (None: asyncio's default pool)
        self.chime = chime  # played at once for a line that is not ready offline
        self._chime_playback: Playback | None = None
        self.last_beep: Playback | None = None  # a volume press's tone (kiosk.presses)
        self.leveller = leveller  # matched loudness; None plays every line as its engine made it
        self.captions = captions  # told when each line is heard, for the live captions
        self.pace = Pace()  # how fast each voice speaks: a streamed line's word times until its audio is in
        self._clock = clock
        self._current: Playback | None = None
        #: Why the last line could not be cached (read-only or full disk), until one is cached again.
        self.cache_problem: str | None = None
        self._tasks: set[asyncio.Task] = set()
        self._listening = Syntheses(self._background)  # lines being synthesized for listeners

    @property
    def engine(self) -> SpeechEngine:
        return self.engines.primary

    def chain_for(self, language: str | None) -> EngineChain:
        """The engines that speak `language` (the default language's for None or one without voices of its own)."""
        return self.voices.get(language or "", self.engines)

    def key_for(self, text: str, engine: SpeechEngine | None = None, speed: float = 1.0) -> str:
        """The cache key of `text` said by `engine` (the primary) at `speed`: a slower line is an entry of its own."""
        engine = engine or self.engines.primary
        return cache_key(engine.identity(), engine.fmt, text.strip(), speed)

    def keys_for(self, text: str, language: str | None = None, speed: float = 1.0) -> list[str]:
        """Cache keys of `text` at `speed` in every voice of its language, primary first."""
        return [self.key_for(text, e, speed) for e in self.chain_for(language).engines]

    def pin_lines(self, lines: list[str | tuple[str, str | None]]) -> None:
        """The configured exhibit lines (texts, or (text, language)), in every voice of their language, are never
        evicted from the cache."""
        pairs = [(line, None) if isinstance(line, str) else line for line in lines]
        self.cache.pin(key for text, language in pairs for key in self.keys_for(text, language))

    async def aclose(self, timeout: float = 1.0) -> None:
        """End the syntheses still running for listeners (before their engines are closed under them)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def recheck_cache(self) -> None:
        """Look whether the cache can be written: `cache_problem` says why not, and clears once it can again
        (blocking: call from a thread)."""
        was, self.cache_problem = self.cache_problem, self.cache.write_problem()
        if was is not None and self.cache_problem is None:
            log.info("the phrase cache can be written again")

    def stop(self) -> None:
        """Silence what is playing now (within one period)."""
        for playback in (self._chime_playback, self._current, self.last_beep):
            if playback is not None:
                playback.stop()

    async def say(
        self,
        text: str,
        *,
        gain: float = 1.0,
        language: str | None = None,
        speed: float = 1.0,
        private: bool = False,
        start: Start | None = None,
    ) -> Trace:
        """Speak `text` (in `language`'s voice, at `speed` times its own) and return once it has played; faults are
        reported in `Trace.error`, never raised. A `private` line (a setup code) is only synthesized and played:
        not looked up in nor stored to the cache, not captioned, and its trace names no key (a hash of the code).
        A cached line starts at `start` (kiosk.in_step); a streamed one when its audio is in."""
        started = self._clock()
        text = text.strip()
        caption = LineCaption(None if private else self.captions, text, language, self.pace)
        try:
            if not private:
                return await self._say(text, started, gain, language, caption, speed, start)
            trace = await self._play_streamed(text, started, gain, self.chain_for(language), caption, speed, private)
            trace.key = ""
            return trace
        finally:
            caption.end()

    async def _say(
        self, text: str, started: float, gain: float, language: str | None, caption: LineCaption, speed: float, start
    ) -> Trace:
        line = f"'{text[:40]}'"
        for key in self.keys_for(text, language, speed):
            entry = await self._lookup(key)
            if entry is not None:
                trace = await self._play_cached(entry, started, gain, caption, start)
                trace.language = language
                record(trace, start, line)
                return trace
        chime = self._ring(gain)
        try:
            trace = await self._play_streamed(text, started, gain, self.chain_for(language), caption, speed)
            trace.language = language
            record(trace, start, line)
        finally:
            self._chime_playback = None
        if chime is not None and chime.stats.first_audio_at is not None:
            rang_ms = round((chime.stats.first_audio_at - started) * 1000, 1)
            trace.first_sound_ms = min(rang_ms, trace.first_audio_ms or rang_ms)
        return trace

    def beep(self, kind: str, gain: float) -> Playback:
        """A volume press's tone (kiosk.chime.beep), in the voice's format so the device stays open; a beep still
        playing is cut for it, so presses in a row never pile tones up behind each other."""
        if self.last_beep is not None:
            self.last_beep.stop()
        fmt = self.engine.fmt
        playback = self.last_beep = self.player.play(fmt, streamed=False, gain=gain)
        playback.feed(beep(fmt.rate, kind))
        playback.finish()
        return playback

    def _ring(self, gain: float) -> Playback | None:
        """The chime, at once: the player plays it to its end, then the speech queued behind it."""
        if self.chime is None:
            return None
        playback = self._chime_playback = self.player.play(self.chime.fmt, streamed=False, gain=gain)
        playback.feed(self.chime.pcm)
        playback.finish()
        return playback

    async def prepare(self, text: str, engine: SpeechEngine | None = None, language: str | None = None) -> bool:
        """Synthesize `text` into the cache with `engine` (its language's primary) without playing it; False when
        it was cached already. Raises KioskError when the engine or the cache fails."""
        chain = self.chain_for(language)
        engine = engine or chain.primary
        text = text.strip()
        key = self.key_for(text, engine)
        if await self._in_io(self.cache.contains, key):
            return False
        audio = bytearray()
        await chain.synthesize(engine, text, audio.extend, None, realtime=False)
        stored = await self._store(engine, key, bytes(audio), text)
        if stored is None:
            raise CacheError("the cache is not writable")
        lead_s = stored.words[0].start_ms / 1000 if stored.words else 0.0
        self.pace.learn(engine.name, text, stored.duration_s, lead_s=lead_s)
        return True

    async def listen(self, text: str, language: str | None = None):
        """(format, chunks) of `text` for a listener: from the cache, else synthesized as it is heard (and cached
        at a clean end, even if the listener has gone). Raises SpeechError when no engine could start it."""
        text = text.strip()
        for key in self.keys_for(text, language):
            entry = await self._lookup(key)
            if entry is not None:
                return entry.info.fmt, once(entry.pcm)
        chain = self.chain_for(language)

        def store(engine: SpeechEngine, pcm: bytes) -> Awaitable[EntryInfo | None]:
            return self._store(engine, self.key_for(text, engine), pcm, text)

        synthesis = self._listening.join(self.key_for(text, chain.primary), chain, text, store)
        return await synthesis.opened()

    async def _lookup(self, key: str) -> CachedAudio | None:
        """The cached line opened with only its first block read and verified (constant time, whatever its length);
        None when absent or corrupt. Its `pcm` reads the rest at once, for a listener over HTTP."""
        try:
            return await self._in_io(self.cache.open_entry, key)
        except OSError as exc:
            log.warning("phrase cache unreadable, asking the engine instead: %s", exc)
            return None

    async def _play_cached(
        self, entry: CachedAudio, started: float, gain: float, caption: LineCaption, start: Start | None = None
    ) -> Trace:
        """Play a cached line block by block, each verified just before it is fed; the first plays at once (or is
        held by the writer thread until `start`)."""
        level_db = self._level_db(entry.info.levelled, entry.info.engine)
        playback = self._start(entry.info.fmt, streamed=False, gain=gain * linear(level_db))
        playback.whole_periods = True
        playback.start_at = start.mono if start else None
        caption.attach(playback, entry.info.words or estimate(entry.info.text, entry.info.duration_s))
        attempt = Attempt([playback])
        try:
            attempt.error = await self._feed_cached(entry, playback)
        finally:
            playback.finish()  # what was verified plays out
            entry.close()
        attempt.error = await self._finish(playback) or attempt.error
        if entry.outdated and attempt.error is None:
            self._background(self._in_io(self.cache.migrate, entry.key))  # rewritten once, with its loudness
        trace = self._trace("cache", entry.info.engine, entry.info.key, len(entry.info.text), started, attempt, [])
        levelled = entry.info.levelled
        trace.loudness_lufs = as_played(levelled and levelled.loudness.lufs, level_db)
        return trace

    async def _feed_cached(self, entry: CachedAudio, playback: Playback) -> str | None:
        """Feed the blocks, reading each only once less than half a block waits to be played (so an SD card is read
        1.4 s ahead at most, and never in the writer thread). A block that fails its hash is never fed: the line
        ends where it would begin, and the entry is removed."""
        for index in range(entry.block_count):
            if index:
                await playback.wait_queued_below(BLOCK_BYTES // 2)
                if playback.ended:
                    return None
            try:
                block = entry.first_block if index == 0 else await self._in_io(entry.read_block, index)
            except (CorruptEntry, OSError) as exc:
                await self._in_io(self.cache.discard, entry.key, str(exc))
                return f"cache entry {entry.key[:12]} is corrupt ({exc}); it was removed"
            playback.feed(block)
        return None

    def _background(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play_streamed(
        self,
        text: str,
        started: float,
        gain: float,
        chain: EngineChain,
        caption: LineCaption,
        speed: float,
        private: bool = False,
    ) -> Trace:
        attempts = chain.attempts(private=private)
        if not attempts:
            reasons = "; ".join(f"{h['name']}: {h['reason']}" for h in chain.state())
            attempt = Attempt(error=f"no speech engine available now ({reasons})")
            primary = chain.primary.name
            return self._trace(primary, primary, self.key_for(text, None, speed), len(text), started, attempt, [])
        errors: list[str] = []
        heard = Attempt()
        for engine, deadline in attempts:
            attempt = await self._attempt(chain, engine, text, gain, deadline, caption, speed=speed, private=private)
            attempt.playbacks[:0] = heard.playbacks  # what an earlier engine got heard counts in the trace
            attempt.silenced[:0] = heard.silenced
            attempt.first_byte_at = heard.first_byte_at or attempt.first_byte_at
            if attempt.error is None:
                break
            errors.append(attempt.error)
            heard = attempt
        failover = errors if attempt.error is None else errors[:-1]
        key = self.key_for(text, engine, speed)
        trace = self._trace(engine.name, engine.name, key, len(text), started, attempt, failover)
        trace.loudness_lufs = attempt.loudness_lufs
        return trace

    async def _attempt(
        self,
        chain: EngineChain,
        engine: SpeechEngine,
        text: str,
        gain: float,
        deadline: float | None,
        caption: LineCaption,
        *,
        speed: float = 1.0,
        private: bool = False,
    ) -> Attempt:
        """Stream `text` from one engine at `speed`; on failure say why (after playing out whatever was heard)."""
        attempt = Attempt()
        audio = bytearray()
        level_db = self._level_db(None, engine.name)  # learned from the engine's recent lines

        def on_audio(chunk: bytes) -> None:
            if not attempt.playbacks:
                attempt.first_byte_at = self._clock()
                expected_s = len(text) * SPEECH_S_PER_CHAR / speed
                playback = self._start(engine.fmt, streamed=True, gain=gain * linear(level_db), expected_s=expected_s)
                caption.attach_streamed(playback, engine.name, speed, audio, engine.fmt)
                attempt.playbacks.append(playback)
            audio.extend(chunk)
            attempt.playbacks[-1].feed(chunk)
            caption.audio_arrived()

        try:
            await chain.synthesize(engine, text, on_audio, deadline, speed=speed)
        except SpeechError as exc:
            attempt.error = str(exc)
            if exc.kind == "runaway":  # what is still queued is not the line (the line was said long before)
                attempt.silence()
        except KioskError as exc:
            attempt.error = str(exc)
        except BaseException:  # cancelled: silence at once
            for playback in attempt.playbacks:
                playback.stop()
            raise
        finally:
            for playback in attempt.playbacks:
                playback.finish()  # what was heard stays; the device plays it out and stops cleanly
        if attempt.error is None and not private:
            stored = await self._store(engine, self.key_for(text, engine, speed), bytes(audio), text, speed)
            attempt.cached = stored is not None
            attempt.loudness_lufs = as_played(stored and stored.levelled and stored.levelled.engine_lufs, level_db)
            words = stored.words if stored and stored.words else await self._in_io(align, text, audio, engine.fmt)
            caption.retime(words, engine.name, len(audio) / engine.fmt.frame_bytes / engine.fmt.rate, speed)
        for playback in attempt.playbacks:
            audio_error = await self._finish(playback)
            attempt.error = attempt.error or audio_error
        return attempt

    async def _store(
        self, engine: SpeechEngine, key: str, pcm: bytes, text: str, speed: float = 1.0
    ) -> EntryInfo | None:
        """Commit the finished stream to the cache (off the event loop; its loudness is measured there and learned
        for the engine); None when it could not be: a full or read-only disk is not fatal."""
        whole = len(pcm) - len(pcm) % engine.fmt.frame_bytes
        try:
            info = await self._in_io(
                functools.partial(
                    self.cache.put, fmt=engine.fmt, text=text, identity=identity_at(engine.identity(), speed)
                ),
                key,
                pcm[:whole],
            )
        except CacheError as exc:
            log.warning("line played but not cached: %s", exc)
            self.cache_problem = str(exc)
            return None
        self.cache_problem = None
        if self.leveller is not None:
            self.leveller.learn(engine.name, info.levelled)
        return info

    def _level_db(self, levelled: Levelled | None, engine: str) -> float:
        """The gain a line still needs to play at the target: for a streamed one (`levelled` None), its engine's."""
        return 0.0 if self.leveller is None else self.leveller.gain_db(levelled, engine)

    async def _in_io(self, function: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    def _start(self, fmt, *, streamed: bool, gain: float, expected_s: float | None = None) -> Playback:
        if self._current is not None:
            self._current.stop()
        self._current = self.player.play(fmt, streamed=streamed, gain=gain, expected_s=expected_s)
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

    def _trace(self, source, engine, key, chars, started, attempt: Attempt, failover: list[str]) -> Trace:
        trace = Trace.played(
            (source, engine, key, chars),
            attempt.playbacks,
            started=started,
            ended=self._clock(),
            first_byte_at=attempt.first_byte_at,
            cached=attempt.cached,
            silenced=attempt.silenced,
            error=attempt.error,
            failover=failover,
        )
        first_audio(trace, attempt.playbacks)
        return trace
