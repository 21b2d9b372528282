"""How one line was spoken: the trace `kiosk say --trace` prints, the status page shows and the history keeps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiosk.player import Playback

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
    first_audio_mono: float | None = None  # monotonic time just before the first frame went to the device
    first_audio_wall: float | None = None  # the same moment on the wall clock (Unix seconds), to compare speakers
    start_at: float | None = None  # the start time the command asked for (Unix seconds; kiosk.in_step)
    start_mono: float | None = None  # that start on the monotonic clock; None: played at once (see in_step)
    start_received_wall: float | None = None  # when the command with the start time arrived (wall clock)
    late_ms: float | None = None  # how far past its start time the line began, when it was late
    in_step: str | None = None  # "on time", or why the line did not start at its start time

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def failure(cls, engine: str, text_chars: int, error: str, elapsed_ms: float | None) -> Trace:
        """The trace of a line that failed before or outside the announcer's own accounting."""
        return cls("none", engine, "", text_chars, None, None, 0, 0, 0.0, elapsed_ms or 0.0, False, False, error)

    @classmethod
    def played(
        cls,
        what: tuple[str, str, str, int],
        playbacks: Sequence[Playback],
        *,
        started: float,
        ended: float,
        first_byte_at: float | None,
        cached: bool,
        silenced: Sequence[Playback],
        error: str | None,
        failover: list[str],
    ) -> Trace:
        """The trace of a line the announcer played as `playbacks`: `what` is (source, engine, key, text length);
        `silenced` playbacks were stopped by the announcer itself (a runaway voice), not by anyone's stop."""

        def ms(at: float | None) -> float | None:
            return None if at is None else round((at - started) * 1000, 1)

        source, engine, key, chars = what
        firsts = [p.stats.first_audio_at for p in playbacks if p.stats.first_audio_at is not None]
        return cls(
            source=source,
            engine=engine,
            key=key[:16],
            text_chars=chars,
            first_byte_ms=ms(first_byte_at),
            first_audio_ms=ms(min(firsts)) if firsts else None,
            first_sound_ms=ms(min(firsts)) if firsts else None,
            frames=sum(p.stats.frames for p in playbacks),
            underruns=sum(p.stats.underruns for p in playbacks),
            duration_ms=round(sum(p.stats.frames / p.fmt.rate for p in playbacks) * 1000, 1),
            elapsed_ms=ms(ended),
            cached=cached,
            stopped=any(p.stats.stopped for p in playbacks if p not in silenced),
            error=error,
            failover=failover,
        )
