"""The core: a request to speak → phrase cache or engine chain → player, with a trace of how it went.

Order: the cache (the primary engine's entry, then a fallback engine's), then the engines that are not in
back-off. The primary engine gets `failover_s` to deliver its first audio when a fallback stands behind it. A line
cut mid-stream keeps what was heard and is then spoken whole by the next engine, so it is never left half said;
nothing partial is ever cached.

An engine that cannot keep up is a fault too. From an engine's first audio byte, its lag is the wall-clock time since
that byte minus the seconds of audio received; a listener would hear a gap once the lag outgrows what is queued.
Every engine, the last one included, is given up on (SpeechError "audio arriving too slowly", transient) once its
lag exceeds `failover_s`; the lag is checked on a timer (every 100 ms), so a stall that delivers nothing is caught
too. A line that was cut this way is spoken whole by the next engine, or ends with the error on the last one. So no
press holds the speaker for longer than the first-audio deadline + the line's spoken length + `failover_s` (plus one
check) for each engine that gave up, plus the next engine's own time, however slowly an engine trickles bytes.
Healthy streams stay far below the limit: 1.2-3x real time with jitter, 400 ms bursts or an 800 ms stall mid-line
lag by well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field

from kiosk.cache import BLOCK_BYTES, CachedAudio, CorruptEntry, EntryInfo, PhraseCache, cache_key
from kiosk.chime import Chime
from kiosk.errors import CacheError, KioskError, SpeechError
from kiosk.loudness import Levelled, Leveller, linear
from kiosk.player import Playback, Player
from kiosk.speech import SpeechEngine
from kiosk.speech.chain import EngineChain

log = logging.getLogger(__name__)

# Speech runs at about 60-70 ms of audio per character; erring long only makes a slow stream wait a little more.
SPEECH_S_PER_CHAR = 0.075


@dataclass
class Trace:
    """How one line was spoken; printed by `kiosk say --trace` and kept for the status page."""

    source: str  # "cache", or the engine that spoke it
    engine: str  # the engine whose voice was heard (for the cache: the one that made the entry)
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
    failover: list[str] = field(default_factory=list)  # engines that failed before the one that spoke
    first_sound_ms: float | None = None  # first frame of the chime or of the speech, whichever came first
    loudness_lufs: float | None = None  # the line's loudness as played (before the staff volume); None: unmeasured
    language: str | None = None  # the language heard (None: the exhibit offers no languages)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def failure(cls, engine: str, text_chars: int, error: str, elapsed_ms: float | None) -> Trace:
        """The trace of a line that failed before or outside the announcer's own accounting."""
        return cls("none", engine, "", text_chars, None, None, 0, 0, 0.0, elapsed_ms or 0.0, False, False, error)


@dataclass
class _Attempt:
    """One engine's try at a line."""

    playbacks: list[Playback] = field(default_factory=list)
    first_byte_at: float | None = None
    cached: bool = False
    error: str | None = None
    loudness_lufs: float | None = None


