"""The announcer's handle on one line's captions: it ties the line's playbacks to the caption feed.

The writer thread says when a playback is first heard (and when it slipped); the feed lives on the event loop, so
that is handed over with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from kiosk.captions.timing import Pace, Word, align
from kiosk.pcm import AudioFormat

#: While a line's audio is arriving, its words are timed again each time the audio received has grown by this much
#: (so a few times a line, whatever its length).
RETIME_GROWTH = 1.5


class Feed(Protocol):
    """What a line needs of kiosk.captions.feed.CaptionFeed."""

    def heard(self, token: object, text: str, language: str | None, words: Sequence[Word], heard_from: float): ...
    def retimed(self, token: object, words: Sequence[Word]) -> None: ...
    def ended(self, token: object) -> None: ...


class HeardPlayback(Protocol):
    on_heard: object


class LineCaption:
    """One line on the captions, from its first sound to its end; does nothing without a feed."""

    def __init__(self, feed: Feed | None, text: str, language: str | None, pace: Pace | None = None):
        self._feed = feed
        self._text = text
        self._language = language
        self._pace = pace or Pace()
        self._arriving: tuple[bytearray, AudioFormat, float] | None = None  # audio so far, its format, the pace
        self._aligned_bytes = 0  # how much of it the words were last timed with
        self._timing: asyncio.Future | None = None
        self._final = False

    def attach_streamed(
        self, playback: HeardPlayback, voice: str, speed: float, audio: bytearray, fmt: AudioFormat
    ) -> None:
        """Caption a playback whose audio (`audio`, growing) is still arriving: word times guessed from how fast
        `voice` speaks, then worked out from the audio received as more arrives (`audio_arrived`)."""
        pace = self._pace.s_per_unit(voice, speed)
        self._arriving, self._aligned_bytes = (audio, fmt, pace), 0
        self.attach(playback, self._pace.guess(voice, self._text, speed))

    def audio_arrived(self) -> None:
        """More audio is in (on the event loop): time the words again from it, now and then, off the loop."""
        if self._arriving is None or self._final or (self._timing is not None and not self._timing.done()):
            return
        audio, fmt, pace = self._arriving
        if len(audio) < max(fmt.bytes_for_ms(500), RETIME_GROWTH * self._aligned_bytes):
            return
        self._aligned_bytes = len(audio)
        self._timing = asyncio.ensure_future(asyncio.to_thread(align, self._text, bytes(audio), fmt, pace))
        self._timing.add_done_callback(self._timed)

    def _timed(self, timing: asyncio.Future) -> None:
        if self._final or timing.cancelled() or timing.exception() is not None or self._feed is None:
            return
        self._feed.retimed(self, timing.result())

    def attach(self, playback: HeardPlayback, words: Sequence[Word]) -> None:
        """Caption `playback` (one voice's audio of the line) with `words` from its first sound."""
        feed = self._feed
        if feed is None:
            return
        loop = asyncio.get_running_loop()

        def heard(heard_from: float) -> None:  # the writer thread
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(feed.heard, self, self._text, self._language, words, heard_from)

        playback.on_heard = heard

    def retime(self, words: Sequence[Word], voice: str, duration_s: float, speed: float = 1.0) -> None:
        """The line's word times from its whole audio (`duration_s` long, said by `voice` at `speed`)."""
        self._final = True
        self._pace.learn(voice, self._text, duration_s, speed, words[0].start_ms / 1000 if words else 0.0)
        if self._feed is not None:
            self._feed.retimed(self, words)

    def end(self) -> None:
        if self._feed is not None:
            self._feed.ended(self)
