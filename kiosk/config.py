"""Configuration: YAML (safe_load) validated into frozen dataclasses before any hardware is touched.

Every problem is collected and reported at once as "section.key: message"; unknown keys get a "did you mean"
suggestion. Each dataclass field carries its own bounds in `metadata`, so the schema lives in one place.

Nothing in a file gets past as a traceback: the file's size, the YAML's nesting and alias expansion are bounded,
and a value that would only fail later (NaN, a lone surrogate, a NUL in a path) is refused here, in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import math
import os
import re
import socket
import stat
import sys
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kiosk.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_CONFIG_PATH = Path("/etc/kiosk/kiosk.yaml")
MAX_TEXT_CHARS = 20_000
# The service re-reads its config on SIGHUP: a 30 MB file once blocked it for 20 s, so size and shape are bounded.
MAX_CONFIG_BYTES = 1_000_000
MAX_YAML_DEPTH = 32  # the composer recurses: 10 000 '[' would end in RecursionError
MAX_YAML_NODES = 100_000  # counted with aliases expanded: "billion laughs" is a few lines of anchors
MAX_SECRET_BYTES = 4096  # a key or token is one short line; more is not one, and is not read into memory
#: Staff settings that cannot be used are renamed `<file>.corrupt-<time>`: kept for a human, out of the way of saves.
SET_ASIDE = ".corrupt-"
PHRASE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # used with fullmatch: `$` would let "welcome\n" through


def _bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": (default, *choices)})


def _required(hint_default: Any = None, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=hint_default, metadata={"required": True, "min": lo, "max": hi})


_HOSTNAME = {
    "pattern": re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"),
    "pattern_help": "a host name (lowercase letters, digits, '-' and '.')",
}
_NONEMPTY = {"nonempty": True}
_CLOCK_TIME = {"pattern": re.compile(r"([01]\d|2[0-3]):[0-5]\d"), "pattern_help": "a time like 22:00"}  # fullmatch


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class QuietHours:
    """A period when button presses are silent (volume 0) or quieter, daily or on some weekdays.

    A period whose end is before its start runs overnight and belongs to the day it starts on: `fri 22:00-06:00`
    covers Friday night until Saturday 06:00.
    """

    start: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    end: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    volume: int = _bounded(0, 0, 100)  # percent of the normal volume; 0: presses are silent
    days: tuple[str, ...] = field(default=(), metadata={"choices": WEEKDAYS})  # empty: every day

    @property
    def overnight(self) -> bool:
        return self.end < self.start

    def covers(self, moment: datetime) -> bool:
        hhmm, today = moment.strftime("%H:%M"), WEEKDAYS[moment.weekday()]
        if not self.overnight:
            return self._on(today) and self.start <= hhmm < self.end
        yesterday = WEEKDAYS[(moment.weekday() - 1) % 7]
        return (self._on(today) and hhmm >= self.start) or (self._on(yesterday) and hhmm < self.end)

    def _on(self, day: str) -> bool:
        return not self.days or day in self.days


@dataclass(frozen=True)
class OpeningHours:
    """When the museum is open on some weekdays (all days when `days` is left out)."""

    open: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    close: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    days: tuple[str, ...] = field(default=(), metadata={"choices": WEEKDAYS})

    def covers(self, moment: datetime) -> bool:
        day = WEEKDAYS[moment.weekday()]
        return (not self.days or day in self.days) and self.open <= moment.strftime("%H:%M") < self.close


@dataclass(frozen=True)
class Announcement:
    """A line spoken at a time of day, daily or on some weekdays ("we close in 15 minutes")."""

    time: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    phrase: str = field(default="", metadata={"required": True, **_NONEMPTY})
    days: tuple[str, ...] = field(default=(), metadata={"choices": WEEKDAYS})

    def on(self, day: datetime) -> bool:
        return not self.days or WEEKDAYS[day.weekday()] in self.days


@dataclass(frozen=True)
class AttractConfig:
    """Inviting visitors: after this many idle minutes while open (and outside quiet hours), say one of `phrases`,
    each in turn."""

    idle_minutes: int = _bounded(0, 0, 1440)  # 0: off
    phrases: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaffConfig:
    """The staff web page: lines, buttons, voice, volume, status."""

    enabled: bool = True
    bind: str = "0.0.0.0"
    port: int = _bounded(8000, 0, 65535)  # 0: any free port
    password_file: Path = Path("/var/lib/kiosk/staff.passwd")
    settings_file: Path = Path("/var/lib/kiosk/staff-settings.yaml")
    session_hours: float = _bounded(8.0, 0.05, 720)


@dataclass(frozen=True)
class SpeechConfig:
    """Which engine speaks lines that are not cached yet, what stands in when it fails or is slow, and how many
    lines may wait their turn."""

    engine: str = _choice("auto", "openai", "piper")
    fallback: str = _choice("auto", "piper", "none")
    failover_ms: int = _bounded(2500, 100, 60_000)
    queue_limit: int = _bounded(5, 1, 100)


@dataclass(frozen=True)
class ButtonConfig:
    """A push button on a GPIO pin (BCM numbering), wired between the pin and ground unless pull_up is false."""

    pin: int | None = _required(None, 0, 53)
    name: str = ""  # what staff call it, e.g. "Entrance case" (shown on the staff page)
    phrase: str | None = None
    action: str = _choice("speak", "stop", "language")  # language: cycles through the offered languages
    language: str | None = None  # a speak button fixed to one language; otherwise the visitor's choice
    reset_s: int = _bounded(120, 5, 3600)  # a language button: back to the default after this long unused
    pull_up: bool = True
    bounce_ms: int = _bounded(50, 0, 1000)
    cooldown_ms: int = _bounded(1500, 0, 600_000)
    when_busy: str = _choice("restart", "ignore", "queue")
    led: int | None = _bounded(None, 0, 53)


#: A language code: ISO 639-1 or -2 letters, optionally a region or script ("pt-br", "zh-hant"), lowercase.
_LANGUAGE_CODE = {
    "pattern": re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})?"),
    "pattern_help": "a language code such as en, de or pt-br",
}
#: Each language's name in itself: what the language button says and staff see.
LANGUAGE_NAMES = {
    "ar": "العربية", "cs": "Čeština", "da": "Dansk", "de": "Deutsch", "el": "Ελληνικά", "en": "English",
    "es": "Español", "fi": "Suomi", "fr": "Français", "he": "עברית", "hu": "Magyar", "it": "Italiano",
    "ja": "日本語", "ko": "한국어", "nb": "Norsk", "nl": "Nederlands", "pl": "Polski", "pt": "Português",
    "ru": "Русский", "sv": "Svenska", "tr": "Türkçe", "uk": "Українська", "zh": "中文",
}  # fmt: skip


@dataclass(frozen=True)
class LanguageConfig:
    """A language the exhibit offers (`languages:`, the first is the default), with its own voices if wanted."""

    code: str = field(default="", metadata={"required": True, **_LANGUAGE_CODE})
    name: str = ""  # said by the language button and shown to staff; default: the language's own name
    voice: str | None = None  # the OpenAI voice for this language (default: openai.voice)
    instructions: str | None = None  # OpenAI instructions for this language (default: openai.instructions)
    piper_voice: str | None = None  # a local Piper voice for it (.onnx path); without one it needs the network

    @property
    def spoken_name(self) -> str:
        return self.name or LANGUAGE_NAMES.get(self.code) or LANGUAGE_NAMES.get(self.code[:2]) or self.code


@dataclass(frozen=True)
class ApiConfig:
    """The local HTTP trigger and status API."""

    bind: str = "127.0.0.1"
    port: int = _bounded(8080, 0, 65535)  # 0: any free port
    token_file: Path | None = None
    allow_text: bool = False
    when_busy: str = _choice("queue", "restart", "ignore")
    rate_limit_per_min: int = _bounded(30, 1, 100_000)


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


@dataclass(frozen=True)
class CacheConfig:
    """The on-disk phrase cache."""

    dir: Path = Path("/var/cache/kiosk")
    max_mb: float = _bounded(500.0, 1, 1_000_000)


@dataclass(frozen=True)
class HistoryConfig:
    """Every press and trigger with its outcome, and the events staff see, kept on the device (SQLite)."""

    file: Path = Path("/var/lib/kiosk/history.sqlite3")
    keep_days: int = _bounded(400, 1, 3650)
    write_every_s: float = _bounded(60.0, 1, 3600)  # presses are written together: fewer writes to the SD card


#: One MQTT topic level naming a speaker or a group: lowercase, so that a topic is spelled one way.
_TOPIC_LEVEL = {
    "pattern": re.compile(r"[a-z0-9][a-z0-9_-]{0,63}"),
    "pattern_help": "1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit",
}
_TOPIC_PREFIX = {
    "pattern": re.compile(r"(?=.{1,100}$)[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*"),
    "pattern_help": "MQTT topic levels of letters, digits, '-' and '_', separated by '/' (no wildcards)",
}


@dataclass(frozen=True)
class MqttConfig:
    """Fleet control through the museum's MQTT broker (off while `host` is empty); see kiosk.fleet."""

    host: str | None = None  # empty: off
    port: int = _bounded(1883, 1, 65535)
    prefix: str = field(default="kiosk", metadata=_TOPIC_PREFIX)
    device_id: str | None = None  # empty: this machine's host name, lowercased
    username: str | None = None
    password_file: Path | None = None  # mode 0600: a file others can read is refused
    tls_ca_file: Path | None = None  # set: TLS, the broker's certificate checked against this CA
    groups: tuple[str, ...] = field(default=(), metadata=_TOPIC_LEVEL)
    discovery: bool = True  # Home Assistant MQTT discovery
    discovery_prefix: str = field(default="homeassistant", metadata=_TOPIC_PREFIX)
    keepalive_s: int = _bounded(30, 5, 3600)  # a speaker gone silent is reported offline after about 1.5 times this

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.host.strip())

    def device(self) -> str:
        """This speaker's name in topics: `device_id`, else the host name lowercased (made a valid topic level)."""
        return self.device_id or default_device_id()


