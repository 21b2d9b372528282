"""The device keeper: the speaker stays up when its audio device is missing, says so, and keeps trying.

A device that fails while playing (unplugged USB, driver error) is reopened with a pause that doubles up to 30 s,
only while nothing is speaking, so a retry never cuts into a line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kiosk.errors import AudioError
from kiosk.pcm import AudioFormat
from kiosk.player import Player

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


class DeviceKeeper:
    """Opens the current player's device; `problem` says why it is not working, None while it is."""

    def __init__(
        self,
        *,
        player: Callable[[], Player],
        fmt: Callable[[], AudioFormat],
        speaking: Callable[[], bool],
        on_event: Callable[[str], None],
    ):
        self._player, self._fmt, self._speaking, self._on_event = player, fmt, speaking, on_event
        self.problem: str | None = None

    async def open(self) -> None:
        """Open the device now; a missing one is reported, not raised."""
        try:
            await self._player().open_device(self._fmt())
        except AudioError as exc:
            if self.problem is None:
                self._on_event(f"speaker missing: {exc}")
            self.problem = str(exc)
        else:
            if self.problem is not None:
                self._on_event("speaker back")
            self.problem = None

    def playback_failed(self) -> None:
        """A line just ended; if the device failed during it, start reopening it."""
        error = self._player().last_error
        if error is not None and self.problem is None:
            self.problem = str(error)
            self._on_event(f"speaker failed: {self.problem}; reopening it")

    async def run(self) -> None:
        """Retry a missing device forever, with back-off (a supervised task)."""
        pause = RETRY_FIRST_S
        while True:
            await asyncio.sleep(pause)
            if self.problem is None:
                pause = RETRY_FIRST_S
                continue
            if not self._speaking():
                await self.open()
            pause = min(RETRY_MAX_S, pause * 2) if self.problem else RETRY_FIRST_S