class Synthesis:
    """One line being synthesized for listeners over HTTP: any number of readers, each from the start.

    It runs as its own task, so a listener who goes away does not stop it: the line is finished and cached, and the
    next request is served from the cache. Only touched from the event loop, so it needs no lock.
    """

    def __init__(self) -> None:
        self.fmt = None
        self.chunks: list[bytes] = []
        self.done = False
        self.error: str | None = None
        self._waiters: list[asyncio.Future] = []

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def end(self, error: str | None = None) -> None:
        self.done, self.error = True, error
        self._wake()

    async def started(self) -> None:
        """Wait until there is audio (or an error)."""
        while not (self.chunks or self.done):
            await self._changed()

    async def read(self):
        sent = 0
        while True:
            while sent < len(self.chunks):
                sent += 1
                yield self.chunks[sent - 1]
            if self.done:
                return
            await self._changed()

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


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
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engines = engines  # the default language's voice
        self.voices = dict(voices or {})  # language → its own engines, for the other languages
        self.cache = cache
        self.player = player
        self._io = io  # threads for cache reads and writes (None: asyncio's default pool)
        self.chime = chime  # played at once for a line that is not ready offline
        self._chime_playback: Playback | None = None
        self.leveller = leveller  # matched loudness; None plays every line as its engine made it
        self._clock = clock
        self._current: Playback | None = None
        #: Why the last line could not be cached (read-only or full disk), until one is cached again.
        self.cache_problem: str | None = None
        self._listening: dict[str, Synthesis] = {}  # lines being synthesized for listeners, by primary key
        self._tasks: set[asyncio.Task] = set()

    @property
    def engine(self) -> SpeechEngine:
        return self.engines.primary

    def chain_for(self, language: str | None) -> EngineChain:
        """The engines that speak `language` (the default language's for None or one without voices of its own)."""
        return self.voices.get(language or "", self.engines)

    def key_for(self, text: str, engine: SpeechEngine | None = None) -> str:
        engine = engine or self.engines.primary
        return cache_key(engine.identity(), engine.fmt, text.strip())

    def keys_for(self, text: str, language: str | None = None) -> list[str]:
        """Cache keys of `text` in every voice of its language, primary first."""
        return [self.key_for(text, e) for e in self.chain_for(language).engines]

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

    def stop(self) -> None:
        """Silence what is playing now (within one period)."""
        for playback in (self._chime_playback, self._current):
            if playback is not None:
                playback.stop()

    async def say(self, text: str, *, gain: float = 1.0, language: str | None = None) -> Trace:
        """Speak `text` (in `language`'s voice) and return once it has played; faults are reported in
        `Trace.error`, never raised."""
        started = self._clock()
        text = text.strip()
        for key in self.keys_for(text, language):
            entry = await self._lookup(key)
            if entry is not None:
                trace = await self._play_cached(entry, started, gain)
                trace.language = language
                return trace
        chime = self._ring(gain)
        try:
            trace = await self._play_streamed(text, started, gain, self.chain_for(language))
            trace.language = language
        finally:
            self._chime_playback = None
        if chime is not None and chime.stats.first_audio_at is not None:
            rang_ms = round((chime.stats.first_audio_at - started) * 1000, 1)
            trace.first_sound_ms = min(rang_ms, trace.first_audio_ms or rang_ms)
        return trace

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
        try:
            await engine.synthesize(text, audio.extend)
        except SpeechError as exc:
            chain.failed(engine, exc)
            raise
        chain.succeeded(engine)
        if await self._store(engine, key, bytes(audio), text) is None:
            raise CacheError("the cache is not writable")
        return True

    async def listen(self, text: str, language: str | None = None):
        """(format, chunks) of `text` for a listener: from the cache, else synthesized as it is heard (and cached
        at a clean end, even if the listener has gone). Raises SpeechError when no engine could start it."""
        text = text.strip()
        for key in self.keys_for(text, language):
            entry = await self._lookup(key)
            if entry is not None:
                return entry.info.fmt, _once(entry.pcm)
        chain = self.chain_for(language)
        key = self.key_for(text, chain.primary)
        synthesis = self._listening.get(key)
        if synthesis is None:
            synthesis = self._listening[key] = Synthesis()
            task = asyncio.create_task(self._synthesize_for_listeners(text, key, synthesis, chain))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await synthesis.started()
        if not synthesis.chunks:
            raise SpeechError(synthesis.error or "no audio")
        return synthesis.fmt, synthesis.read()

    async def _synthesize_for_listeners(self, text: str, key: str, synthesis: Synthesis, chain: EngineChain) -> None:
        errors: list[str] = []
        try:
            engines = chain.usable()
            for i, engine in enumerate(engines):
                deadline = chain.failover_s if i + 1 < len(engines) else None
                error = await self._synthesize_into(chain, engine, text, synthesis, deadline)
                if error is None or synthesis.chunks:  # done, or cut after listeners heard it: nothing to switch to
                    synthesis.end(error)
                    return
                errors.append(error)
            synthesis.end("; ".join(errors) or "no speech engine available now")
        except Exception as exc:  # nobody awaits this task: a fault nobody foresaw ends the line, logged once
            log.exception("synthesizing a line for a listener failed")
            synthesis.end(f"internal error: {type(exc).__name__}")
        finally:
            if not synthesis.done:
                synthesis.end("cancelled")
            self._listening.pop(key, None)

    async def _synthesize_into(
        self, chain: EngineChain, engine: SpeechEngine, text: str, synthesis: Synthesis, deadline: float | None
    ) -> str | None:
        """One engine's try; None on success (and the line cached), else why not."""

        def on_audio(chunk: bytes) -> None:
            synthesis.fmt = engine.fmt
            synthesis.add(chunk)

        try:
            await _synthesize_within(engine, text, on_audio, deadline, chain.failover_s, self._clock)
        except SpeechError as exc:
            chain.failed(engine, exc)
            return str(exc)
        chain.succeeded(engine)
        await self._store(engine, self.key_for(text, engine), b"".join(synthesis.chunks), text)
        return None

    async def _lookup(self, key: str) -> CachedAudio | None:
        """The cached line opened with only its first block read and verified (constant time, whatever its length);
        None when absent or corrupt. Its `pcm` reads the rest at once, for a listener over HTTP."""
        try:
            return await self._in_io(self.cache.open_entry, key)
        except OSError as exc:
            log.warning("phrase cache unreadable, asking the engine instead: %s", exc)
            return None

    async def _play_cached(self, entry: CachedAudio, started: float, gain: float) -> Trace:
        """Play a cached line block by block, each verified just before it is fed; the first plays at once."""
        level_db = self._level_db(entry.info.levelled, entry.info.engine)
        playback = self._start(entry.info.fmt, streamed=False, gain=gain * linear(level_db))
        playback.whole_periods = True
        attempt = _Attempt([playback])
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
        trace.loudness_lufs = _as_played(levelled and levelled.loudness.lufs, level_db)
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

    async def _play_streamed(self, text: str, started: float, gain: float, chain: EngineChain) -> Trace:
        engines = chain.usable()
        if not engines:
            reasons = "; ".join(f"{h['name']}: {h['reason']}" for h in chain.state())
            attempt = _Attempt(error=f"no speech engine available now ({reasons})")
            primary = chain.primary.name
            return self._trace(primary, primary, self.key_for(text), len(text), started, attempt, [])
        errors: list[str] = []
        heard = _Attempt()
        for i, engine in enumerate(engines):
            deadline = chain.failover_s if i + 1 < len(engines) else None
            attempt = await self._attempt(chain, engine, text, gain, deadline)
            attempt.playbacks[:0] = heard.playbacks  # what an earlier engine got heard counts in the trace
            attempt.first_byte_at = heard.first_byte_at or attempt.first_byte_at
            if attempt.error is None:
                break
            errors.append(attempt.error)
            heard = attempt
        failover = errors if attempt.error is None else errors[:-1]
        key = self.key_for(text, engine)
        trace = self._trace(engine.name, engine.name, key, len(text), started, attempt, failover)
        trace.loudness_lufs = attempt.loudness_lufs
        return trace

    async def _attempt(
        self, chain: EngineChain, engine: SpeechEngine, text: str, gain: float, deadline: float | None
    ) -> _Attempt:
        """Stream `text` from one engine; on failure say why (after playing out whatever was heard)."""
        attempt = _Attempt()
        audio = bytearray()
        level_db = self._level_db(None, engine.name)  # learned from the engine's recent lines

        def on_audio(chunk: bytes) -> None:
            if not attempt.playbacks:
                attempt.first_byte_at = self._clock()
                playback = self._start(engine.fmt, streamed=True, gain=gain * linear(level_db), text=text)
                attempt.playbacks.append(playback)
            audio.extend(chunk)
            attempt.playbacks[-1].feed(chunk)

        try:
            await _synthesize_within(engine, text, on_audio, deadline, chain.failover_s, self._clock)
        except SpeechError as exc:
            chain.failed(engine, exc)
            attempt.error = str(exc)
        except KioskError as exc:
            attempt.error = str(exc)
        except BaseException:  # cancelled: silence at once
            for playback in attempt.playbacks:
                playback.stop()
            raise
        finally:
            for playback in attempt.playbacks:
                playback.finish()  # what was heard stays; the device plays it out and stops cleanly
        if attempt.error is None:
            chain.succeeded(engine)
            stored = await self._store(engine, self.key_for(text, engine), bytes(audio), text)
            attempt.cached = stored is not None
            attempt.loudness_lufs = _as_played(stored and stored.levelled and stored.levelled.engine_lufs, level_db)
        for playback in attempt.playbacks:
            audio_error = await self._finish(playback)
            attempt.error = attempt.error or audio_error
        return attempt

    async def _store(self, engine: SpeechEngine, key: str, pcm: bytes, text: str) -> EntryInfo | None:
        """Commit the finished stream to the cache (off the event loop; its loudness is measured there and learned
        for the engine); None when it could not be: a full or read-only disk is not fatal."""
        whole = len(pcm) - len(pcm) % engine.fmt.frame_bytes
        try:
            info = await self._in_io(
                functools.partial(self.cache.put, fmt=engine.fmt, text=text, identity=engine.identity()),
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

    def _start(self, fmt, *, streamed: bool, gain: float, text: str = "") -> Playback:
        if self._current is not None:
            self._current.stop()
        expected_s = len(text) * SPEECH_S_PER_CHAR if streamed else None
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

    def _trace(self, source, engine, key, chars, started, attempt: _Attempt, failover: list[str]) -> Trace:
        def ms(at: float | None) -> float | None:
            return None if at is None else round((at - started) * 1000, 1)

        playbacks = attempt.playbacks
        firsts = [p.stats.first_audio_at for p in playbacks if p.stats.first_audio_at is not None]
        return Trace(
            source=source,
            engine=engine,
            key=key[:16],
            text_chars=chars,
            first_byte_ms=ms(attempt.first_byte_at),
            first_audio_ms=ms(min(firsts)) if firsts else None,
            first_sound_ms=ms(min(firsts)) if firsts else None,
            frames=sum(p.stats.frames for p in playbacks),
            underruns=sum(p.stats.underruns for p in playbacks),
            duration_ms=round(sum(p.stats.frames / p.fmt.rate for p in playbacks) * 1000, 1),
            elapsed_ms=ms(self._clock()),
            cached=attempt.cached,
            stopped=any(p.stats.stopped for p in playbacks),
            error=attempt.error,
            failover=failover,
        )


def _as_played(lufs: float | None, gain_db: float) -> float | None:
    """The loudness of a line as it was played: measured, plus the gain it was given on the way."""
    return None if lufs is None else round(lufs + gain_db, 1)


class SampleStream:
    """`text` spoken by `engine` for a listener and not cached (a voice sample for staff).

    `await start()` returns once the first audio has come, so a failure is raised as SpeechError before anything
    is sent; iterate for the chunks; `aclose()` (always, in a finally) stops the synthesis and, with
    `close_engine`, closes an engine made just for this sample.
    """

    def __init__(self, engine: SpeechEngine, text: str, *, close_engine: bool):
        self.engine, self.fmt = engine, engine.fmt
        self._close_engine = close_engine
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.ensure_future(engine.synthesize(text, self._chunks.put_nowait))
        self._task.add_done_callback(lambda _: self._chunks.put_nowait(None))
        self._first: bytes | None = None

    async def start(self) -> None:
        self._first = await self._chunks.get()
        if self._first is None:
            self._task.result()  # raises the engine's SpeechError
            raise SpeechError(f"{self.engine.name}: no audio")

    async def __aiter__(self):
        if self._first is not None:
            yield self._first
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task], timeout=1)  # its own error, if any, was the listener's already
        if self._close_engine:
            await self.engine.aclose()


