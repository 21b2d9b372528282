"""The engine chain: the primary engine, then fallbacks in order, each with a health record, and the rules every
engine is held to while it speaks (`synthesize_within`).

An engine that refuses the key or has run out of credit, or ran away (sent far more audio than its text can need:
a server fault that comes back line after line), or fails three times in a row, goes into back-off: no request is
made for it per press while that lasts; a reachability probe, retried with growing pauses, restores it.

An engine that cannot keep up is a fault too. From an engine's first audio byte, its lag is the wall-clock time since
that byte minus the seconds of audio received; a listener would hear a gap once the lag outgrows what is queued.
Every engine, the last one included, is given up on (SpeechError "audio arriving too slowly", transient) once its
lag exceeds `failover_s`; the lag is checked on a timer (every 100 ms), so a stall that delivers nothing is caught
too. Healthy streams stay far below the limit: 1.2-3x real time with jitter, 400 ms bursts or an 800 ms stall
mid-line lag by well under a second. And an engine that sends more audio than its text can need
(kiosk.speech.text.max_audio_s: 0.25 s a character + 5 s) has run away and is cut there. So no engine holds a line
for longer than its first-audio deadline + the line's spoken length (at most max_audio_s) + `failover_s`, plus one
check, however slowly it trickles bytes or however long it goes on.

The speaker (kiosk.announcer) and listeners over HTTP (kiosk.listen) both go through `attempts()` and
`synthesize()`: the same deadlines, the same faults, the same health records; a line that one engine could not
finish is said whole by the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiosk.errors import KioskError, SpeechError
from kiosk.speech import AudioCallback, SpeechEngine
from kiosk.speech.text import max_audio_s

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 900.0
TRANSIENT_FAILURES_FOR_BACKOFF = 3
#: Faults that put an engine in back-off at once: they would come back at the very next line.
BACKOFF_AT_ONCE = ("auth", "quota", "runaway")


@dataclass
class EngineHealth:
    failures: int = 0
    in_backoff: bool = False
    next_probe_at: float = 0.0
    backoff_s: float = 0.0
    reason: str | None = None


class EngineChain:
    def __init__(self, engines: list[SpeechEngine], *, failover_s: float, clock: Callable[[], float] = time.monotonic):
        if not engines:
            raise ValueError("an engine chain needs at least one engine")
        self.engines = engines
        self.failover_s = failover_s
        self._clock = clock
        self.health = {e.name: EngineHealth() for e in engines}

    @property
    def primary(self) -> SpeechEngine:
        return self.engines[0]

    def usable(self) -> list[SpeechEngine]:
        """Engines to ask now, in order: those in back-off are skipped."""
        return [e for e in self.engines if not self.health[e.name].in_backoff]

    def attempts(self, *, private: bool = False) -> list[tuple[SpeechEngine, float | None]]:
        """The usable engines, each with its first-audio deadline: `failover_s` while another stands behind it,
        none for the last (a slow answer beats none). A `private` line (a setup code) asks the engines that run on
        this machine first: its words leave it only when no such engine can say them."""
        engines = self.usable()
        if private:
            engines.sort(key=lambda e: not e.on_device)
        return [(e, self.failover_s if i + 1 < len(engines) else None) for i, e in enumerate(engines)]

    async def synthesize(
        self,
        engine: SpeechEngine,
        text: str,
        on_audio: AudioCallback,
        deadline: float | None,
        *,
        realtime: bool = True,
        speed: float = 1.0,
    ) -> None:
        """`engine` says `text` whole at `speed` (times its own), held to the chain's rules (`synthesize_within`),
        and its health is noted. `realtime=False`: nobody is listening yet (a line made ahead), so a slow engine is no
        fault; a runaway still is. Raises SpeechError."""
        lag_limit = self.failover_s if realtime else math.inf
        try:
            await synthesize_within(engine, text, on_audio, deadline, lag_limit, self._clock, speed=speed)
        except SpeechError as exc:
            self.failed(engine, exc)
            raise
        self.succeeded(engine)

    def succeeded(self, engine: SpeechEngine) -> None:
        h = self.health[engine.name]
        if h.in_backoff:
            log.info("%s is back", engine.name)
        self.health[engine.name] = EngineHealth()

    def failed(self, engine: SpeechEngine, error: SpeechError) -> None:
        h = self.health[engine.name]
        h.failures += 1
        h.reason = str(error)
        if error.kind in BACKOFF_AT_ONCE or h.failures >= TRANSIENT_FAILURES_FOR_BACKOFF:
            h.backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, 2 * h.backoff_s))
            h.next_probe_at = self._clock() + h.backoff_s
            if not h.in_backoff:
                log.warning("%s in back-off (%s); next check in %.0f s", engine.name, error, h.backoff_s)
            h.in_backoff = True

    async def probe_due(self) -> None:
        """Probe each engine in back-off whose pause is over; a success restores it."""
        for engine in self.engines:
            h = self.health[engine.name]
            if not h.in_backoff or self._clock() < h.next_probe_at:
                continue
            try:
                await engine.probe()
            except SpeechError as exc:
                self.failed(engine, exc)
            else:
                self.succeeded(engine)

    def state(self) -> list[dict]:
        now = self._clock()
        return [
            {
                "name": e.name,
                "in_backoff": self.health[e.name].in_backoff,
                "reason": self.health[e.name].reason,
                "next_check_s": round(max(0.0, self.health[e.name].next_probe_at - now))
                if self.health[e.name].in_backoff
                else None,
            }
            for e in self.engines
        ]

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()


async def synthesize_within(
    engine: SpeechEngine,
    text: str,
    on_audio: AudioCallback,
    deadline: float | None,
    lag_limit: float,
    clock: Callable[[], float] = time.monotonic,
    check_s: float = 0.1,
    *,
    speed: float = 1.0,
) -> None:
    """`engine.synthesize` at `speed` (only passed on when it is not 1, so an engine may leave the argument out),
    held to three rules; a breach cancels it and raises SpeechError:

    - with a `deadline`, an engine with no audio by then is given up on ("transient");
    - so is one whose audio falls more than `lag_limit` seconds behind real time, counted from its first byte
      ("transient");
    - an engine that sends more audio than `text` can need (kiosk.speech.text.max_audio_s) has run away: nothing past
      that bound is passed on ("runaway"), even when the engine then ends as if all were well.
    """
    watch = _Watch(engine, text, on_audio, clock, speed)
    work = engine.synthesize(text, watch.relay) if speed == 1.0 else engine.synthesize(text, watch.relay, speed=speed)
    task = asyncio.ensure_future(work)
    try:
        problem = None
        if deadline is not None and not await _first_audio_within(task, watch.first_audio, deadline):
            problem = SpeechError(f"{engine.name}: no audio within {deadline:g} s", "transient")
        while problem is None and not task.done():
            await asyncio.wait([task], timeout=check_s)  # on a timer: a stall delivers no chunk to check on
            problem = watch.runaway() or (None if task.done() else watch.lagging(lag_limit))
        problem = problem or watch.runaway()  # it may have ended (or failed) after audio that was not passed on
        if problem is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, KioskError):
                await task
            raise problem
        await task
    finally:
        task.cancel()  # a no-op once it has finished; stops it when we are cancelled


class _Watch:
    """What one engine has delivered so far, for `synthesize_within`'s rules."""

    def __init__(
        self, engine: SpeechEngine, text: str, on_audio: AudioCallback, clock: Callable[[], float], speed: float
    ):
        self.engine, self.text, self.clock = engine, text.strip(), clock
        self.on_audio = on_audio
        self.most_s = max_audio_s(self.text, engine.identity().get("speed", 1.0) * speed)
        self.first_audio = asyncio.Event()
        self.first_at: float | None = None
        self.received = 0  # bytes passed on
        self.overran = False

    def relay(self, chunk: bytes) -> None:
        # A breach is only noted here, for the watcher to act on: Piper calls this from a callback on the event loop,
        # where an exception would reach nobody.
        if self.first_at is None:
            self.first_at = self.clock()
        if self.overran or self._seconds(self.received + len(chunk)) > self.most_s:
            self.overran = True
            return
        self.received += len(chunk)
        self.on_audio(chunk)
        self.first_audio.set()

    def runaway(self) -> SpeechError | None:
        if not self.overran:
            return None
        problem = f"far more audio than the text needs (over {self.most_s:g} s for {len(self.text)} characters)"
        return SpeechError(f"{self.engine.name}: {problem}", "runaway")

    def lagging(self, lag_limit: float) -> SpeechError | None:
        if self.first_at is None:
            return None
        elapsed = self.clock() - self.first_at
        audio_s = self._seconds(self.received)
        if elapsed - audio_s <= lag_limit:
            return None
        return SpeechError(
            f"{self.engine.name}: audio arriving too slowly ({audio_s / elapsed:.2f}× real time)", "transient"
        )

    def _seconds(self, nbytes: int) -> float:
        return self.engine.fmt.ms_for_bytes(nbytes) / 1000


async def _first_audio_within(task: asyncio.Future, first_audio: asyncio.Event, seconds: float) -> bool:
    """True once audio arrives (or the engine finishes or fails) within `seconds`; False at the deadline."""
    waiter = asyncio.ensure_future(first_audio.wait())
    try:
        await asyncio.wait([task, waiter], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return first_audio.is_set() or task.done()
