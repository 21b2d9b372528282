"""The field machinery every config section uses: a field's bounds, choices or pattern live in its `metadata`
(`_bounded`, `_choice`, `_required`), and `_scalar` checks one value against them, so a section's schema is its
dataclass alone. Also how a value is named in a problem line (`_kind`, `_show`) and the "did you mean" hint.

Nothing here knows any section: the sections import this module, never the reverse.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import field
from pathlib import Path
from typing import Any


def _bounded(default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": (default, *choices)})


def _required(hint_default: Any = None, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=hint_default, metadata={"required": True, "min": lo, "max": hi})


_NONEMPTY = {"nonempty": True}
_CLOCK_TIME = {"pattern": re.compile(r"([01]\d|2[0-3]):[0-5]\d"), "pattern_help": "a time like 22:00"}  # fullmatch


#: A value that could not be read: its problem is reported, and the field keeps its default.
_INVALID = object()


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


#: Config fields made from others, never written in a file.
_DERIVED_KEYS = frozenset({"translations"})


def _suggest(key: str, known: dict) -> str:
    known = {name: None for name in known if name not in _DERIVED_KEYS}
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"


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
