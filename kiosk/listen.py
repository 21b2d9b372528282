"""Lines for listeners over HTTP (the staff page's "Listen here", GET /api/speech, voice samples).

A WAV stream has one format, fixed by its header before the audio exists. When the engine that started a line fails
part-way, the next engine says the line whole, as it does on the speaker, and its audio is converted to the format
the listener already has (another rate is resampled). When no engine can finish the line, the reader raises, and the
HTTP side breaks the response off so that the listener's player reports an error instead of a short line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable

from kiosk.errors import SpeechError
from kiosk.pcm import AudioFormat, FrameAligner
from kiosk.speech import SpeechEngine
from kiosk.speech.chain import EngineChain, synthesize_within

log = logging.getLogger(__name__)


class Synthesis:
    """One line being synthesized for listeners over HTTP: any number of readers, each from the start.

    It runs as its own task, so a listener who goes away does not stop it: the line is finished and cached, and the
    next request is served from the cache. Only touched from the event loop, so it needs no lock.

    Its format is that of the first engine heard. Each engine's audio is added after `begin(its format)`: cut into
    whole frames (a half sample left by an engine cut off is dropped, never glued to the next engine's audio) and
    resampled when its rate differs.
    """

    def __init__(self) -> None:
        self.fmt: AudioFormat | None = None
        self.chunks: list[bytes] = []
        self.done = False
        self.error: str | None = None
        self._waiters: list[asyncio.Future] = []
        self._engine_fmt: AudioFormat | None = None
        self._convert: Callable[[bytes], bytes] | None = None

    def begin(self, fmt: AudioFormat) -> None:
        """Audio from another engine follows, in `fmt`."""
        self._engine_fmt, self._convert = fmt, None

    def add(self, chunk: bytes) -> None:
        if self._convert is None:
            self.fmt = self.fmt or self._engine_fmt
            self._convert = _converter(self._engine_fmt, self.fmt)
        audio = self._convert(chunk)
        if audio:
            self.chunks.append(audio)
            self._wake()

    def end(self, error: str | None = None) -> None:
        self.done, self.error = True, error
        self._wake()

    async def opened(self) -> tuple[AudioFormat, AsyncIterator[bytes]]:
        """(format, chunks) for one more listener, once there is audio; raises SpeechError when no engine could
        start the line."""
        while not (self.chunks or self.done):
            await self._changed()
        if not self.chunks:
            raise SpeechError(self.error or "no audio")
        return self.fmt, self.read()

    async def read(self) -> AsyncIterator[bytes]:
        """The chunks from the first, as they come; raises SpeechError at the end of a line no engine could finish."""
        sent = 0
        while True:
            while sent < len(self.chunks):
                sent += 1
                yield self.chunks[sent - 1]
            if self.done:
                if self.error is not None:
                    raise SpeechError(f"the line could not be finished: {self.error}")
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


def _converter(src: AudioFormat, dst: AudioFormat) -> Callable[[bytes], bytes]:
    return FrameAligner(src.frame_bytes).push if src == dst else Resampler(src, dst).push


Store = Callable[[SpeechEngine, bytes], Awaitable[object]]


class Syntheses:
    """The lines being synthesized for listeners, by cache key: a second listener joins the first one's synthesis.
    `spawn` runs each in a task of its own (that the owner cancels at shutdown)."""

    def __init__(self, spawn: Callable[[Awaitable[None]], None]):
        self._spawn = spawn
        self._lines: dict[str, Synthesis] = {}

    def join(self, key: str, chain: EngineChain, text: str, store: Store) -> Synthesis:
        synthesis = self._lines.get(key)
        if synthesis is None:
            synthesis = self._lines[key] = Synthesis()
            self._spawn(self._run(key, chain, text, synthesis, store))
        return synthesis

    async def _run(self, key: str, chain: EngineChain, text: str, synthesis: Synthesis, store: Store) -> None:
        try:
            await speak_for_listeners(chain, text, synthesis, store)
        finally:
            self._lines.pop(key, None)  # after the line is cached: until then a new listener reads it from here


async def speak_for_listeners(chain: EngineChain, text: str, synthesis: Synthesis, store: Store) -> None:
    """Each engine of `chain` in turn says `text` into `synthesis`, as the speaker does: one that fails (before or
    after its first audio) is followed by the next saying the line whole, until one finishes it; `store(engine,
    pcm)` then caches that engine's own audio. Ends `synthesis` in every case, with the errors if none finished."""
    errors: list[str] = []
    try:
        for engine, deadline in chain.attempts():
            audio = bytearray()
            synthesis.begin(engine.fmt)

            def on_audio(chunk: bytes, audio: bytearray = audio) -> None:
                audio.extend(chunk)
                synthesis.add(chunk)

            try:
                await chain.synthesize(engine, text, on_audio, deadline)
            except SpeechError as exc:
                errors.append(str(exc))
                continue
            synthesis.end()  # listeners hear the end at once; the cache is written after
            await store(engine, bytes(audio))
            return
        synthesis.end("; ".join(errors) or "no speech engine available now")
    except Exception as exc:  # nobody awaits this task: a fault nobody foresaw ends the line, logged once
        log.exception("synthesizing a line for a listener failed")
        synthesis.end(f"internal error: {type(exc).__name__}")
    finally:
        if not synthesis.done:
            synthesis.end("cancelled")


class SampleStream:
    """`text` spoken by `engine` for a listener and not cached (a voice sample for staff).

    `await start()` returns once the first audio has come, so a failure is raised as SpeechError before anything
    is sent; iterate for the chunks (a failure after that is raised at the end, so the listener is told); `aclose()`
    (always, in a finally) stops the synthesis and, with `close_engine`, closes an engine made just for this sample.
    """

    def __init__(self, engine: SpeechEngine, text: str, *, close_engine: bool):
        self.engine, self.fmt = engine, engine.fmt
        self._close_engine = close_engine
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        # No chain stands behind a sample: only the runaway rule applies (no deadline, no lag limit).
        self._task = asyncio.ensure_future(synthesize_within(engine, text, self._chunks.put_nowait, None, math.inf))
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
        self._task.result()  # the engine's SpeechError, if it failed part-way

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task], timeout=1)  # its own error, if any, was the listener's already
        if self._close_engine:
            await self.engine.aclose()