def default_device_id(hostname: str | None = None) -> str:
    """The host name as one topic level: lowercase, any other character than a-z 0-9 - _ made '-'."""
    name = re.sub(r"[^a-z0-9_-]", "-", (hostname or socket.gethostname()).lower()).strip("-_")[:64]
    return name or "kiosk"


@dataclass(frozen=True)
class OscConfig:
    """OSC show control over UDP: /kiosk/play <phrase>, /kiosk/stop, /kiosk/volume <0-100>. Off by default."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = _bounded(9000, 0, 65535)  # 0: any free port
    allow_from: tuple[str, ...] = ()  # addresses of show controllers; empty: any sender that can reach `bind`


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
    #: Names this speaker is reached by besides its addresses, `localhost` and its host name (and `<name>.local`):
    #: the API and the staff page refuse any other Host, so a foreign site cannot reach them by DNS rebinding.
    hostnames: tuple[str, ...] = field(default=(), metadata=_HOSTNAME)
    languages: tuple[LanguageConfig, ...] = ()  # empty: one language, unnamed
    phrases: dict[str, str] = field(default_factory=dict)  # id → the line in the default language
    #: id → {language: text} in the other languages (given as maps under `phrases:`; see _split_translations).
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


def load_config(path: Path | str, staff_settings: dict | None = None) -> Config:
    """Read and validate a config file with the staff page's settings laid over it; ConfigError lists every
    problem. `staff_settings` stands in for the settings file (to check a change before saving it).

    Only the operator's file may stop the speaker: a settings file that cannot be read, or does not fit the
    operator's file, is set aside (see `set_aside_staff_settings`) and the operator's file is used alone."""
    path = Path(path)
    data = _read_yaml_mapping(path)
    settings_path = staff_settings_path(data)
    if staff_settings is not None:
        return _with_staff_settings(data, staff_settings, settings_path)
    saved = read_staff_settings(settings_path)
    try:
        return _with_staff_settings(data, saved, settings_path)
    except ConfigError as exc:
        operator_only = _valid_or_none(data) if saved else None
        if operator_only is None:  # the operator's own file has problems: they are reported with the rest
            raise
        set_aside_staff_settings(settings_path, f"{len(exc.problems)} problem(s), the first: {exc.problems[0]}")
        return operator_only


def _with_staff_settings(data: dict, staff_settings: dict, settings_path: Path) -> Config:
    problems: list[str] = []
    if staff_settings:
        data = overlay_staff_settings(data, staff_settings, _show(settings_path, 1000), problems)
    return validate(data, problems)


def _valid_or_none(data: dict) -> Config | None:
    try:
        return validate(data)
    except ConfigError:
        return None


def staff_settings_path(operator_data: dict) -> Path:
    """Where the staff settings are kept: the operator's staff.settings_file when it is a usable path (a bad one
    is reported by validation), else the default."""
    staff = operator_data.get("staff") if isinstance(operator_data.get("staff"), dict) else {}
    raw = staff.get("settings_file")
    path = _INVALID if raw is None else _scalar(Path, raw, "", {}, [])
    return StaffConfig.settings_file if path is _INVALID else path


def read_staff_settings(path: Path) -> dict:
    """The staff page's settings file as a mapping ({} when there is none yet). A file that cannot be read as
    settings (damaged, not YAML, too large or too deep, unreadable) is set aside and {} returned: the speaker goes
    on without it, and the next save starts a new file rather than writing over it."""
    try:
        return _read_yaml_mapping(path, missing_ok=True)
    except ConfigError as exc:
        set_aside_staff_settings(path, exc.problems[0])
        return {}


def set_aside_staff_settings(path: Path, reason: str) -> Path | None:
    """Rename staff settings that cannot be used to `<file>.corrupt-<time>` (kept whole for a human to recover);
    the new name, or None when `path` is no regular file (a directory is the operator's to fix: never moved) or
    cannot be renamed. Logged either way."""
    shown = _show(path, 1000)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            log.error("staff settings %s cannot be used (%s); it is not a file, and is left as it is", shown, reason)
            return None
        aside = _aside_name(path)
        os.rename(path, aside)
    except (OSError, ValueError) as exc:
        log.error("staff settings %s cannot be used (%s) nor set aside (%s)", shown, reason, exc)
        return None
    log.error("staff settings %s cannot be used (%s); kept as %s, the config file is used alone", shown, reason, aside)
    return aside


def _aside_name(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}{SET_ASIDE}{stamp}"), 1
    while aside.exists():  # one set aside earlier in the same second is never written over
        n += 1
        aside = path.with_name(f"{path.name}{SET_ASIDE}{stamp}-{n}")
    return aside


def staff_settings_problem(path: Path) -> str | None:
    """For the status, in plain words: staff settings set aside next to `path` (the newest named) and not yet dealt
    with, or a settings path that is no file; None when there is nothing to say."""
    try:
        if path.exists() and not path.is_file():
            return f"The staff's settings file {_show(path, 200)} is not a file: staff changes cannot be saved"
        kept = sorted(name for name in os.listdir(path.parent) if name.startswith(f"{path.name}{SET_ASIDE}"))
    except (OSError, ValueError):
        return None
    if not kept:
        return None
    return (
        f"The staff's saved settings could not be used, so the speaker runs on its config file alone; they were "
        f"kept as {_show(path.parent / kept[-1], 200)} for someone to recover (remove that file once done)"
    )


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate config text (no staff settings laid over it)."""
    return validate(_yaml_mapping(text, source))


def validate(data: dict, problems: list[str] | None = None) -> Config:
    problems = list(problems or [])
    if not isinstance(data, dict):
        raise ConfigError([*problems, f"the top level must be a mapping of sections, not {_kind(data)}"])
    cfg = _build(Config, _split_translations(data, problems), "", problems)
    if not problems:
        problems += _cross_check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _read_yaml_mapping(path: Path, missing_ok: bool = False) -> dict:
    """A YAML file's top-level mapping. A file over MAX_CONFIG_BYTES is refused before the parser sees it (and
    read no further than the limit: it may be a pipe or still growing)."""
    source = _show(path, 1000)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_CONFIG_BYTES + 1) if size <= MAX_CONFIG_BYTES else b""
    except OSError as exc:
        if missing_ok and isinstance(exc, FileNotFoundError | NotADirectoryError):
            return {}
        raise ConfigError([f"{source}: cannot read config file ({exc.strerror or exc})"]) from exc
    except ValueError as exc:  # a NUL or a lone surrogate in the path
        raise ConfigError([f"{source}: cannot read config file ({exc})"]) from exc
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: config file is too large ({size} bytes; the limit is {MAX_CONFIG_BYTES})"])
    return yaml_mapping_of(data, source)


