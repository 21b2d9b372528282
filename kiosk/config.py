"""Configuration: YAML (safe_load) validated into frozen dataclasses before any hardware is touched.

Every problem is collected and reported at once as "section.key: message"; unknown keys get a "did you mean"
suggestion. Each dataclass field carries its own bounds in `metadata`, so the schema lives in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kiosk.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/kiosk/kiosk.yaml")
MAX_TEXT_CHARS = 20_000
PHRASE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": (default, *choices)})


def _required(hint_default: Any = None, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=hint_default, metadata={"required": True, "min": lo, "max": hi})


_CLOCK_TIME = {"pattern": re.compile(r"^([01]\d|2[0-3]):[0-5]\d$"), "pattern_help": "a time as HH:MM"}


@dataclass(frozen=True)
class QuietHours:
    """A daily period when button presses are silent (volume 0) or quieter."""

    start: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    end: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    volume: int = _bounded(0, 0, 100)  # percent of the normal volume; 0: presses are silent

    def covers(self, hhmm: str) -> bool:
        if self.start <= self.end:
            return self.start <= hhmm < self.end
        return hhmm >= self.start or hhmm < self.end  # across midnight


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
    phrase: str | None = None
    action: str = _choice("speak", "stop")
    pull_up: bool = True
    bounce_ms: int = _bounded(50, 0, 1000)
    cooldown_ms: int = _bounded(1500, 0, 600_000)
    when_busy: str = _choice("restart", "ignore", "queue")
    led: int | None = _bounded(None, 0, 53)


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


@dataclass(frozen=True)
class OpenAIConfig:
    """The OpenAI (or OpenAI-compatible) speech engine."""

    base_url: str | None = None
    api_key_file: Path | None = None
    model: str = "gpt-4o-mini-tts"
    voice: str = "coral"
    instructions: str = ""
    speed: float = _bounded(1.0, 0.25, 4.0)
    connect_timeout_s: float = _bounded(3.0, 0.1, 60)
    first_byte_timeout_s: float = _bounded(6.0, 0.1, 120)
    chunk_gap_timeout_s: float = _bounded(3.0, 0.1, 120)
    request_timeout_s: float = _bounded(180.0, 1, 3600)
    retries: int = _bounded(2, 0, 10)


@dataclass(frozen=True)
class PiperConfig:
    """The local Piper voice (optional extra `kiosk[piper]`)."""

    voice: str = "joe-us"
    speed: float = _bounded(1.0, 0.25, 4.0)


@dataclass(frozen=True)
class CacheConfig:
    """The on-disk phrase cache."""

    dir: Path = Path("/var/cache/kiosk")
    max_mb: float = _bounded(500.0, 1, 1_000_000)


@dataclass(frozen=True)
class Config:
    audio: AudioConfig = AudioConfig()
    speech: SpeechConfig = SpeechConfig()
    openai: OpenAIConfig = OpenAIConfig()
    piper: PiperConfig = PiperConfig()
    cache: CacheConfig = CacheConfig()
    api: ApiConfig = ApiConfig()
    staff: StaffConfig = StaffConfig()
    buttons: tuple[ButtonConfig, ...] = ()
    quiet_hours: tuple[QuietHours, ...] = ()
    phrases: dict[str, str] = field(default_factory=dict)

    def quiet_volume(self, hhmm: str) -> int | None:
        """The quiet-hours volume (percent) in force at `hhmm`, or None outside quiet hours."""
        volumes = [q.volume for q in self.quiet_hours if q.covers(hhmm)]
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
    problem. `staff_settings` stands in for the settings file (to check a change before saving it)."""
    path = Path(path)
    data = _read_yaml_mapping(path)
    settings_path = staff_settings_path(data)
    problems: list[str] = []
    if staff_settings is None and settings_path.exists():
        staff_settings = _read_yaml_mapping(settings_path)
    if staff_settings:
        data = overlay_staff_settings(data, staff_settings, str(settings_path), problems)
    return validate(data, problems)


def staff_settings_path(operator_data: dict) -> Path:
    staff = operator_data.get("staff") if isinstance(operator_data.get("staff"), dict) else {}
    return Path(staff.get("settings_file") or StaffConfig.settings_file)


