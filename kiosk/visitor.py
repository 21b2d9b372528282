"""The visitor's volume: turned up or down with the exhibit's volume buttons, back to the staff's when left alone.

It is an offset from the staff's volume (`audio.volume`), kept in memory only (never written: an SD card wears, and
the next visitor starts afresh anyway). A press moves it by `audio.visitor_volume_step` within
`audio.visitor_volume_min`..`audio.visitor_volume_max`, never past them; after the volume button's `reset_s` without
a press it lapses, as the visitor's language does (kiosk.languages).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kiosk.config import AudioConfig


@dataclass(frozen=True)
class Step:
    """What one volume press did: the visitor's volume after it (percent) and whether it moved (False at a limit)."""

    level: int
    moved: bool


class VisitorVolume:
    """The volume the next line a visitor triggers is played at, as a percent like `audio.volume`."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._offset = 0  # from the staff's volume
        self._until = 0.0

    def level(self, audio: AudioConfig) -> int:
        """The visitor's volume now: the staff's, or the staff's plus the offset (within the visitor's range)
        while it has not lapsed."""
        if self._offset and self._clock() >= self._until:
            self._offset = 0
        if not self._offset:
            return audio.volume
        return _within(audio.volume + self._offset, audio)

    def share(self, audio: AudioConfig) -> float:
        """The visitor's volume as a share of the staff's (what `App.say(volume=...)` takes); 1 when staff have
        muted the speaker (their mute holds: a visitor cannot turn it up)."""
        return self.level(audio) / audio.volume if audio.volume else 1.0

    def touch(self, reset_s: float) -> None:
        """Any press: a visitor's setting still in force holds for another `reset_s`."""
        if self._offset and self._clock() < self._until:
            self._until = max(self._until, self._clock() + reset_s)

    def step(self, up: bool, audio: AudioConfig, reset_s: float) -> Step:
        """A volume press: one step up or down, never past the visitor's range; the setting then holds for
        another `reset_s`. At the limit nothing moves (a staff volume outside the range is brought into it)."""
        now = self.level(audio)
        limit = audio.visitor_volume_max if up else audio.visitor_volume_min
        delta = audio.visitor_volume_step if up else -audio.visitor_volume_step
        at_limit = now >= limit if up else now <= limit
        new = now if at_limit else _within(now + delta, audio)
        if new != now:
            self._offset = new - audio.volume
        if self._offset:
            self._until = self._clock() + reset_s
        return Step(new, new != now)

    def reset(self) -> None:
        """Back to the staff's volume at once."""
        self._offset = 0


def _within(level: int, audio: AudioConfig) -> int:
    return max(audio.visitor_volume_min, min(audio.visitor_volume_max, level))
