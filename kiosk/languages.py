"""The visitor's language: chosen with a language button, back to the default when the exhibit is left alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


class LanguageChoice:
    """Which of the offered languages the next line is spoken in.

    A language button moves to the next language; any press keeps the choice for another `reset_s`; after that
    long without a press the next visitor starts in the default language (the first offered).
    """

    def __init__(self, codes: Sequence[str], *, clock: Callable[[], float] = time.monotonic):
        self.codes = tuple(codes)
        self._clock = clock
        self._index = 0
        self._until = 0.0

    @property
    def current(self) -> str | None:
        if not self.codes:
            return None
        if self._index and self._clock() >= self._until:
            self._index = 0
        return self.codes[self._index]

    def touch(self, reset_s: float) -> None:
        """A press: the choice holds for another `reset_s`."""
        self._until = max(self._until, self._clock() + reset_s)

    def cycle(self, reset_s: float) -> tuple[str, int]:
        """Move to the next language; (its code, its position counted from 1)."""
        current = self.current  # a choice that has lapsed starts again from the default
        self._index = (self.codes.index(current) + 1) % len(self.codes) if current else 0
        self._until = self._clock() + reset_s
        return self.codes[self._index], self._index + 1