def read_staff_settings(path: Path) -> dict:
    """The staff page's settings file as a mapping ({} when there is none yet)."""
    return _read_yaml_mapping(path) if path.exists() else {}


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate config text (no staff settings laid over it)."""
    return validate(_yaml_mapping(text, source))


def validate(data: dict, problems: list[str] | None = None) -> Config:
    problems = list(problems or [])
    cfg = _build(Config, data, "", problems)
    if not problems:
        problems += _cross_check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def _read_yaml_mapping(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror or exc})"]) from exc
    return _yaml_mapping(text, str(path))


class _SafeLoaderWithoutDuplicates(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice is an error: PyYAML would silently keep the last one."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_SafeLoaderWithoutDuplicates.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def _yaml_mapping(text: str, source: str) -> dict:
    try:
        data = yaml.load(text, Loader=_SafeLoaderWithoutDuplicates)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections, not {_kind(data)}"])
    return data


#: What the staff page may set, laid over the operator's file: section → keys (None: the whole section).
STAFF_SETTABLE: dict[str, set[str] | None] = {
    "phrases": None,
    "quiet_hours": None,
    "speech": {"engine"},
    "openai": {"model", "voice", "instructions", "speed"},
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
            problems.append(f"{source}: {section}: cannot be set from the staff page")
        elif section == "button_phrases":
            merged["buttons"] = _assign_buttons(base.get("buttons"), value, source, problems)
        elif keys is None:
            merged[section] = value
        elif isinstance(value, dict):
            for key in set(value) - keys:
                problems.append(f"{source}: {section}.{key}: cannot be set from the staff page")
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
    assignment = {str(pin): phrase for pin, phrase in assignment.items()}
    pins = {str(b.get("pin")) for b in buttons if isinstance(b, dict)}
    for pin in sorted(set(assignment) - pins):
        problems.append(f"{source}: button_phrases.{pin}: no button on GPIO {pin} in the config")
    return [
        {**b, "phrase": assignment[str(b.get("pin"))]}
        if isinstance(b, dict) and str(b.get("pin")) in assignment and b.get("action") != "stop"
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
            problems.append(f"{prefix}{key}: unknown key{_suggest(str(key), fields)}")
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
    if typing.get_origin(hint) is tuple:
        return _items(typing.get_args(hint)[0], raw, where, problems)
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    if raw is None:
        if optional:
            return None
        problems.append(f"{where}: must be set")
        return _INVALID
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    return _scalar(base, raw, where, meta, problems)


def _scalar(base: type, raw: Any, where: str, meta: Any, problems: list[str]) -> Any:
    if base is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if meta.get("pattern") is _CLOCK_TIME["pattern"] and isinstance(raw, int) and 0 <= raw < 24 * 60:
        raw = f"{raw // 60:02d}:{raw % 60:02d}"  # YAML 1.1 reads an unquoted 22:00 as 1320 (base 60)
    if base is Path:
        if not isinstance(raw, str) or not raw.strip():
            problems.append(f"{where}: must be a path, not {_kind(raw)}")
            return _INVALID
        return Path(raw).expanduser()
    if not isinstance(raw, base) or (base is not bool and isinstance(raw, bool)):
        problems.append(f"{where}: must be {_TYPE_NAMES[base]}, not {_kind(raw)}")
        return _INVALID
    pattern = meta.get("pattern")
    if pattern and not pattern.match(raw):
        problems.append(f"{where}: {raw!r} is not {meta['pattern_help']}")
        return _INVALID
    choices = meta.get("choices")
    if choices and raw not in choices:
        problems.append(f"{where}: {raw!r} is not one of {', '.join(choices)}")
        return _INVALID
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and raw < lo) or (hi is not None and raw > hi):
        problems.append(f"{where}: {raw} is out of range ({lo} to {hi})")
        return _INVALID
    return raw


def _items(item_cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list, not {_kind(raw)}")
        return _INVALID
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"{where}[{i}]: must be a mapping of keys, not {_kind(item)}")
            continue
        items.append(_build(item_cls, item, f"{where}[{i}].", problems))
    return tuple(items)


def _cross_check(cfg: Config) -> list[str]:
    """Rules that span keys: buttons name existing lines, no pin is used twice, an open API has a token."""
    problems = []
    if not _is_loopback(cfg.api.bind) and cfg.api.token_file is None:
        problems.append(f"api.token_file: required when api.bind ({cfg.api.bind}) is not a loopback address")
    used: dict[int, str] = {}
    for i, b in enumerate(cfg.buttons):
        where = f"buttons[{i}]"
        if b.action == "speak" and b.phrase is None:
            problems.append(f"{where}.phrase: must be set for a speak button (or set action: stop)")
        elif b.phrase is not None and b.phrase not in cfg.phrases:
            problems.append(f"{where}.phrase: no line '{b.phrase}' in phrases{_suggest(b.phrase, cfg.phrases)}")
        for role, pin in (("pin", b.pin), ("led", b.led)):
            if pin is None:
                continue
            if pin in used:
                problems.append(f"{where}.{role}: GPIO {pin} is already used by {used[pin]}")
            used[pin] = f"{where}.{role}"
    return problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: Path, where: str) -> Secret:
    """A key or token from a file (stripped); ConfigError naming `where` if unreadable or empty."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path} ({exc.strerror or exc})"]) from exc
    if not value:
        raise ConfigError([f"{where}: {path} is empty"])
    return Secret(value)


def _phrases(raw: Any, where: str, problems: list[str]) -> Any:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping of id: text, not {_kind(raw)}")
        return _INVALID
    phrases = {}
    for pid, text in raw.items():
        problem = phrase_problem(str(pid), text)
        if problem:
            problems.append(f"{where}.{pid}: {problem}")
        else:
            phrases[str(pid)] = text.strip()
    return phrases


def phrase_problem(pid: str, text: Any) -> str | None:
    """Why an exhibit line is unacceptable, or None; shared by the config file and the staff page."""
    if not PHRASE_ID.match(pid):
        return "id must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
    if not isinstance(text, str):
        return f"text must be a string, not {_kind(text)}"
    return text_problem(text)


def text_problem(text: str) -> str | None:
    """Why a text cannot be spoken, or None."""
    if not text.strip():
        return "text is empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
    return None


_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "a mapping", list: "a list", str: "a string", int: "a whole number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _suggest(key: str, known: dict) -> str:
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
