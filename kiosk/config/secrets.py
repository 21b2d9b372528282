"""Keys, tokens and passwords: read from their own files (one line, private), never shown in a log or repr."""

from __future__ import annotations

import os
import stat
import typing
from pathlib import Path

from kiosk.config.fields import _show
from kiosk.config.speech import OpenAIConfig
from kiosk.errors import ConfigError

MAX_SECRET_BYTES = 4096  # a key or token is one short line; more is not one, and is not read into memory


class Secret(str):
    """A string that never shows itself in a repr, log line or traceback."""

    def __repr__(self) -> str:
        return "'********'"


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


def resolve_api_key(cfg: OpenAIConfig, environ: typing.Mapping[str, str] = os.environ) -> Secret | None:
    """The API key from OPENAI_API_KEY, else from openai.api_key_file; None when neither is set."""
    key = environ.get("OPENAI_API_KEY", "").strip()
    if key:
        return Secret(key)
    if cfg.api_key_file is None or not cfg.api_key_file.exists():
        return None  # no key yet (the staff page can set one): lines not cached use the local voice
    return read_secret_file(cfg.api_key_file, "openai.api_key_file")


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
