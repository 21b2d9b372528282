"""A token bucket for triggers from every adapter (HTTP, MQTT, OSC, the staff page): one rate for all of them."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """Token bucket: bursts of up to `burst`, refilled at `per_minute`."""

    def __init__(self, per_minute: int, burst: int = 10, clock: Callable[[], float] = time.monotonic):
        self._rate = per_minute / 60
        self._capacity = float(min(burst, per_minute))
        self._tokens = self._capacity
        self._clock = clock
        self._at = clock()

    def set_rate(self, per_minute: int, burst: int = 10) -> None:
        """A new rate from a reloaded config; the tokens already spent stay spent (a reload, which every volume set
        causes, must not hand out a fresh burst)."""
        self._refill()
        self._rate = per_minute / 60
        self._capacity = float(min(burst, per_minute))
        self._tokens = min(self._tokens, self._capacity)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self) -> float | None:
        """None when allowed; otherwise the seconds until the next request would be."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / self._rate