async def once(pcm: bytes, chunk_bytes: int = 32768) -> AsyncIterator[bytes]:
    """A cached line for a listener, in chunks."""
    for i in range(0, len(pcm), chunk_bytes):
        yield pcm[i : i + chunk_bytes]


class Resampler:
    """Mono 16-bit PCM from one rate to another by linear interpolation, chunk by chunk.

    The output does not depend on how the input was cut into chunks: the position of the next output sample is kept
    as an exact fraction (in 1/`dst.rate` input samples) and the last input sample carries over to the next chunk.
    Linear interpolation is enough for speech heard once through a phone or laptop (22 050 to 24 000 Hz moves no
    speech band), and it costs little in pure Python: numpy is not a dependency of the core.
    """

    def __init__(self, src: AudioFormat, dst: AudioFormat):
        if (src.channels, src.sample_width, dst.channels, dst.sample_width) != (1, 2, 1, 2):
            raise ValueError(f"cannot convert {src.describe()} to {dst.describe()}: only mono 16-bit audio")
        self._src, self._dst = src.rate, dst.rate
        self._aligner = FrameAligner(src.frame_bytes)
        self._last: int | None = None  # the previous chunk's last sample
        self._at = 0  # the next output sample's position, in 1/dst input samples from `_last` (or the first sample)

    def push(self, chunk: bytes) -> bytes:
        samples = array("h", self._aligner.push(chunk))
        if sys.byteorder == "big":  # PCM here is little-endian; array is native
            samples.byteswap()
        if self._last is not None:
            samples.insert(0, self._last)
        if not samples:
            return b""
        out = array("h")
        src, dst, at = self._src, self._dst, self._at
        end = (len(samples) - 1) * dst  # an output sample needs the input sample after its position
        while at < end:
            i, fraction = divmod(at, dst)
            a = samples[i]
            out.append(a + ((samples[i + 1] - a) * fraction + dst // 2) // dst)
            at += src
        self._at, self._last = at - end, samples[-1]
        if sys.byteorder == "big":
            out.byteswap()
        return out.tobytes()
