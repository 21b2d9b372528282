"""The chime: a short sound played the moment a press is accepted for a line that is not ready offline, so the
visitor hears at once that the button worked while the voice is being made.

`audio.chime` is `none`, `soft` (built in: two soft bell tones, 0.35 s) or the path of a WAV file (mono, 16-bit).
The chime is made or read once and kept in memory.
"""

from __future__ import annotations

import array
import functools
import math
import os
import stat
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

from kiosk.errors import ConfigError
from kiosk.pcm import AudioFormat

SOFT_S = 0.35
_SOFT_TONES = ((880.0, 0.16), (1318.5, 0.08))  # A5 and E6, a fifth apart: a doorbell, not an alarm
BEEP_S = 0.15  # a volume press's tone: short enough that presses in a row each get theirs
_BEEP_TONES = ((1318.5, 0.24),)  # E6 alone
_LIMIT_TONES = ((196.0, 0.3), (207.7, 0.1))  # G3 with a rough neighbour: a "bonk", nothing changed
_MAX_WAV_S = 3.0
_RATES = (8_000, 192_000)  # the rates a chime may have, in Hz


@dataclass(frozen=True)
class Chime:
    fmt: AudioFormat
    pcm: bytes


def load_chime(setting: str, fmt: AudioFormat) -> Chime | None:
    """The chime for `audio.chime`; the built-in one at `fmt` (the voice's format, so the device need not be
    reopened between chime and speech). Raises ConfigError for a WAV file that cannot be used."""
    if setting == "none":
        return None
    if setting == "soft":
        return Chime(fmt, soft_chime(fmt.rate))
    return _read_wav(Path(setting))


def soft_chime(rate: int) -> bytes:
    """Two decaying sine tones with a 5 ms fade-in (no click), as 16-bit little-endian mono."""
    return _tones(rate, _SOFT_TONES, SOFT_S, decay=9)


@functools.lru_cache(maxsize=8)
def beep(rate: int, kind: str) -> bytes:
    """The short tone confirming a visitor's volume press: `ok`, one bell tone (the chime's upper one); `limit`, a
    low, dull "bonk" (the press changed nothing). 16-bit little-endian mono at `rate`, made once."""
    if kind == "limit":
        return _tones(rate, _LIMIT_TONES, BEEP_S, decay=20)
    return _tones(rate, _BEEP_TONES, BEEP_S, decay=20)


def _tones(rate: int, tones: tuple[tuple[float, float], ...], seconds: float, *, decay: float) -> bytes:
    """Decaying sine tones (frequency, level) with a 5 ms fade-in (no click)."""
    frames = int(rate * seconds)
    fade_in = int(rate * 0.005)
    samples = array.array("h", bytes(2 * frames))
    for n in range(frames):
        t = n / rate
        envelope = math.exp(-t * decay) * min(1.0, n / fade_in)
        value = sum(level * math.sin(2 * math.pi * freq * t) for freq, level in tones)
        samples[n] = int(32767 * envelope * value)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def _read_wav(path: Path) -> Chime:
    """The chime in a WAV file; ConfigError saying why for anything else (whatever the file holds)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a directory fails anyway; a FIFO would block the start
            raise ConfigError([f"audio.chime: {path} is not a file"])
        with wave.open(str(path), "rb") as wav:
            channels, width, rate, frames = wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()
            _check(path, channels, width, rate, frames)
            pcm = wav.readframes(frames)
    except (OSError, EOFError, RuntimeError, wave.Error) as exc:  # RuntimeError: wave, on a chunk size that lies
        raise ConfigError([f"audio.chime: cannot read {path} as a WAV file ({exc})"]) from exc
    pcm = pcm[: len(pcm) - len(pcm) % 2]  # a file cut short may end mid-sample
    if not pcm:
        raise ConfigError([f"audio.chime: {path} holds no audio"])
    return Chime(AudioFormat(rate=rate, channels=1, sample_width=2), pcm)


def _check(path: Path, channels: int, width: int, rate: int, frames: int) -> None:
    if channels != 1 or width != 2:
        found = f"{channels} channel(s), {8 * width}-bit"
        raise ConfigError([f"audio.chime: {path} must be mono 16-bit WAV, not {found}"])
    if not _RATES[0] <= rate <= _RATES[1]:  # the header's word alone: 0 Hz would divide by zero, 4 GHz no device plays
        raise ConfigError([f"audio.chime: {path} is at {rate} Hz; a chime must be {_RATES[0]} to {_RATES[1]} Hz"])
    if frames > rate * _MAX_WAV_S:
        seconds = f"{frames / rate:.1f} s"
        raise ConfigError([f"audio.chime: {path} is {seconds}; a chime must be at most {_MAX_WAV_S:g} s"])
