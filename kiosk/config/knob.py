"""The `knob:` section: an optional rotary encoder at the exhibit that turns the visitor's volume
(kiosk.buttons.VolumeKnob). That its pins are not a button's, an LED's or the motion sensor's, and that both are set,
are checked across sections (kiosk.config.validation)."""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.config.fields import _bounded


@dataclass(frozen=True)
class KnobConfig:
    """A rotary encoder's two outputs on GPIO pins (BCM numbering), common to ground; no pins: no knob, nothing
    touched. Each detent is one `audio.visitor_volume_step`, as a volume_up or volume_down press is."""

    a: int | None = _bounded(None, 0, 53)
    b: int | None = _bounded(None, 0, 53)
    # How long the visitor's volume lasts with no turn or press, as a volume button's reset_s. (5 to 3600 s)
    reset_s: int = _bounded(120, 5, 3600)

    @property
    def enabled(self) -> bool:
        return self.a is not None and self.b is not None
