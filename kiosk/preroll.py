"""When a streamed line may start playing: as early as the arrival rate allows without a gap later on.

Once the device starts it consumes audio at exactly real time; arrivals must stay ahead of it to the end of the
line. From the first chunks the arrival rate r (seconds of audio per second) is estimated. If r >= 1 the lead only
grows, so a small floor of buffered audio (to absorb jitter between chunks) is enough. If r < 1 the lead shrinks
by (1 - r) per second of arrival, so the buffer must also cover the shortfall over the rest of the line:

    buffered >= floor + remaining * (1/r - 1)

The rate is measured up to *now*, not to the last chunk, so while nothing arrives the estimate falls and the start
is held back rather than rushed. `max_wait_s` (audio.preroll_max_ms) bounds how long a visitor can be kept waiting
after the first byte when the network is hopeless: then the line starts anyway and may stutter.
"""

from __future__ import annotations

from dataclasses import dataclass

# A rate measured over a shorter window than this is mostly noise (one chunk may carry many times its share).
MIN_WINDOW_S = 0.02


@dataclass
class Arrivals:
    """What has arrived of one stream so far, in seconds of audio against the clock."""

    first_at: float | None = None
    first_s: float = 0.0  # audio in the first chunk: it came with the first byte, so it says nothing about rate
    total_s: float = 0.0

    def add(self, at: float, audio_s: float) -> None:
        if self.first_at is None:
            self.first_at, self.first_s = at, audio_s
        self.total_s += audio_s

    def rate(self, now: float) -> float | None:
        """Seconds of audio arriving per second since the first chunk; None until the window means anything."""
        if self.first_at is None or now - self.first_at < MIN_WINDOW_S:
            return None
        return (self.total_s - self.first_s) / (now - self.first_at)


@dataclass(frozen=True)
class Preroll:
    """The start rule for streamed audio (see the module docstring)."""

    floor_s: float
    max_wait_s: float

    def ready(self, arrivals: Arrivals, now: float, expected_s: float | None) -> bool:
        """Whether playback may start now, given what has arrived and the expected length of the line."""
        if arrivals.first_at is None:
            return False
        if now - arrivals.first_at >= self.max_wait_s:
            return True
        if arrivals.total_s < self.floor_s:
            return False
        rate = arrivals.rate(now)
        if rate is None:
            return False
        if rate >= 1:
            return True
        remaining_s = max(0.0, (expected_s or 0.0) - arrivals.total_s)
        return rate > 0 and arrivals.total_s - self.floor_s >= remaining_s * (1 / rate - 1)
