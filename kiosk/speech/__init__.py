"""Speech engines: each module here is the only importer of its vendor library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kiosk.pcm import AudioFormat

AudioCallback = Callable[[bytes], None]


class SpeechEngine(Protocol):
    """Turns text into PCM, delivered chunk by chunk as it is synthesized."""

    name: str
    fmt: AudioFormat
    on_device: bool  # True: the text never leaves this machine (a local voice); False: it is sent to a service

    def identity(self) -> dict:
        """Everything about this engine that shapes the audio (part of the phrase cache key)."""

    async def synthesize(self, text: str, on_audio: AudioCallback, speed: float = 1.0) -> None:
        """Call `on_audio` with each chunk (any size, not frame aligned) until the whole text is spoken, at `speed`
        times the engine's configured speed (a `slower` button's line: below 1).

        Raises kiosk.errors.SpeechError with a one-line explanation on any failure.
        """

    async def probe(self) -> None:
        """Raise SpeechError if the engine cannot speak now (server unreachable, key refused, voice missing)."""

    async def aclose(self) -> None: ...
