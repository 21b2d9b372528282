"""The `presence:` section: an optional PIR motion sensor at the exhibit (kiosk.buttons.PresenceSensor). That its
line exists and its pin is not a button's or an LED's are checked across sections (kiosk.config.validation)."""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.config.fields import _bounded


@dataclass(frozen=True)
class PresenceConfig:
    """A motion sensor on a GPIO pin (BCM numbering); no pin: no sensor, nothing touched."""

    pin: int | None = _bounded(None, 0, 53)
    invite: str | None = None  # the line said to a visitor who approaches (while open, quiet and idle); None: none
    quiet_s: int = _bounded(60, 5, 3600)  # another approach within this long is the same visitor: not counted again

    @property
    def enabled(self) -> bool:
        return self.pin is not None
