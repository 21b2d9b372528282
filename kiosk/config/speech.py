"""The speech sections: `speech:` (which engine, what stands in, the queue), `openai:` and `piper:`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kiosk.config.fields import _NONEMPTY, _bounded, _choice


@dataclass(frozen=True)
class SpeechConfig:
    """Which engine speaks lines that are not cached yet, what stands in when it fails or is slow, and how many
    lines may wait their turn."""

    engine: str = _choice("auto", "openai", "piper")
    fallback: str = _choice("auto", "piper", "none")
    failover_ms: int = _bounded(2500, 100, 60_000)
    queue_limit: int = _bounded(5, 1, 100)
    #: The speed a `slower` button says the last line again at, a share of the voice's own (both engines).
    slower_speed: float = _bounded(0.8, 0.5, 0.95)


@dataclass(frozen=True)
class OpenAIConfig:
    """The OpenAI (or OpenAI-compatible) speech engine."""

    base_url: str | None = None
    api_key_file: Path | None = None
    model: str = field(default="gpt-4o-mini-tts", metadata=_NONEMPTY)
    voice: str = field(default="coral", metadata=_NONEMPTY)
    instructions: str = ""
    speed: float = _bounded(1.0, 0.25, 4.0)
    connect_timeout_s: float = _bounded(3.0, 0.1, 60)
    first_byte_timeout_s: float = _bounded(6.0, 0.1, 120)
    chunk_gap_timeout_s: float = _bounded(3.0, 0.1, 120)
    request_timeout_s: float = _bounded(180.0, 1, 3600)
    retries: int = _bounded(2, 0, 10)
    text_model: str = field(default="gpt-4o-mini", metadata=_NONEMPTY)  # drafts translations on the staff page


@dataclass(frozen=True)
class PiperConfig:
    """The local Piper voice (optional extra `kiosk[piper]`)."""

    voice: str = field(default="joe-us", metadata=_NONEMPTY)
    speed: float = _bounded(1.0, 0.25, 4.0)
