"""The announcer's handle on one line's captions: it ties the line's playbacks to the caption feed.

The writer thread says when a playback is first heard (and when it slipped); the feed lives on the event loop, so
that is handed over with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from kiosk.captions.timing import Pace, Word, estimate


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

    def attach_streamed(self, playback: HeardPlayback, voice: str, speed: float = 1.0) -> None:
        """Caption a playback whose audio is still arriving: word times guessed from how fast `voice` speaks."""
        self.attach(playback, estimate(self._text, self._pace.duration_s(voice, self._text, speed)))

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
        self._pace.learn(voice, self._text, duration_s, speed)
        if self._feed is not None:
            self._feed.retimed(self, words)

    def end(self) -> None:
        if self._feed is not None:
            self._feed.ended(self)
