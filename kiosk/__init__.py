"""Exhibit speaker: speaks museum exhibit lines through ALSA, streamed from a TTS engine or the phrase cache."""

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    # One source of truth, pyproject.toml's version, as installed: a release archive sets it there alone.
    try:
        return version("kiosk")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()
