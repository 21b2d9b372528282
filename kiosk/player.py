"""The player: feeds PCM to an audio sink from one dedicated writer thread, never from the event loop.

Streamed audio waits for a pre-roll before the device starts, sized from the arrival rate (kiosk.preroll) so that
the rest of the line is not expected to underrun; cached audio starts at once. Chunks of any size are re-aligned
to whole frames, the last period is padded with silence, and a stop request silences the device within one period
(the longest a blocking write can take).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kiosk import in_step
from kiosk.errors import AudioError
from kiosk.gain import MAX_GAIN, scale
from kiosk.pcm import AudioFormat, FrameAligner
from kiosk.preroll import Arrivals, Preroll

log = logging.getLogger(__name__)

__all__ = ["MAX_GAIN", "AudioSink", "Playback", "PlaybackStats", "Player", "scale"]

_END = object()
_IDLE_WAKE_S = 0.5
#: The writer thread's real-time priority (SCHED_FIFO), where the system grants one (the unit's LimitRTPRIO): low,
#: as PipeWire's and MPD's output threads take, yet above every ordinary thread, so a busy CPU (the captions display,
#: the local voice, a page being served) neither delays a line held to a start time nor lets the device run dry.
RT_PRIORITY = 10
#: The device counts as having run dry when a write comes this much later than the audio before it ran out.
_DRY_S = 0.02


class AudioSink(Protocol):
    """A playback device open for one format (see kiosk.alsa_output.AlsaOutput)."""

    fmt: AudioFormat
    period_frames: int
    buffer_frames: int

    def write(self, frames: bytes) -> int:
        """Write whole frames (blocking); return the number of underruns recovered."""

    def wait_played(self, stop: threading.Event) -> None:
        """Block until the written audio has played or `stop` is set, then drop the rest."""

    def drop(self) -> None:
        """Discard buffered audio at once."""

    def close(self) -> None: ...


SinkOpener = Callable[[AudioFormat], AudioSink]


@dataclass
class PlaybackStats:
    frames: int = 0
    underruns: int = 0
    first_audio_at: float | None = None
    first_write_at: float | None = None  # just before the first write: monotonic, and the wall clock (kiosk.in_step)
    first_write_wall: float | None = None
    late_s: float | None = None  # the first write after `Playback.start_at`: how late (0 or less: on time)
    stopped: bool = False
    error: AudioError | None = None


class Playback:
    """One stream of audio on its way to the speaker. `feed`, `finish` and `stop` may be called from any thread."""

    def __init__(
        self,
        fmt: AudioFormat,
        loop: asyncio.AbstractEventLoop,
        *,
        preroll: Preroll | None = None,
        expected_s: float | None = None,
        gain: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fmt = fmt
        self.preroll = preroll  # None: start with the first audio
        self.expected_s = expected_s  # how long the line is likely to be, for the pre-roll
        self.gain = gain
        self._clock = clock
        self.stats = PlaybackStats()
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._loop = loop
        self._done = loop.create_future()
        self._lock = threading.Lock()
        self._fed = 0  # bytes fed so far
        self._written = 0  # bytes the writer has handed to the device so far
        self._low_water: tuple[int, asyncio.Future] | None = None
        #: Write only whole periods until the end (a source that feeds well ahead, such as the cache, block by
        #: block): the device then gets the very bytes it would get were the line fed in one piece.
        self.whole_periods = False
        #: Monotonic time to hold the first write until (kiosk.in_step), set before the first feed; None: at once.
        self.start_at: float | None = None
        #: Called from the writer thread with the monotonic time the first sample was heard: at the first write,
        #: and again each time the device ran dry and the rest of the audio was heard that much later (captions).
        self.on_heard: Callable[[float], None] | None = None
        self._heard_from: float | None = None

    def feed(self, chunk: bytes) -> None:
        if chunk:
            with self._lock:
                self._fed += len(chunk)
            self._chunks.put((self._clock(), chunk))

    async def wait_queued_below(self, nbytes: int) -> None:
        """Return once fewer than `nbytes` of the audio fed so far wait to be written to the device (or the
        playback has ended): the moment to fetch more, for a source that reads ahead only as far as it must."""
        waiter = self._loop.create_future()
        with self._lock:
            if self._fed - self._written < nbytes or self._done.done():
                return
            self._low_water = (nbytes, waiter)
        try:
            await asyncio.wait([waiter, self._done], return_when=asyncio.FIRST_COMPLETED)
        finally:
            with self._lock:
                if self._low_water is not None and self._low_water[1] is waiter:
                    self._low_water = None

    def _wrote(self, nbytes: int) -> None:
        """Writer thread: `nbytes` more reached the device; wake a reader waiting for the queue to drain."""
        with self._lock:
            self._written += nbytes
            if self._low_water is None or self._fed - self._written >= self._low_water[0]:
                return
            waiter, self._low_water = self._low_water[1], None
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(_resolve, waiter)

    def finish(self) -> None:
        """No more audio: play what is queued to the end."""
        self._chunks.put(_END)

    def stop(self) -> None:
        """Silence the speaker within one period."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def ended(self) -> bool:
        """Stopped, or played out, or failed: nothing fed from now on will be heard."""
        return self._stop.is_set() or self._done.done()

    async def wait(self) -> PlaybackStats:
        """Wait until the audio has played out (or was stopped); raises AudioError if the device failed."""
        stats = await asyncio.shield(self._done)
        if stats.error:
            raise stats.error
        return stats

    def _complete(self) -> None:
        def resolve() -> None:
            if not self._done.done():
                self._done.set_result(self.stats)

        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(resolve)


