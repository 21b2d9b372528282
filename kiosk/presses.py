"""What a press means: a button's line (in the visitor's language, at the hour's volume and the visitor's), stop, the
next language, the visitor's volume up or down (kiosk.visitor; a button or a turn of the knob), the last line again
(as it was, or slower), the closed line out of hours;
and a scheduled announcement or an invitation (never at the visitor's volume); a visitor approaching the exhibit
(the motion sensor): counted in the history and invited.

The buttons (kiosk.buttons) and the scheduler (kiosk.schedule) call in here; the line goes to the speaker through
the app interface, so that a press is refused, counted and recorded as any other request is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from kiosk.app import App
from kiosk.buttons import Buttons, Hold, PresenceSensor, VolumeKnob
from kiosk.config import ButtonConfig, KnobConfig, PresenceConfig
from kiosk.history import Outcome
from kiosk.parts import Parts
from kiosk.setup_code import HOLD_S
from kiosk.speaker import Rejected, Request

log = logging.getLogger(__name__)

#: A turn of the knob is confirmed by a tone at most this often (one tone's length, kiosk.chime.BEEP_S): a fast spin
#: is a few tones, the last at the level it ended on, never one per detent.
KNOB_TONE_GAP_S = 0.15


class Presses:
    """Turns a button press or a scheduled line into a request; `on_pressed(button)` hears of every press."""

    def __init__(
        self,
        app: App,
        parts: Parts,
        *,
        on_pressed: Callable[[ButtonConfig], None] = lambda b: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._app = app
        self._parts = parts
        self._on_pressed = on_pressed
        self._clock = clock
        self._last_approach: float | None = None  # on `clock`: when the motion sensor last saw a new visitor
        #: (phrase, language) of the last line a speak button had spoken, for a replay or slower button.
        self._last_line: tuple[str, str | None] | None = None
        self._knob_tone: asyncio.TimerHandle | None = None  # the tone confirming the knob's last turns, when due
        self._knob_tone_at = -KNOB_TONE_GAP_S  # on the event loop's clock: when the knob's last tone was played
        self._knob_moved = False  # whether any turn since that tone moved the volume (else: the tone at the limit)
        self.setup_hold_s = HOLD_S  # how long the setup button is held for a spoken setup code (tests: shorter)

    def connect(
        self,
        configs: tuple[ButtonConfig, ...],
        *,
        pin_factory=None,
        presence: PresenceConfig | None = None,
        knob: KnobConfig | None = None,
    ) -> None:
        """(Re)connect the configured buttons, motion sensor and volume knob (none: no GPIO is touched); a wiring
        problem is reported, not raised."""
        parts = self._parts
        self.disconnect()
        loop = asyncio.get_running_loop()
        if presence is not None and presence.enabled:
            parts.presence = PresenceSensor(presence, self.approached, loop=loop, pin_factory=pin_factory)
            self._report(parts.presence.error)
        if knob is not None and knob.enabled:
            parts.knob = VolumeKnob(knob, self.turned, loop=loop, pin_factory=pin_factory)
            self._report(parts.knob.error)
        if not configs:
            return
        hold = Hold(self.setup_hold_s, self.held)
        parts.buttons = Buttons(configs, self.press, loop=loop, pin_factory=pin_factory, hold=hold)
        self._report(parts.buttons.error)
        if not parts.buttons.error and parts.buttons.simulated:
            log.warning("GPIO pins are simulated (mock pin factory): the buttons are not wired to anything")

    def _report(self, error: str | None) -> None:
        if error:
            log.error("%s", error)
            self._app.event(error)

    def disconnect(self) -> None:
        """Let go of the buttons, the motion sensor and the knob (a reload, the end)."""
        parts = self._parts
        for device in (parts.buttons, parts.presence, parts.knob):
            if device:
                device.close()
        parts.buttons = parts.presence = parts.knob = None
        if self._knob_tone is not None:
            self._knob_tone.cancel()
            self._knob_tone = None

    def held(self, button: ButtonConfig) -> None:
        """A button was held (called on the event loop): the setup button's hold has the speaker say a new setup
        code; another's means nothing more than its press."""
        setup = self._parts.cfg.setup_button
        if setup is None or button.pin != setup.pin:
            return
        try:
            self._app.speak_setup_code()
        except Rejected as exc:
            log.warning("the setup code could not be spoken: %s", exc)
        except Exception:  # like a press: the next hold works
            log.exception("speaking a setup code failed")

    def approached(self) -> None:
        """The motion sensor saw movement; called on the event loop. A new visitor (none within `quiet_s`) is
        counted in the history and, while open, outside quiet hours and with nothing playing, invited."""
        try:
            self._approached()
        except Exception:  # like a press: the next approach works
            log.exception("handling the motion sensor failed")

    def _approached(self) -> None:
        cfg, now = self._parts.cfg, self._clock()
        if self._last_approach is not None and now - self._last_approach < cfg.presence.quiet_s:
            return
        self._last_approach = now
        self._parts.history.record(Outcome(time.time(), "presence", None, None, None, "approach"))
        app, invite = self._app, cfg.presence.invite
        moment = app.local_time()
        if invite is None or not app.is_open(moment) or app.quiet_volume(moment) is not None or app.speaking:
            return
        text, language = cfg.text_for(invite)
        with contextlib.suppress(Rejected):
            self._app.say(text, origin="presence", policy="ignore", phrase=invite, language=language)

    def request_changed(self, req: Request) -> None:
        """A button's LED is lit while its line plays (a queued press changes nothing); any activity holds off the
        attract mode."""
        self._parts.scheduler.activity()
        buttons = self._parts.buttons
        if buttons and req.origin.startswith("button:") and req.state != "queued":
            buttons.light(int(req.origin.split(":")[1]), req.state == "playing")

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
        self._parts.visitor_volume.touch(self._reset_s("volume_up", "volume_down"))
        if button.action == "stop":
            app.stop_speaking()
            return
        if button.action == "language":
            self._next_language(button)
            return
        if not app.is_open(now):
            self._closed(button)
            return
        quiet = app.quiet_volume(now)
        if quiet == 0:
            app.refused(f"button:{button.pin}", button.phrase, "quiet_hours")
            app.event(f"button {button.pin}: quiet hours, not spoken")
            return
        choice = self._parts.language_choice
        chosen = button.language or choice.current  # before the touch: a lapsed choice is over
        choice.touch(self._reset_s("language"))
        volume = _hour_share(quiet)
        if button.action in ("volume_up", "volume_down"):
            self._volume(button, volume)
            return
        speed = cfg.speech.slower_speed if button.action == "slower" else 1.0
        if button.action in ("replay", "slower"):
            if self._last_line is None or self._last_line[0] not in cfg.phrases:  # none yet, or gone on a reload
                log.info("button %d: %s, but no line has been spoken to a visitor yet", button.pin, button.action)
                return
            phrase = self._last_line[0]
            text, language = cfg.text_for(phrase, self._last_line[1])
        else:
            phrase = button.phrase
            text, language = cfg.text_for(phrase, chosen)
        try:
            app.say(
                text,
                origin=f"button:{button.pin}",
                policy=button.when_busy,
                phrase=phrase,
                language=language,
                volume=volume * self._parts.visitor_volume.share(cfg.audio),
                speed=speed,
            )
        except Rejected as exc:
            self._app.refused(f"button:{button.pin}", phrase, exc.reason)
            log.info("button %d: %s", button.pin, exc)
            return
        self._last_line = (phrase, language)

    def turned(self, detents: int) -> None:
        """The volume knob was turned `detents` detents (clockwise: louder); called on the event loop. Each detent is
        one step of the visitor's volume, as a volume button's press is; while open and not silenced by staff or
        quiet hours. The tone confirming it comes at most every KNOB_TONE_GAP_S."""
        try:
            self._turned(detents)
        except Exception:  # like a press: the next turn works
            log.exception("handling the volume knob failed")

    def _turned(self, detents: int) -> None:
        cfg, now = self._parts.cfg, self._app.local_time()
        self._parts.scheduler.activity()
        if cfg.audio.volume == 0 or not self._app.is_open(now) or self._app.quiet_volume(now) == 0:
            log.info("volume knob: turned while closed or silent; the visitor's volume stays")
            return
        self._parts.language_choice.touch(self._reset_s("language"))
        visitor = self._parts.visitor_volume
        for _ in range(abs(detents)):
            step = visitor.step(detents > 0, cfg.audio, cfg.knob.reset_s)
            self._knob_moved = self._knob_moved or step.moved
        log.debug("volume knob: %+d, visitor volume %d%%", detents, visitor.level(cfg.audio))  # a spin: many
        if self._knob_tone is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._knob_tone_at + KNOB_TONE_GAP_S - loop.time())
            self._knob_tone = loop.call_later(wait, self._knob_confirm)

    def _knob_confirm(self) -> None:
        """The tone for the knob's turns since the last one, at the level they reached (none over a line)."""
        self._knob_tone, self._knob_tone_at = None, asyncio.get_running_loop().time()
        moved, self._knob_moved = self._knob_moved, False
        if self._app.speaking:
            return
        volume = _hour_share(self._app.quiet_volume(self._app.local_time()))
        try:
            self._app.beep("ok" if moved else "limit", volume * self._parts.visitor_volume.share(self._parts.cfg.audio))
        except Exception:  # a tone that cannot play is no reason to stop confirming the next turns
            log.exception("the volume knob's tone failed")

    def _volume(self, button: ButtonConfig, volume: float) -> None:
        """A volume button: the visitor's volume one step up or down, confirmed at once by a tone at the new level
        (a low one at the limit: nothing changed). While a line plays the tone is left out rather than played over
        or after it: the change is heard on the next line."""
        audio = self._parts.cfg.audio
        if audio.volume == 0:
            log.info("button %d: the speaker is muted by staff; the visitor's volume stays", button.pin)
            return
        visitor = self._parts.visitor_volume
        step = visitor.step(button.action == "volume_up", audio, button.reset_s)
        log.info("button %d: %s, visitor volume %d%%", button.pin, button.action, step.level)
        if not self._app.speaking:
            self._app.beep("ok" if step.moved else "limit", volume * visitor.share(audio))

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

    def _reset_s(self, *actions: str) -> float:
        """How long a visitor's language or volume lasts: the setting of the first button with one of `actions`."""
        return next((b.reset_s for b in self._parts.cfg.buttons if b.action in actions), 120)

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


def _hour_share(quiet: int | None) -> float:
    """The share of the staff's volume the hour allows: quiet hours' volume (percent), or all of it outside them."""
    return 1.0 if quiet is None else quiet / 100
