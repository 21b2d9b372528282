"""The speaker as the outside world may use it: the one interface every adapter is handed.

The HTTP API, the staff pages, MQTT, OSC, the buttons and the scheduler each get an `App` — never the service —
and read and change the speaker only through it (after mopidy's core API, which all its frontends share). Its
methods say what may be asked: play and stop, status and health, history, the lines and their languages, voice
samples, translation drafts, a button's LED blinked; `reload` re-reads the settings. Tests hand adapters fakes
of the parts they use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from kiosk import clock, in_step
from kiosk.build import BUNDLED_VOICE, build_local_voice, piper_installed
from kiosk.captions.feed import CaptionFeed
from kiosk.config import Config, text_problem
from kiosk.errors import KioskError, SpeechError
from kiosk.history import Outcome
from kiosk.listen import SampleStream
from kiosk.metrics import Metrics
from kiosk.parts import Parts
from kiosk.plain_words import fault_words
from kiosk.setup_code import spoken
from kiosk.speaker import Rejected, Request
from kiosk.speech.openai_engine import OpenAIEngine, draft_translations
from kiosk.status import StatusBoard

log = logging.getLogger(__name__)

VOICE_SAMPLE = "Welcome to the museum. This is how I sound when I tell you about the exhibits."


class App:
    """What anything outside the core may ask of the speaker."""

    settings_lock: asyncio.Lock  # see __init__

    def __init__(
        self,
        parts: Parts,
        board: StatusBoard,
        *,
        reload: Callable[[], Awaitable[bool]],
        now: Callable[[], datetime] = datetime.now,
    ):
        self._parts = parts
        self.board = board
        self._reload = reload
        self._now = now
        self._listeners: list[Callable[[], None]] = []
        #: Held from reading the staff settings file to reloading it, by the staff page, MQTT and OSC alike, so
        #: that two changes made at once are both kept.
        self.settings_lock = asyncio.Lock()

    # -- the settings

    @property
    def cfg(self) -> Config:
        return self._parts.cfg

    @property
    def config_path(self) -> Path | None:
        return self._parts.config_path

    async def reload(self) -> bool:
        """Re-read the settings (the config file and the staff's saved settings); False when they were refused."""
        return await self._reload()

    @property
    def api_token(self) -> str | None:
        return self._parts.api_token

    @property
    def captions(self) -> CaptionFeed:
        """What the live captions show now (kiosk.captions)."""
        return self._parts.captions

    @property
    def staff_port(self) -> int | None:
        return self._parts.staff_port

    def local_time(self) -> datetime:
        """The time of day as the museum keeps it (injected in tests)."""
        return self._now()

    def is_open(self, moment: datetime) -> bool:
        """Opening hours at `moment`, or the staff's fallback while the clock is not set (kiosk.clock)."""
        return clock.is_open(self.cfg, self._parts.clock.trusted(), moment)

    def clock_state(self) -> str:
        """'set', or 'clock not set' while the wall clock cannot be trusted (kiosk.clock)."""
        return self._parts.clock.problem() or "set"

    def quiet_volume(self, moment: datetime) -> int | None:
        """The quiet-hours volume at `moment`; None outside them, and while the clock is not set."""
        return clock.quiet_volume(self.cfg, self._parts.clock.trusted(), moment)

    # -- speaking

    def play(
        self,
        *,
        phrase: str | None,
        text: str | None,
        origin: str,
        policy: str | None = None,
        language: str | None = None,
        at: float | None = None,
    ) -> Request:
        """Queue a configured line (in `language`, else the default) or (where allowed) free text, to start at `at`
        (Unix seconds, kiosk.in_step; None: at once); raises Rejected saying why not."""
        text, language = self.line_text(phrase=phrase, text=text, language=language)
        try:
            try:  # `at` as a moment on the monotonic clock, now; not judged by a clock that is not synchronized
                start = (
                    None if at is None else in_step.plan(at, synchronized=self._parts.clock.trusted(), tell=self.event)
                )
            except in_step.BadStart as exc:
                raise Rejected(str(exc), "bad_start") from None
            req = self.say(
                text, origin=origin, policy=policy or self.cfg.api.when_busy, phrase=phrase, language=language
            )
        except Rejected as exc:
            self.refused(origin, phrase, exc.reason)
            raise
        req.start = start  # before the speaker loop can take it: nothing was awaited since it was queued
        return req

    def say(
        self,
        text: str,
        *,
        origin: str,
        policy: str,
        phrase: str | None = None,
        language: str | None = None,
        volume: float = 1.0,
        speed: float = 1.0,
        private: bool = False,
    ) -> Request:
        """Hand a checked text to the speaker at `volume` (a share of the staff's volume) and `speed` (a share of
        the voice's); raises Rejected when the speaker will not take it (busy, queue full). A `private` text is
        spoken but never cached, captioned or shown (kiosk.speaker.Request.private)."""
        parts = self._parts
        gain = parts.gain * volume
        return parts.speaker.request(
            text,
            origin=origin,
            policy=policy,
            phrase=phrase,
            gain=gain,
            language=language,
            speed=speed,
            private=private,
        )

    def speak_setup_code(self) -> None:
        """Staff held the setup button: say a new setup code (valid ten minutes, once) at once. The code itself
        goes nowhere but the voice."""
        code = self._parts.setup_codes.new()
        self.say(spoken(code), origin="setup", policy="restart", private=True)
        self.event("The setup button was held: a setup code was spoken (valid for 10 minutes).")

    def use_setup_code(self, code: str) -> bool:
        """Whether `code` is the setup code in force; a right one is used up."""
        return self._parts.setup_codes.use(code)

    def setup_button_name(self) -> str | None:
        """What staff call the button to hold for a setup code (None: there are no buttons)."""
        button = self.cfg.setup_button
        if button is None:
            return None
        return button.name or f"GPIO {button.pin}"

    def beep(self, kind: str, volume: float = 1.0) -> None:
        """A volume press's short tone (`ok` or `limit`, kiosk.chime.beep) at `volume` (a share of the staff's
        volume), played at once; the caller makes sure no line is playing."""
        parts = self._parts
        parts.announcer.beep(kind, parts.gain * volume)

    def refused(self, origin: str, phrase: str | None, reason: str) -> None:
        """A request not spoken, counted and kept in the history with why."""
        self.metrics.rejected.labels(reason).inc()
        self._parts.history.record(Outcome(time.time(), origin, phrase, None, None, reason))

    def line_text(self, *, phrase: str | None, text: str | None, language: str | None = None) -> tuple[str, str | None]:
        """The configured line in `language` (the default language's text where it has no translation), or free
        text where allowed, spoken in `language`'s voice; with the language heard. Raises Rejected saying why not."""
        cfg = self.cfg
        if language is not None and cfg.language(language) is None:
            offered = ", ".join(lang.code for lang in cfg.languages) or "none"
            shown = "".join(c if c.isprintable() else "?" for c in language[:16])  # a client's text, echoed
            raise Rejected(f"'{shown}' is not an offered language (offered: {offered})", "unknown_language")
        if phrase is not None:
            if phrase not in cfg.phrases:
                raise Rejected(f"no phrase '{phrase}'", "unknown_phrase")
            return cfg.text_for(phrase, language)
        if not cfg.api.allow_text:
            raise Rejected("free text is disabled (api.allow_text: false)", "text_disabled")
        problem = text_problem(text)
        if problem:
            raise Rejected(problem, "bad_text")
        return text, language or cfg.default_language

    def stop_speaking(self) -> bool:
        """Silence now and drop the queue; whether anything was playing or waiting."""
        speaker = self._parts.speaker
        was_speaking = speaker.speaking or speaker.queued > 0
        speaker.stop()
        return was_speaking

    @property
    def speaking(self) -> bool:
        return self._parts.speaker.speaking

    def find(self, request_id: str) -> Request | None:
        return self._parts.speaker.history.get(request_id)

    def allow_trigger(self) -> float | None:
        """None when another trigger may go now; else the seconds to wait (one rate for every adapter)."""
        retry_after = self._parts.limiter.take()
        if retry_after is not None:
            self.metrics.rejected.labels("rate_limited").inc()
        return retry_after

    async def listen(self, text: str, language: str | None = None):
        """(format, chunks) of a line for a listener over HTTP; see Announcer.listen."""
        return await self._parts.announcer.listen(text, language)

    # -- voices and lines, for staff

    async def draft_translations(self, phrase: str) -> dict[str, str]:
        """Drafts of a configured line in every other offered language, from OpenAI's text model, for staff to
        review (nothing is saved). Raises KioskError saying why there are none."""
        others = {lang.code: lang.spoken_name for lang in self.cfg.languages[1:]}
        if not others:
            raise KioskError("offer two or more languages (languages: in the config) to translate lines")
        return await draft_translations(self.cfg.openai, self._parts.api_key, self.cfg.phrases[phrase], others)

    def voice_report(self) -> dict:
        """Which voice speaks lines that are not ready offline, and why, in plain words."""
        parts = self._parts
        choice, primary = self.cfg.speech.engine, parts.engine.name
        paused = [e for e in parts.engines.state() if e["in_backoff"]]
        if primary == "openai" and paused and paused[0]["name"] == "openai":
            standing_in = len(parts.engines.engines) > 1
            why = f"the online voice is not working: {fault_words(paused[0]['reason'])}" + (
                "; the local voice stands in until it is back" if standing_in else ""
            )
            return {"engine": "piper" if standing_in else "openai", "why": why}
        if primary == "openai":
            return {"engine": "openai", "why": "an OpenAI key is set" if choice == "auto" else "OpenAI was chosen"}
        if choice == "piper":
            return {"engine": "piper", "why": "the local voice was chosen"}
        return {"engine": "piper", "why": "no OpenAI key is set; add one to use the OpenAI voices"}

    def local_voices(self) -> list[str]:
        """The local voices this speaker has: the bundled one, and the one configured if that is another."""
        if not piper_installed():
            return []
        return list(dict.fromkeys([BUNDLED_VOICE, self.cfg.piper.voice]))

    async def sample(self, engine: str, voice: str) -> SampleStream:
        """A short sample of `voice` for staff, started (raises KioskError saying why it cannot be)."""
        parts = self._parts
        if engine == "openai":
            if not parts.api_key:
                raise SpeechError("the OpenAI voices need a key: add one below first")
            speaker = OpenAIEngine(dataclasses.replace(self.cfg.openai, voice=voice), parts.api_key)
            own = True
        else:
            current = next((e for e in parts.engines.engines if e.name == "piper"), None)
            own = current is None or voice != self.cfg.piper.voice
            speaker = build_local_voice(dataclasses.replace(self.cfg.piper, voice=voice)) if own else current
        stream = SampleStream(speaker, VOICE_SAMPLE, close_engine=own)
        try:
            await stream.start()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    def identify_button(self, pin: int) -> str | None:
        """Blink the LED of the button on `pin`; None when it blinks, else why it cannot."""
        buttons = self._parts.buttons
        if not any(b.pin == pin for b in self.cfg.buttons):
            return f"there is no button on GPIO {pin}"
        if buttons is None or buttons.error:
            return "the buttons are not working (see the problems above)"
        if not buttons.blink(pin):
            return "this button has no LED; press it and watch the page instead"
        return None

    def warm_progress(self) -> dict:
        return dict(self._parts.warm)

    def next_announcement(self) -> dict | None:
        return self._parts.scheduler.next_announcement()

    # -- what is going on

    async def status(self) -> dict:
        return await self.board.status()

    def health(self) -> tuple[bool, str]:
        return self.board.health()

    def problems(self) -> list[str]:
        return self.board.problems()

    def ready_lines(self) -> list[str]:
        return self.board.ready_lines()

    @property
    def underruns_total(self) -> int:
        return self.board.underruns_total

    def metrics_text(self) -> tuple[bytes, str]:
        return self.board.metrics_text()

    @property
    def metrics(self) -> Metrics:
        return self.board.metrics

    @property
    def events(self):
        return self._parts.event_log.events

    def event(self, text: str) -> None:
        """Something staff should know: kept in the events, and every status listener told."""
        self._parts.event_log.add(text)
        self.status_changed()

    def on_status_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def status_changed(self) -> None:
        for listener in self._listeners:
            listener()

    async def history_rows(self, days: int) -> list[dict]:
        return await self._parts.history.as_json(days)

    async def history_csv(self, days: int) -> str:
        return await self._parts.history.csv(days, self.cfg)

    async def history_summary(self, days: int) -> dict:
        return await self._parts.history.summary(days)