def yaml_mapping_of(data: bytes, source: str) -> dict:
    """The top-level mapping of YAML bytes (a file, or an upload on the staff page), with every bound applied."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: config file is too large (over {MAX_CONFIG_BYTES} bytes)"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{source}: not valid UTF-8 at byte {exc.start} (line {line})"]) from exc
    return _yaml_mapping(text, source)


_TOO_DEEP = f"nested deeper than {MAX_YAML_DEPTH} levels"
_TOO_MANY = f"too many aliases or nodes (over {MAX_YAML_NODES} with aliases expanded)"


class _SafeLoaderWithoutDuplicates(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice is an error (PyYAML would silently keep the last one), that
    composing stops at MAX_YAML_DEPTH levels or MAX_YAML_NODES nodes, and that a value Python cannot make (a
    5,000-digit number, 30 February) is a YAML error at its line rather than a bare ValueError."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH or self._nodes > MAX_YAML_NODES:
                problem = _TOO_DEEP if self._depth > MAX_YAML_DEPTH else _TOO_MANY
                raise yaml.composer.ComposerError(None, None, problem, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            raise yaml.constructor.ConstructorError(None, None, _unmakeable(node, exc), node.start_mark) from exc


def _unmakeable(node: yaml.Node, exc: Exception) -> str:
    # Python's limit on reading whole numbers from text; its hint (sys.set_int_max_str_digits) is not for staff.
    if "Exceeds the limit" in str(exc):
        return f"a number with more than {sys.get_int_max_str_digits()} digits"
    kind = node.tag.rsplit(":", 1)[-1]
    return f"{_show(node.value) if isinstance(node, yaml.ScalarNode) else 'this'} is not a valid {kind} ({exc})"


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # `? [a]` or `? {a: 1}`: no mapping can hold a list or mapping as a key
            raise yaml.constructor.ConstructorError(
                None, None, f"{_kind(key)} cannot be a key", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_show(repr(key))}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_SafeLoaderWithoutDuplicates.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _yaml_mapping(text: str, source: str) -> dict:
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML{_yaml_where(exc, text)}: {_yaml_problem(exc)}"]) from exc
    except RecursionError as exc:  # the bounds above should make this unreachable; still one line if not
        raise ConfigError([f"{source}: not valid YAML: {_TOO_DEEP}"]) from exc
    except Exception as exc:  # a PyYAML corner not met yet: one line, never a traceback
        raise ConfigError([f"{source}: cannot read YAML: {_show(exc, 200)}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections, not {_kind(data)}"])
    return data


def _load_yaml(text: str) -> Any:
    """yaml.load with a SafeLoader (no arbitrary objects), the composed nodes checked before any is constructed."""
    loader = _SafeLoaderWithoutDuplicates(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_node_graph(root: yaml.Node) -> None:
    """Refuse a document that aliases make too deep or too big ("billion laughs": each anchor repeating the one
    before), or that contains itself, before it is constructed. Walks each distinct node once, without recursion."""
    size: dict[int, int] = {}  # id(node) → nodes with aliases expanded, capped just over the limit
    depth: dict[int, int] = {}
    walking: set[int] = set()  # the nodes on the path from the root to the current one
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _child_nodes(node)
        if children_done:
            walking.discard(id(node))
            size[id(node)] = min(MAX_YAML_NODES + 1, 1 + sum(size[id(c)] for c in children))
            depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[id(node)] > MAX_YAML_NODES or depth[id(node)] > MAX_YAML_DEPTH:
                problem = _TOO_MANY if size[id(node)] > MAX_YAML_NODES else _TOO_DEEP
                raise yaml.composer.ComposerError(None, None, problem, node.start_mark)
        elif id(node) in walking:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it", node.start_mark)
        elif id(node) not in size:
            walking.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)


def _child_nodes(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _yaml_where(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (a NUL, a lone surrogate)
        before = text[: exc.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        return f" at line {line}, column {column}"
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character #x{exc.character:04x} is not allowed" if isinstance(exc.character, int) else exc.reason
    return _show(getattr(exc, "problem", None) or getattr(exc, "context", None) or exc, 200)


#: What the staff page may set, laid over the operator's file: section → keys (None: the whole section).
STAFF_SETTABLE: dict[str, set[str] | None] = {
    "phrases": None,
    "quiet_hours": None,
    "schedule": None,
    "speech": {"engine"},
    "openai": {"model", "voice", "instructions", "speed"},
    "piper": {"voice"},
    "audio": {"volume"},
    "button_phrases": None,
}


def overlay_staff_settings(base: dict, staff: dict, source: str, problems: list[str]) -> dict:
    """The operator's config with the staff settings laid over it (the operator's file itself is never written).

    `button_phrases` ({pin: phrase id}) re-assigns the lines of buttons the operator's file defines.
    """
    merged = dict(base)
    for section, value in staff.items():
        keys = STAFF_SETTABLE.get(section, set())
        if section not in STAFF_SETTABLE:
            problems.append(f"{source}: {_show(section)}: cannot be set from the staff page")
        elif section == "button_phrases":
            merged["buttons"] = _assign_buttons(base.get("buttons"), value, source, problems)
        elif keys is None:
            merged[section] = value
        elif isinstance(value, dict):
            for key in set(value) - keys:
                problems.append(f"{source}: {section}.{_show(key)}: cannot be set from the staff page")
            section_base = base.get(section) if isinstance(base.get(section), dict) else {}
            merged[section] = {**section_base, **{k: v for k, v in value.items() if k in keys}}
        else:
            problems.append(f"{source}: {section}: must be a mapping of keys, not {_kind(value)}")
    return merged


def _assign_buttons(buttons: Any, assignment: Any, source: str, problems: list[str]) -> Any:
    if not isinstance(assignment, dict) or not isinstance(buttons, list):
        if assignment:
            problems.append(f"{source}: button_phrases: needs buttons in the config and a mapping of pin: line")
        return buttons
    assignment = {_str(pin): phrase for pin, phrase in assignment.items()}
    pins = {_str(b.get("pin")) for b in buttons if isinstance(b, dict)}
    for pin in sorted(set(assignment) - pins):
        problems.append(f"{source}: button_phrases.{_show(pin)}: no button on GPIO {_show(pin)} in the config")
    return [
        {**b, "phrase": assignment[_str(b.get("pin"))]}
        if isinstance(b, dict) and _str(b.get("pin")) in assignment and b.get("action") != "stop"
        else b
        for b in buttons
    ]


def _build(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in data.items():  # in file order, so problems read top to bottom
        if key in fields:
            values[key] = _value(hints[key], raw, f"{prefix}{key}", fields[key].metadata, problems)
        else:
            problems.append(f"{prefix}{_show(key)}: unknown key{_suggest(_show(key), fields)}")
    for name, f in fields.items():
        if f.metadata.get("required") and name not in data:
            problems.append(f"{prefix}{name}: must be set")
    return cls(**{k: v for k, v in values.items() if v is not _INVALID})


_INVALID = object()


def _value(hint: Any, raw: Any, where: str, meta: Any, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(hint):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a mapping of keys, not {_kind(raw)}")
            return _INVALID
        return _build(hint, raw, f"{where}.", problems)
    if hint == dict[str, str]:
        return _phrases(raw, where, problems)
    if hint == dict[str, dict[str, str]]:
        return raw  # checked by _split_translations
    if typing.get_origin(hint) is tuple:
        return _items(typing.get_args(hint)[0], raw, where, meta, problems)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if raw is None:
        if optional:
            return None
        problems.append(f"{where}: must be set")
        return _INVALID
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    return _scalar(base, raw, where, meta, problems)


def _scalar(base: type, raw: Any, where: str, meta: Any, problems: list[str]) -> Any:
    if meta.get("pattern") is _CLOCK_TIME["pattern"] and type(raw) is int and 0 <= raw < 24 * 60:
        raw = f"{raw // 60:02d}:{raw % 60:02d}"  # YAML 1.1 reads an unquoted 22:00 as 1320 (base 60)
    if base is Path:
        return _path(raw, where, problems)
    accepted = (int, float) if base is float else base  # a whole number is a number too
    if not isinstance(raw, accepted) or (base is not bool and isinstance(raw, bool)):
        problems.append(f"{where}: must be {_TYPE_NAMES[base]}, not {_kind(raw)}")
        return _INVALID
    problem = _value_problem(raw, meta)
    if problem:
        problems.append(f"{where}: {problem}")
        return _INVALID
    return float(raw) if base is float else raw  # every float field is bounded: a 400-digit number is refused above


def _value_problem(raw: Any, meta: Any) -> str | None:
    if isinstance(raw, float) and not math.isfinite(raw):
        return f"must be a finite number, not {raw}"  # NaN passes every `raw < lo`; inf would stall a timer
    if isinstance(raw, str) and (problem := _string_problem(raw)):
        return problem
    if meta.get("nonempty") and isinstance(raw, str) and not raw.strip():
        return "must not be empty"
    pattern = meta.get("pattern")
    if pattern and not raw:
        return f"must be set ({meta['pattern_help']})"
    if pattern and not pattern.fullmatch(raw):
        return f"{_show(repr(raw))} is not {meta['pattern_help']}"
    choices = meta.get("choices")
    if choices and raw not in choices:
        return f"{_show(repr(raw))} is not one of {', '.join(choices)}"
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and raw < lo) or (hi is not None and raw > hi):
        return f"{_show(raw)} is out of range ({lo} to {hi})"
    return None


def _string_problem(raw: str) -> str | None:
    """Why a string value would fail later (writing it, opening it, passing it to C), or None."""
    at = unencodable_at(raw)
    if at is not None:
        return _cannot_encode(at)
    if "\0" in raw:
        return f"contains a NUL character (at position {raw.index(chr(0))})"
    return None


def _path(raw: Any, where: str, problems: list[str]) -> Any:
    problem = _string_problem(raw) if isinstance(raw, str) and raw.strip() else f"must be a path, not {_kind(raw)}"
    if problem:
        problems.append(f"{where}: {problem}")
        return _INVALID
    try:
        return Path(raw).expanduser()
    except RuntimeError:  # ~name for a user this machine does not have, or no home directory at all
        problems.append(f"{where}: cannot find the home directory for {_show(raw.split('/')[0])}")
        return _INVALID


def _items(item_cls: type, raw: Any, where: str, meta: Any, problems: list[str]) -> Any:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list, not {_kind(raw)}")
        return _INVALID
    if not dataclasses.is_dataclass(item_cls):
        values = [_scalar(item_cls, item, f"{where}[{i}]", meta, problems) for i, item in enumerate(raw)]
        return tuple(v for v in values if v is not _INVALID)
    items = []
    for i, item in enumerate(raw):
        if item_cls is LanguageConfig and isinstance(item, str):
            item = {"code": item}  # a language may be given by its code alone
        if not isinstance(item, dict):
            problems.append(f"{where}[{i}]: must be a mapping of keys, not {_kind(item)}")
            continue
        items.append(_build(item_cls, item, f"{where}[{i}].", problems))
    return tuple(items)


def _cross_check(cfg: Config) -> list[str]:
    """Rules that span keys: buttons name existing lines, no pin is used twice, an open API has a token."""
    problems = []
    if not _is_loopback(cfg.api.bind) and cfg.api.token_file is None:
        problems.append(f"api.token_file: required when api.bind ({_show(cfg.api.bind)}) is not a loopback address")
    for i, quiet in enumerate(cfg.quiet_hours):
        if quiet.start == quiet.end:
            problems.append(f"quiet_hours[{i}].end: the same as the start ({quiet.start}), so it would never apply")
    for i, hours in enumerate(cfg.opening_hours):
        if hours.close <= hours.open:
            problems.append(f"opening_hours[{i}].close: must be after the opening time ({hours.open})")
    named = [("closed_phrase", cfg.closed_phrase)] if cfg.closed_phrase else []
    named += [(f"schedule[{i}].phrase", a.phrase) for i, a in enumerate(cfg.schedule)]
    named += [(f"attract.phrases[{i}]", pid) for i, pid in enumerate(cfg.attract.phrases)]
    for where, pid in named:
        if pid not in cfg.phrases:
            problems.append(f"{where}: no line '{_show(pid)}' in phrases{_suggest(pid, cfg.phrases)}")
    if cfg.attract.idle_minutes and not cfg.attract.phrases:
        problems.append("attract.phrases: name at least one line to invite visitors with (or set idle_minutes: 0)")
    problems += _language_problems(cfg)
    used: dict[int, str] = {}
    for i, b in enumerate(cfg.buttons):
        where = f"buttons[{i}]"
        if b.action == "speak" and b.phrase is None:
            problems.append(f"{where}.phrase: must be set for a speak button (or set action: stop)")
        elif b.phrase is not None and b.phrase not in cfg.phrases:
            problems.append(f"{where}.phrase: no line '{_show(b.phrase)}' in phrases{_suggest(b.phrase, cfg.phrases)}")
        for role, pin in (("pin", b.pin), ("led", b.led)):
            if pin is None:
                continue
            if pin in used:
                problems.append(f"{where}.{role}: GPIO {pin} is already used by {used[pin]}")
            used[pin] = f"{where}.{role}"
    return problems + _fleet_problems(cfg)


def _language_problems(cfg: Config) -> list[str]:
    problems = []
    codes = [lang.code for lang in cfg.languages]
    for i, code in enumerate(codes):
        if code in codes[:i]:
            problems.append(f"languages[{i}].code: {code} is offered twice")
    for i, b in enumerate(cfg.buttons):
        where = f"buttons[{i}]"
        if b.language is not None and b.language not in codes:
            offer = ", ".join(codes) or "none: add languages:"
            problems.append(f"{where}.language: {_show(b.language)} is not an offered language ({offer})")
        if b.action == "language" and len(codes) < 2:
            problems.append(f"{where}.action: a language button needs two or more languages: in the config")
    return problems


def _fleet_problems(cfg: Config) -> list[str]:
    """MQTT and OSC: a device id that is a topic level, credentials no one else can read, addresses."""
    problems = []
    mqtt = cfg.mqtt
    if mqtt.device_id and not _TOPIC_LEVEL["pattern"].fullmatch(mqtt.device_id):
        problems.append(f"mqtt.device_id: {_show(repr(mqtt.device_id))} is not {_TOPIC_LEVEL['pattern_help']}")
    elif mqtt.device() in ("all", "group"):
        problems.append(f"mqtt.device_id: '{mqtt.device()}' is a reserved topic level; choose another name")
    if mqtt.host and any(c.isspace() or c in "/#+" for c in mqtt.host.strip()):
        problems.append(f"mqtt.host: {_show(repr(mqtt.host))} is not a host name or address")
    if mqtt.password_file is not None and not mqtt.username:
        problems.append("mqtt.username: must be set when mqtt.password_file is")
    if mqtt.enabled and mqtt.password_file is not None:
        problem = _private_file_problem(mqtt.password_file)
        if problem:
            problems.append(f"mqtt.password_file: {problem}")
    if mqtt.enabled and mqtt.tls_ca_file is not None and not os.access(mqtt.tls_ca_file, os.R_OK):
        problems.append(f"mqtt.tls_ca_file: cannot read {_show(mqtt.tls_ca_file, 200)}")
    if not _is_ip(cfg.osc.bind) and cfg.osc.bind != "localhost":
        problems.append(f"osc.bind: {_show(repr(cfg.osc.bind))} is not an IP address")
    for i, address in enumerate(cfg.osc.allow_from):
        if not _is_ip(address):
            problems.append(f"osc.allow_from[{i}]: {_show(repr(address))} is not an IP address")
    return problems


def _private_file_problem(path: Path) -> str | None:
    """Why a secret file is unusable: missing, unreadable, or readable by the group or others."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read {_show(path, 200)} ({exc.strerror or exc})"
    if mode & 0o077:
        return (
            f"{_show(path, 200)} can be read by others (mode {stat.S_IMODE(mode):04o}); "
            f"make it private: chmod 600 {_show(path, 200)}"
        )
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path, where: str) -> Secret:
    """A key or token from a file (stripped); ConfigError naming `where` for anything that is not one line of
    text: unreadable, empty, too large, not UTF-8, control characters or several lines."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(
            [f"{where}: cannot read {_show(path, 200)} ({getattr(exc, 'strerror', None) or exc})"]
        ) from exc
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError([f"{where}: {_show(path, 200)} is over {MAX_SECRET_BYTES} bytes: not a key or token"])
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{where}: {_show(path, 200)} is not text (not UTF-8 at byte {exc.start})"]) from exc
    if not value:
        raise ConfigError([f"{where}: {_show(path, 200)} is empty"])
    if not value.isprintable():  # a second line, a NUL, an escape: it would not survive an HTTP header
        raise ConfigError([f"{where}: {_show(path, 200)} must hold the key or token alone, on one line"])
    return Secret(value)


def _phrases(raw: Any, where: str, problems: list[str]) -> Any:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping of id: text, not {_kind(raw)}")
        return _INVALID
    phrases = {}
    for pid, text in raw.items():  # a key YAML reads as a number or true/false is taken as its text
        problem = phrase_problem(_str(pid), text)
        if not problem and _str(pid) in phrases:
            problem = "id is given twice (once quoted, once not)"
        if problem:
            problems.append(f"{where}.{_show(pid)}: {problem}")
        else:
            phrases[_str(pid)] = text.strip()
    return phrases


#: Config fields made from others, never written in a file.
_DERIVED_KEYS = frozenset({"translations"})


def _split_translations(data: dict, problems: list[str]) -> dict:
    """`phrases:` with maps of language → text split into the default language's texts (`phrases`) and the rest
    (`translations`); every map must hold the default language, and only offered languages."""
    if "translations" in data:
        problems.append("translations: unknown key (give a line's translations as a map under phrases:)")
        return {k: v for k, v in data.items() if k != "translations"}
    phrases = data.get("phrases")
    if not isinstance(phrases, dict) or not any(isinstance(v, dict) for v in phrases.values()):
        return data
    offered = _offered_languages(data.get("languages"))
    plain, translations = {}, {}
    for pid, texts in phrases.items():
        if not isinstance(texts, dict):
            plain[pid] = texts
            continue
        where = f"phrases.{_show(pid)}"
        if not offered:
            problems.append(f"{where}: a map of translations needs languages: (the first is the default)")
            continue
        unknown = [code for code in texts if code not in offered]
        for code in unknown:
            offer = ", ".join(offered)
            problems.append(f"{where}.{_show(code)}: not an offered language (languages: {offer})")
        if offered[0] not in texts:
            problems.append(f"{where}: needs the line in {offered[0]}, the default language")
            continue
        plain[pid] = texts[offered[0]]
        others = {}
        for code, text in texts.items():
            if code in unknown or code == offered[0]:
                continue
            problem = phrase_problem(_str(pid), text)
            if problem:
                problems.append(f"{where}.{_show(code)}: {problem}")
            else:
                others[code] = text.strip()
        translations[_str(pid)] = others
    return {**data, "phrases": plain, "translations": translations}


def _offered_languages(raw: Any) -> list[str]:
    """The language codes `languages:` offers, as far as they can be read (validation reports the rest)."""
    if not isinstance(raw, list):
        return []
    codes = [item.get("code") if isinstance(item, dict) else item for item in raw]
    return [c for c in codes if isinstance(c, str) and _LANGUAGE_CODE["pattern"].fullmatch(c)]


def phrase_problem(pid: str, text: Any) -> str | None:
    """Why an exhibit line is unacceptable, or None; shared by the config file and the staff page."""
    if not PHRASE_ID.fullmatch(pid):
        return "id must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
    if not isinstance(text, str):
        return f"text must be a string, not {_kind(text)}"
    return text_problem(text)


_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but tab, newline, carriage return


def text_problem(text: str) -> str | None:
    """Why a text cannot be spoken, or None."""
    if not text.strip():
        return "text is empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
    at = unencodable_at(text)
    if at is not None:
        return f"text {_cannot_encode(at)}"
    control = _CONTROL_CHARACTER.search(text)  # a NUL or a bell cannot be spoken; engines fail on them
    if control:
        return f"text contains a control character (U+{ord(control.group()):04X} at position {control.start()})"
    return None


def unencodable_at(text: str) -> int | None:
    """The position of the first character of `text` that UTF-8 cannot encode (a lone surrogate, as a YAML
    "\\ud800" escape or a badly decoded file name makes), or None: such text fails later, when written or sent."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _cannot_encode(at: int) -> str:
    return f"contains characters that cannot be encoded (a lone surrogate at position {at})"