class Player:
    """Plays one Playback after another on a dedicated writer thread, keeping the device open between them."""

    def __init__(
        self,
        open_sink: SinkOpener,
        *,
        preroll_ms: int,
        preroll_max_ms: int = 3000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._open_sink = open_sink
        self._preroll = Preroll(floor_s=preroll_ms / 1000, max_wait_s=preroll_max_ms / 1000)
        self._clock = clock
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._sink: AudioSink | None = None
        self._thread = threading.Thread(target=self._serve, name="alsa-writer", daemon=True)
        #: Monotonic time the writer thread last showed it is not stuck (for the service watchdog).
        self.heartbeat = clock()
        #: The device's failure on the last playback (gone, busy, refusing), None once one plays again.
        self.last_error: AudioError | None = None
        #: Whether the writer thread got real-time scheduling (None until it has started).
        self.realtime: bool | None = None

    def start(self) -> None:
        self._thread.start()

    def play(self, fmt: AudioFormat, *, streamed: bool, gain: float = 1.0, expected_s: float | None = None) -> Playback:
        """Queue a new playback; streamed audio gets the pre-roll, cached audio starts at once.

        `gain` (0 to MAX_GAIN) scales the samples: matched loudness, software volume where the device has no
        mixer, and quiet hours.
        `expected_s` is the likely length of a streamed line: the slower it arrives, the more of it must be buffered.
        """
        preroll = self._preroll if streamed else None
        playback = Playback(
            fmt, asyncio.get_running_loop(), preroll=preroll, expected_s=expected_s, gain=gain, clock=self._clock
        )
        self._jobs.put(playback)
        return playback

    async def open_device(self, fmt: AudioFormat) -> None:
        """Open the device now rather than at the first line, so a bad device is reported at once."""
        playback = self.play(fmt, streamed=False)
        playback.finish()
        await playback.wait()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the writer thread (bounded) and close the device."""
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("ALSA writer did not stop within %.1f s; leaving the device to the process exit", timeout)
            return
        self._close_sink()

    def _serve(self) -> None:
        self.realtime = _promote()
        while True:
            self.heartbeat = self._clock()
            try:
                playback = self._jobs.get(timeout=_IDLE_WAKE_S)
            except queue.Empty:
                continue
            if playback is None:
                return
            self._run(playback)

    def _run(self, playback: Playback) -> None:
        try:
            if not playback.stopping:
                self._play(self._sink_for(playback.fmt), playback)
                self.last_error = None
            else:
                playback.stats.stopped = True
        except AudioError as exc:
            log.error("%s", exc)
            playback.stats.error = self.last_error = exc
            self._close_sink()  # reopen on the next playback
        except Exception as exc:  # never let the writer thread die silently
            log.exception("ALSA writer failed")
            playback.stats.error = AudioError(f"audio writer failed: {exc}")
            self._close_sink()
        finally:
            playback._complete()

    def _sink_for(self, fmt: AudioFormat) -> AudioSink:
        if self._sink is not None and self._sink.fmt != fmt:
            self._close_sink()
        if self._sink is None:
            self._sink = self._open_sink(fmt)
        return self._sink

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception as exc:
                log.warning("closing the audio device failed: %s", exc)

    def _play(self, sink: AudioSink, playback: Playback) -> None:
        frame_bytes = playback.fmt.frame_bytes
        period_bytes = sink.period_frames * frame_bytes
        poll_s = sink.period_frames / playback.fmt.rate / 2
        aligner = FrameAligner(frame_bytes)
        arrivals = Arrivals()
        pending = bytearray()
        started = ended = False
        while True:
            self.heartbeat = self._clock()
            if playback.stopping:
                sink.drop()
                playback.stats.stopped = True
                return
            partial = playback.whole_periods and len(pending) < period_bytes
            starved = not ended and (not started or not pending or partial)
            ended = _take(playback, pending, aligner, arrivals, poll_s if starved else None) or ended
            if not (started or ended or self._may_start(playback, arrivals)):
                continue
            if not started and playback.start_at is not None:
                playback.stats.late_s = in_step.hold(
                    playback.start_at, playback._stop, self._clock, self._beat, spin_s=0.0 if self.realtime else None
                )
            started = True
            if playback.stopping:
                continue  # stopped while held: silenced at the top
            if ended and len(pending) <= period_bytes:
                self._write(sink, playback, bytes(pending), pad_to=period_bytes)
                if aligner.pending:
                    log.warning("stream ended inside a frame; dropped %d stray byte(s)", aligner.pending)
                sink.wait_played(playback._stop)
                return
            if pending and not (partial and not ended):
                chunk = bytes(pending[:period_bytes])
                del pending[:period_bytes]
                self._write(sink, playback, chunk)

    def _beat(self) -> None:
        self.heartbeat = self._clock()

    def _track_heard(self, playback: Playback) -> None:
        """Before a write: when the first sample was heard, moved on by however long the device has been dry (all
        that was written before has played by now), for `playback.on_heard`."""
        now = self._clock()
        if playback._heard_from is None:
            playback._heard_from = now
        else:
            played_out_at = playback._heard_from + playback.stats.frames / playback.fmt.rate
            if now - played_out_at < _DRY_S:
                return
            playback._heard_from += now - played_out_at
        if playback.on_heard is not None:
            playback.on_heard(playback._heard_from)

    def _may_start(self, playback: Playback, arrivals: Arrivals) -> bool:
        if playback.preroll is None:
            return arrivals.first_at is not None
        return playback.preroll.ready(arrivals, self._clock(), playback.expected_s)

    def _write(self, sink: AudioSink, playback: Playback, audio: bytes, pad_to: int = 0) -> None:
        if not audio:
            return
        padding = b"\x00" * (pad_to - len(audio)) if pad_to > len(audio) else b""
        samples = audio if playback.gain == 1.0 else scale(audio, playback.gain, playback.fmt.sample_width)
        self._track_heard(playback)
        if playback.stats.first_write_at is None:
            playback.stats.first_write_at, playback.stats.first_write_wall = self._clock(), time.time()
        playback.stats.underruns += sink.write(samples + padding)
        playback.stats.frames += len(audio) // playback.fmt.frame_bytes
        if playback.stats.first_audio_at is None:
            playback.stats.first_audio_at = self._clock()
        playback._wrote(len(audio))


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _take(
    playback: Playback, pending: bytearray, aligner: FrameAligner, arrivals: Arrivals, wait_s: float | None
) -> bool:
    """Move every chunk that has arrived into `pending`, waiting up to `wait_s` for the first; True at the end."""
    try:
        item = playback._chunks.get(timeout=wait_s) if wait_s else playback._chunks.get_nowait()
        while True:
            if item is _END:
                return True
            arrived_at, chunk = item
            arrivals.add(arrived_at, playback.fmt.ms_for_bytes(len(chunk)) / 1000)
            pending += aligner.push(chunk)
            item = playback._chunks.get_nowait()
    except queue.Empty:
        return False


def _promote() -> bool:
    """Ask for real-time scheduling for the calling thread (Linux: pid 0 is the thread); False where it is not
    granted (no LimitRTPRIO, RestrictRealtime=, another system), and the writer runs as an ordinary thread."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except (OSError, AttributeError) as exc:
        log.info("the audio writer runs at ordinary priority (no real-time scheduling: %s)", exc)
        return False
    log.info("the audio writer runs at real-time priority %d", RT_PRIORITY)
    return True
