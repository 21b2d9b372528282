"""Configuration: YAML (safe_load) validated into frozen dataclasses before any hardware is touched.

Every problem is collected and reported at once as "section.key: message"; unknown keys get a "did you mean"
suggestion. Each dataclass field carries its own bounds in `metadata`, so the schema lives in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
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


@dataclass(frozen=True)
class SpeechConfig:
    """Which engine speaks lines that are not cached yet."""

    engine: str = _choice("auto", "openai", "piper")


@dataclass(frozen=True)
class AudioConfig:
    """How audio reaches the speaker."""

    device: str = "default"
    preroll_ms: int = _bounded(120, 0, 2000)
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
    phrases: dict[str, str] = field(default_factory=dict)

    def with_overrides(self, *, device: str | None = None, cache_dir: Path | None = None) -> Config:
        """Command-line options win over the file."""
        cfg = self
        if device:
            cfg = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, device=device))
        if cache_dir:
            cfg = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, dir=Path(cache_dir)))
        return cfg


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror or exc})"]) from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections, not {_kind(data)}"])
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _build(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in data.items():  # in file order, so problems read top to bottom
        if key in fields:
            values[key] = _value(hints[key], raw, f"{prefix}{key}", fields[key].metadata, problems)
        else:
            problems.append(f"{prefix}{key}: unknown key{_suggest(str(key), fields)}")
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
    if base is Path:
        if not isinstance(raw, str) or not raw.strip():
            problems.append(f"{where}: must be a path, not {_kind(raw)}")
            return _INVALID
        return Path(raw).expanduser()
    if not isinstance(raw, base) or (base is not bool and isinstance(raw, bool)):
        problems.append(f"{where}: must be {_TYPE_NAMES[base]}, not {_kind(raw)}")
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
    if cfg.api_key_file is None:
        return None
    try:
        key = cfg.api_key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"openai.api_key_file: cannot read {cfg.api_key_file} ({exc.strerror or exc})"]) from exc
    if not key:
        raise ConfigError([f"openai.api_key_file: {cfg.api_key_file} is empty"])
    return Secret(key)
