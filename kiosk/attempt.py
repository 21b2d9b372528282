"""What the announcer (kiosk.announcer) keeps about one engine's try at a line, the loudness a line was played at,
and the cache identity of a line at a speed of its own: small helpers kept apart so the announcer stays readable."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiosk.player import Playback


@dataclass
class Attempt:
    """One engine's try at a line."""

    playbacks: list[Playback] = field(default_factory=list)
    first_byte_at: float | None = None
    cached: bool = False
    error: str | None = None
    loudness_lufs: float | None = None
    silenced: list[Playback] = field(default_factory=list)  # stopped by the announcer itself, not by anyone's stop

    def silence(self) -> None:
        for playback in self.playbacks:
            playback.stop()
            self.silenced.append(playback)


def identity_at(identity: dict, speed: float) -> dict:
    """An engine's identity as a cache entry's header keeps it: with the speed asked for where it is not 1 (a
    `slower` button's line; its key differs too, kiosk.cache_entry.cache_key)."""
    return identity if speed == 1.0 else {**identity, "pace": speed}


def as_played(lufs: float | None, gain_db: float) -> float | None:
    """The loudness of a line as it was played: measured, plus the gain it was given on the way."""
    return None if lufs is None else round(lufs + gain_db, 1)
