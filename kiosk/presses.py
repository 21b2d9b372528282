"""What a press means: a button's line (in the visitor's language, at the hour's volume), stop, the next language,
the closed line out of hours; and a scheduled announcement or an invitation.

The buttons (kiosk.buttons) and the scheduler (kiosk.schedule) call in here; the line goes to the speaker through
the app interface, so that a press is refused, counted and recorded as any other request is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from kiosk.app import App
from kiosk.config import ButtonConfig
from kiosk.parts import Parts
from kiosk.speaker import Rejected

log = logging.getLogger(__name__)


class Presses:
    """Turns a button press or a scheduled line into a request; `on_pressed(button)` hears of every press."""

    def __init__(self, app: App, parts: Parts, *, on_pressed: Callable[[ButtonConfig], None] = lambda b: None):
        self._app = app
        self._parts = parts
        self._on_pressed = on_pressed

    def press(self, button: ButtonConfig) -> None:
        """A button was pressed (outside its cooldown); called on the event loop."""
        try:
            self._press(button)
        except Exception:  # a press must never take the button bridge down; the next press works
            log.exception("handling a press on GPIO %d failed", button.pin)

    def _press(self, button: ButtonConfig) -> None:
        app, cfg, now = self._app, self._parts.cfg, self._app.local_time()
        self._parts.last_pressed[button.pin] = time.time()
        app.metrics.presses.labels(str(button.pin)).inc()
        self._on_pressed(button)
        if button.action == "stop":
            app.stop_speaking()
            return
        if button.action == "language":
            self._next_language(button)
            return
        if not cfg.is_open(now):
            self._closed(button)
            return
        quiet = cfg.quiet_volume(now)
        if quiet == 0:
            app.refused(f"button:{button.pin}", button.phrase, "quiet_hours")
            app.event(f"button {button.pin}: quiet hours, not spoken")
            return
        choice = self._parts.language_choice
        chosen = button.language or choice.current  # before the touch: a lapsed choice is over
        choice.touch(self._language_reset_s())
        text, language = cfg.text_for(button.phrase, chosen)
        try:
            app.say(
                text,
                origin=f"button:{button.pin}",
                policy=button.when_busy,
                phrase=button.phrase,
                language=language,
                volume=1.0 if quiet is None else quiet / 100,
            )
        except Rejected as exc:
            self._app.refused(f"button:{button.pin}", button.phrase, exc.reason)
            log.info("button %d: %s", button.pin, exc)

    def _next_language(self, button: ButtonConfig) -> None:
        """A language button: the next offered language, announced by its name in its own voice, its position
        flashed on the button's LED."""
        code, position = self._parts.language_choice.cycle(button.reset_s)
        if self._parts.buttons is not None:
            self._parts.buttons.flash(button.pin, position)
        name = self._parts.cfg.language(code).spoken_name
        self._app.event(f"button {button.pin}: language {code} ({name})")
        with contextlib.suppress(Rejected):
            self._app.say(name, origin=f"button:{button.pin}", policy="restart", language=code)

    def _language_reset_s(self) -> float:
        """How long a visitor's language choice lasts: the language button's setting."""
        return next((b.reset_s for b in self._parts.cfg.buttons if b.action == "language"), 120)

    def _closed(self, button: ButtonConfig) -> None:
        """A press while the museum is closed: the closed line where one is set, else nothing."""
        cfg = self._parts.cfg
        phrase = cfg.closed_phrase
        if phrase is None:
            self._app.refused(f"button:{button.pin}", button.phrase, "closed")
            return
        text, language = cfg.text_for(phrase, button.language or self._parts.language_choice.current)
        with contextlib.suppress(Rejected):
            self._app.say(text, origin=f"button:{button.pin}", policy="ignore", phrase=phrase, language=language)

    def announce(self, phrase: str, origin: str, volume: int) -> bool:
        """A scheduled announcement (after what is playing) or an invitation (only when nothing is)."""
        policy = "queue" if origin == "schedule" else "ignore"
        text, language = self._parts.cfg.text_for(phrase)
        try:
            self._app.say(text, origin=origin, policy=policy, phrase=phrase, language=language, volume=volume / 100)
        except Rejected as exc:
            self._app.refused(origin, phrase, exc.reason)
            return False
        return True
