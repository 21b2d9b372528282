"""One line at a time: requests from buttons, the HTTP API and staff, with a policy for a request while speaking.

- restart: the line playing now stops (within one period) and the new one starts;
- ignore: the new request is dropped;
- queue: the new request waits its turn; the queue is bounded, so a stuck button cannot grow it without end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kiosk.announcer import Announcer
from kiosk.in_step import Start
from kiosk.speech.text import max_audio_s
from kiosk.trace import Trace

log = logging.getLogger(__name__)

POLICIES = ("restart", "ignore", "queue")
_HISTORY = 50
#: The loop shows it is alive at least this often, idle or speaking.
HEARTBEAT_S = 1.0
#: A backstop far beyond the announcer's own bounds: no line holds the speaker longer than this.
LINE_LIMIT_BASE_S = 30.0


def line_limit_s(text: str) -> float:
    """The longest a line may hold the speaker: the most audio two voices may send for it before each is cut
    (a runaway one, then its stand-in; kiosk.speech.text.max_audio_s), plus half a minute."""
    return LINE_LIMIT_BASE_S + 2 * max_audio_s(text)


@dataclass
class Request:
    id: str
    text: str
    origin: str  # "button:17", "api", ...
    phrase: str | None = None
    gain: float = 1.0
    language: str | None = None  # the language the text is in (its voice speaks it)
    speed: float = 1.0  # a share of the voice's own speed (a `slower` button's line: below 1)
    private: bool = False  # a setup code: spoken, never cached, captioned or shown (summary() leaves its text out)
    state: str = "queued"  # queued → playing → done | stopped | failed | dropped
    requested_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    trace: Trace | None = None
    start: Start | None = None  # when to start (a group's command: kiosk.in_step); None: at once

    def summary(self) -> dict:
        return {
            "id": self.id,
            "phrase": self.phrase,
            "language": self.language,
            "origin": self.origin,
            "state": self.state,
            "text": "" if self.private else self.text,
        }


class Rejected(Exception):
    """The request was not accepted; `reason` is busy, queue_full, unknown_phrase or text_disabled."""

    def __init__(self, message: str, reason: str = "busy"):
        super().__init__(message)
        self.reason = reason


Listener = Callable[[Request], None]


class Speaker:
    def __init__(self, announcer: Announcer, *, queue_limit: int, clock: Callable[[], float] = time.monotonic):
        self.announcer = announcer
        self.queue_limit = queue_limit
        self._clock = clock
        self._queue: collections.deque[Request] = collections.deque()
        self._wakeup = asyncio.Event()
        self._current: Request | None = None
        self._current_task: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._prefix = f"{int(time.time()) % 100000:05d}"
        self.history: collections.OrderedDict[str, Request] = collections.OrderedDict()
        self.last_trace: Trace | None = None
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        """Call `listener(request)` whenever a request changes state (LEDs, metrics, events)."""
        self._listeners.append(listener)

    @property
    def current(self) -> Request | None:
        return self._current

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def speaking(self) -> bool:
        return self._current is not None

    def request(
        self,
        text: str,
        *,
        origin: str,
        policy: str,
        phrase: str | None = None,
        gain: float = 1.0,
        language: str | None = None,
        speed: float = 1.0,
        private: bool = False,
        start: Start | None = None,
    ) -> Request:
        """Accept a line to speak according to `policy` (at `start`, else at once); raises Rejected when it is not
        accepted."""
        req = Request(
            id=f"{self._prefix}-{next(self._ids)}",
            text=text,
            origin=origin,
            phrase=phrase,
            gain=gain,
            language=language,
            speed=speed,
            private=private,
            requested_at=self._clock(),
            start=start,
        )
        busy = self._current is not None or bool(self._queue)
        if busy and policy == "ignore":
            raise Rejected("busy speaking")
        if busy and policy == "queue" and len(self._queue) >= self.queue_limit:
            raise Rejected(f"the queue is full ({self.queue_limit} waiting)", "queue_full")
        if policy == "restart":
            self._drop_queue()
            self._cancel_current()
        self._queue.append(req)
        self._remember(req)
        self._notify(req)
        self._wakeup.set()
        return req

    def stop(self) -> None:
        """Silence now and forget what was waiting."""
        self._drop_queue()
        self._cancel_current()

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        """Speak queued requests one after another until cancelled, calling `beat()` at least every
        `HEARTBEAT_S` while the loop is healthy (idle or speaking a line within its time limit)."""
        while True:
            beat()
            if not self._queue:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HEARTBEAT_S):
                        await self._wakeup.wait()
                continue
            req = self._queue.popleft()
            await self._speak(req, beat)

    async def idle(self) -> None:
        """Wait until nothing is playing or queued (for tests and orderly shutdown; bound it with a timeout)."""
        while self._queue or self._current is not None:
            await asyncio.sleep(0.01)

    async def _speak(self, req: Request, beat: Callable[[], None]) -> None:
        """Speak one request. Whatever goes wrong fails this request only, never the loop."""
        self._current = req
        req.state = "playing"
        req.started_at = self._clock()
        self._notify(req)
        at = {"start": req.start} if req.start is not None else {}
        task = self._current_task = asyncio.ensure_future(
            self.announcer.say(
                req.text, gain=req.gain, language=req.language, speed=req.speed, private=req.private, **at
            )
        )
        overdue = False
        waits_s = max(0.0, req.start.mono - time.monotonic()) if req.start and req.start.mono else 0.0
        limit_s = line_limit_s(req.text) / min(1.0, req.speed) + waits_s  # a slower line takes longer
        try:
            overdue = await self._wait_within_limit(task, limit_s, beat)
            req.trace = task.result()
            req.state = "failed" if req.trace.error else "stopped" if req.trace.stopped else "done"
            self.last_trace = req.trace
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                self._cancel_current()
                raise  # the speaker itself is shutting down, not just this line
            req.state = "failed" if overdue else "stopped"
            if overdue:
                req.trace = self._failure(req, f"gave up: the line took longer than {limit_s:.0f} s")
        except Exception as exc:  # a fault nobody foresaw: this request fails, the speaker goes on
            log.exception("speaking request %s failed", req.id)
            self.announcer.stop()
            req.state, req.trace = "failed", self._failure(req, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._current = None
            self._current_task = None
            self._notify(req)

    async def _wait_within_limit(self, task: asyncio.Future, limit_s: float, beat: Callable[[], None]) -> bool:
        """Wait for `task`, beating while it is within `limit_s`; past it, cancel the task and stop beating (a
        task that ignores the cancel leaves the heartbeat stale, which health checks report). True if overdue."""
        deadline = self._clock() + limit_s
        overdue = False
        while not task.done():
            if not overdue:
                beat()
            await asyncio.wait({task}, timeout=HEARTBEAT_S)
            if not task.done() and not overdue and self._clock() > deadline:
                log.error("a line is taking longer than %.0f s; giving up on it", limit_s)
                overdue = True
                self.announcer.stop()
                task.cancel()
        return overdue

    def _failure(self, req: Request, error: str) -> Trace:
        elapsed = None if req.started_at is None else round((self._clock() - req.started_at) * 1000, 1)
        return Trace.failure(self.announcer.engine.name, len(req.text), error, elapsed)

    def _cancel_current(self) -> None:
        if self._current_task is not None and not self._current_task.done():
            self.announcer.stop()
            self._current_task.cancel()

    def _drop_queue(self) -> None:
        while self._queue:
            dropped = self._queue.popleft()
            dropped.state = "dropped"
            self._notify(dropped)

    def _remember(self, req: Request) -> None:
        self.history[req.id] = req
        while len(self.history) > _HISTORY:
            self.history.popitem(last=False)

    def _notify(self, req: Request) -> None:
        for listener in self._listeners:
            try:
                listener(req)
            except Exception:
                log.exception("state listener failed")
