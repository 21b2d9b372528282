"""The `audio:` section: how sound reaches the speaker."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiosk.config.fields import _NONEMPTY, _bounded


@dataclass(frozen=True)
class AudioConfig:
    """How audio reaches the speaker."""

    device: str = "default"
    volume: int = _bounded(100, 0, 100)  # percent: the device's mixer where it has one, else software gain
    preroll_ms: int = _bounded(120, 0, 2000)  # at least this much audio before a streamed line starts
    preroll_max_ms: int = _bounded(3000, 0, 30000)  # the longest a line is held after its first byte
    period_ms: int = _bounded(40, 5, 200)
    buffer_periods: int = _bounded(4, 2, 32)
    chime: str = field(default="none", metadata=_NONEMPTY)  # none, soft, or a WAV file played at once for a new line
    loudness_lufs: float | None = _bounded(-18.0, -40.0, -10.0)  # every line brought to it; null: off
    # What a visitor may set with volume_up / volume_down buttons (percent, like `volume`), and by how much a press
    # moves it; the visitor's setting lapses back to `volume` after the button's reset_s (kiosk.visitor).
    visitor_volume_min: int = _bounded(30, 0, 100)
    visitor_volume_max: int = _bounded(100, 0, 100)
    visitor_volume_step: int = _bounded(10, 0, 100)