_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "a mapping", list: "a list", str: "a string", int: "a whole number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _str(value: Any) -> str:
    """str(value), except for a whole number too long to convert (Python's limit is 4300 digits)."""
    try:
        return str(value)
    except ValueError:
        return f"<a number with more than {sys.get_int_max_str_digits()} digits>"


def _show(value: Any, limit: int = 80) -> str:
    """`value` for a problem line: one line, at most `limit` characters, control characters and lone surrogates
    escaped, so it can be printed, logged and sent as UTF-8."""
    text = _str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _suggest(key: str, known: dict) -> str:
    known = {name: None for name in known if name not in _DERIVED_KEYS}
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"


class Secret(str):
    """A string that never shows itself in a repr, log line or traceback."""

    def __repr__(self) -> str:
        return "'********'"


def resolve_api_key(cfg: OpenAIConfig, environ: typing.Mapping[str, str] = os.environ) -> Secret | None:
    """The API key from OPENAI_API_KEY, else from openai.api_key_file; None when neither is set."""
    key = environ.get("OPENAI_API_KEY", "").strip()
    if key:
        return Secret(key)
    if cfg.api_key_file is None or not cfg.api_key_file.exists():
        return None  # no key yet (the staff page can set one): lines not cached use the local voice
    return read_secret_file(cfg.api_key_file, "openai.api_key_file")