async def _once(pcm: bytes, chunk_bytes: int = 32768):
    for i in range(0, len(pcm), chunk_bytes):
        yield pcm[i : i + chunk_bytes]


async def _synthesize_within(
    engine: SpeechEngine,
    text: str,
    on_audio: Callable[[bytes], None],
    deadline: float | None,
    lag_limit: float,
    clock: Callable[[], float] = time.monotonic,
    check_s: float = 0.1,
) -> None:
    """`engine.synthesize`, except that with a `deadline` an engine with no audio by then is given up on, and so is
    any engine whose audio falls more than `lag_limit` seconds behind real time (counted from its first byte)."""
    first_audio = asyncio.Event()
    first_at: float | None = None
    received = 0  # bytes since the first one

    def relay(chunk: bytes) -> None:
        nonlocal first_at, received
        if first_at is None:
            first_at = clock()
        received += len(chunk)
        on_audio(chunk)
        first_audio.set()

    task = asyncio.ensure_future(engine.synthesize(text, relay))
    try:
        problem = None
        if deadline is not None and not await _first_audio_within(task, first_audio, deadline):
            problem = f"no audio within {deadline:g} s"
        while problem is None and not task.done():
            await asyncio.wait([task], timeout=check_s)  # on a timer: a stall delivers no chunk to check on
            if task.done() or first_at is None:
                continue
            elapsed = clock() - first_at
            audio_s = engine.fmt.ms_for_bytes(received) / 1000
            if elapsed - audio_s > lag_limit:
                problem = f"audio arriving too slowly ({audio_s / elapsed:.2f}× real time)"
        if problem is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, KioskError):
                await task
            raise SpeechError(f"{engine.name}: {problem}", "transient")
        await task
    finally:
        task.cancel()  # a no-op once it has finished; stops it when we are cancelled


async def _first_audio_within(task: asyncio.Future, first_audio: asyncio.Event, seconds: float) -> bool:
    """True once audio arrives (or the engine finishes or fails) within `seconds`; False at the deadline."""
    waiter = asyncio.ensure_future(first_audio.wait())
    try:
        await asyncio.wait([task, waiter], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return first_audio.is_set() or task.done()
