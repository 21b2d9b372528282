"""The whole configuration: `Config`, one frozen dataclass holding every section, and what the rest of the kiosk
asks of it (a line in a language, whether the museum is open, the quiet-hours volume, command-line overrides)."""

# Each section's default is one shared instance: safe, since every section is a frozen dataclass (ruff cannot see
# that through an import).
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kiosk.config.audio import AudioConfig
from kiosk.config.buttons import ButtonConfig
from kiosk.config.captions import CaptionsConfig
from kiosk.config.fleet import MqttConfig, OscConfig
from kiosk.config.hours import Announcement, AttractConfig, ClockConfig, OpeningHours, QuietHours
from kiosk.config.knob import KnobConfig
from kiosk.config.phrases import LanguageConfig
from kiosk.config.presence import PresenceConfig
from kiosk.config.speech import OpenAIConfig, PiperConfig, SpeechConfig
from kiosk.config.storage import CacheConfig, HistoryConfig
from kiosk.config.web import _HOSTNAME, ApiConfig, StaffConfig


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = AudioConfig()
    speech: SpeechConfig = SpeechConfig()
    openai: OpenAIConfig = OpenAIConfig()
    piper: PiperConfig = PiperConfig()
    cache: CacheConfig = CacheConfig()
    api: ApiConfig = ApiConfig()
    staff: StaffConfig = StaffConfig()
    history: HistoryConfig = HistoryConfig()
    mqtt: MqttConfig = MqttConfig()
    osc: OscConfig = OscConfig()
    buttons: tuple[ButtonConfig, ...] = ()
    quiet_hours: tuple[QuietHours, ...] = ()
    opening_hours: tuple[OpeningHours, ...] = ()  # empty: always open
    closed_phrase: str | None = None  # said when a button is pressed while closed; None: presses do nothing
    schedule: tuple[Announcement, ...] = ()
    attract: AttractConfig = AttractConfig()
    clock: ClockConfig = ClockConfig()  # what to do while the clock cannot be trusted
    presence: PresenceConfig = PresenceConfig()  # a motion sensor at the exhibit; off unless a pin is set
    knob: KnobConfig = KnobConfig()  # a rotary encoder for the visitor's volume; off unless both pins are set
    captions: CaptionsConfig = CaptionsConfig()  # the public captions and transcript pages
    #: Names this speaker is reached by besides its addresses, `localhost` and its host name (and `<name>.local`):
    #: the API and the staff page refuse any other Host, so a foreign site cannot reach them by DNS rebinding.
    hostnames: tuple[str, ...] = field(default=(), metadata=_HOSTNAME)
    languages: tuple[LanguageConfig, ...] = ()  # empty: one language, unnamed
    phrases: dict[str, str] = field(default_factory=dict)  # id → the line in the default language
    #: id → {language: text} in the other languages (given as maps under `phrases:`; see phrases._split_translations).
    translations: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def default_language(self) -> str | None:
        return self.languages[0].code if self.languages else None

    def language(self, code: str | None) -> LanguageConfig | None:
        return next((lang for lang in self.languages if lang.code == code), None)

    def text_for(self, phrase: str, language: str | None = None) -> tuple[str, str | None]:
        """The line in `language` and the language it is in: the default language's text when there is no
        translation (or no such language)."""
        translated = self.translations.get(phrase, {}).get(language or "")
        if translated is not None:
            return translated, language
        return self.phrases[phrase], self.default_language

    def phrase_settings(
        self, texts: dict[str, str], translations: dict[str, dict[str, str]] | None = None
    ) -> dict[str, str | dict[str, str]]:
        """`phrases:` as the staff settings file keeps it: each line in the default language (`texts`), with its
        translations (`translations`, else the current ones) as a map where it has any."""
        translations = self.translations if translations is None else translations
        default = self.default_language
        return {
            pid: {default: text, **translations[pid]} if default and translations.get(pid) else text
            for pid, text in texts.items()
        }

    def all_lines(self) -> list[tuple[str, str | None]]:
        """Every configured text with its language: each line in the default language, then each translation."""
        lines = [(text, self.default_language) for text in self.phrases.values()]
        return lines + [(text, lang) for texts in self.translations.values() for lang, text in texts.items()]

    @property
    def setup_button(self) -> ButtonConfig | None:
        """The button staff hold for a setup code: `staff.setup_button`, else the first (None: no buttons)."""
        pin = self.staff.setup_button
        return next((b for b in self.buttons if b.pin == pin), self.buttons[0] if self.buttons else None)

    def is_open(self, moment: datetime) -> bool:
        """Whether the museum is open at `moment` (always, when no opening hours are set)."""
        return not self.opening_hours or any(hours.covers(moment) for hours in self.opening_hours)

    def quiet_volume(self, moment: datetime) -> int | None:
        """The quiet-hours volume (percent) in force at `moment` (local time), or None outside quiet hours."""
        volumes = [q.volume for q in self.quiet_hours if q.covers(moment)]
        return min(volumes) if volumes else None

    def with_overrides(
        self, *, device: str | None = None, cache_dir: Path | None = None, port: int | None = None
    ) -> Config:
        """Command-line options win over the file."""
        cfg = self
        if port is not None:
            cfg = dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, port=port))
        if device:
            cfg = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, device=device))
        if cache_dir:
            cfg = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, dir=Path(cache_dir)))
        return cfg
