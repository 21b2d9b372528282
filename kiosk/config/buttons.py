"""The `buttons:` section: one entry per GPIO push button. Which lines and languages a button names, and that no
pin is used twice, are checked across sections (kiosk.config.validation)."""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.config.fields import _bounded, _choice, _required


@dataclass(frozen=True)
class ButtonConfig:
    """A push button on a GPIO pin (BCM numbering), wired between the pin and ground unless pull_up is false."""

    pin: int | None = _required(None, 0, 53)
    name: str = ""  # what staff call it, e.g. "Entrance case" (shown on the staff page)
    phrase: str | None = None
    # language: cycles through the offered languages; volume_up / volume_down: the visitor's volume (kiosk.visitor);
    # replay: the last line a button spoke, again; slower: the same, at speech.slower_speed
    action: str = _choice("speak", "stop", "language", "volume_up", "volume_down", "replay", "slower")
    language: str | None = None  # a speak button fixed to one language; otherwise the visitor's choice
    reset_s: int = _bounded(120, 5, 3600)  # a language or volume button: back to the default after this long unused
    pull_up: bool = True
    bounce_ms: int = _bounded(50, 0, 1000)
    cooldown_ms: int = _bounded(1500, 0, 600_000)
    when_busy: str = _choice("restart", "ignore", "queue")
    led: int | None = _bounded(None, 0, 53)
