"""The engine chain: the primary engine, then fallbacks in order, each with a health record.

An engine that refuses the key or has run out of credit, or fails three times in a row, goes into back-off: no
request is made for it per press while that lasts; a reachability probe, retried with growing pauses, restores it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiosk.errors import SpeechError
from kiosk.speech import SpeechEngine

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 900.0
TRANSIENT_FAILURES_FOR_BACKOFF = 3


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

    def succeeded(self, engine: SpeechEngine) -> None:
        h = self.health[engine.name]
        if h.in_backoff:
            log.info("%s is back", engine.name)
        self.health[engine.name] = EngineHealth()

    def failed(self, engine: SpeechEngine, error: SpeechError) -> None:
        h = self.health[engine.name]
        h.failures += 1
        h.reason = str(error)
        if error.kind in ("auth", "quota") or h.failures >= TRANSIENT_FAILURES_FOR_BACKOFF:
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
