"""What staff read about faults, in their words: what happened and what to do, never an address, a port, a file
path, an exception's name or a model id. The technical text stays in the journal and in /api/status for machines.
"""

from __future__ import annotations

import re

#: Where a line was heard from, as staff say it.
SOURCE_WORDS = {"cache": "a saved copy (offline)", "openai": "the online voice", "piper": "the local voice"}
VOICE_NAMES = {"openai": "The online voice", "piper": "The local voice"}

_UNREACHABLE = "it could not be reached (is the network down?)"
_TOO_SLOW = "it took too long to answer"

# A fault's text (SpeechError, OSError, ...) mapped to words by what it says; first match wins.
_FAULTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"run out of credit|insufficient_quota|quota", re.I), "its account has run out of credit"),
    (re.compile(r"key was refused|\b401\b|\b403\b|api key|no key", re.I), "it refused the key"),
    (
        re.compile(r"cannot connect|connect call failed|name resolution|no route|unreachable|network", re.I),
        "it could not be reached (is the network down?)",
    ),
    (re.compile(r"took longer|timed? ?out|no answer|no audio within", re.I), "it took too long to answer"),
    (re.compile(r"\b429\b|rate limit|too many", re.I), "it is busy (too many requests); it will be tried again"),
    (re.compile(r"\b5\d\d\b|server error|unavailable", re.I), "its service is having trouble"),
    (re.compile(r"no speech engine|no voice", re.I), "no voice was available"),
    (re.compile(r"corrupt|damaged", re.I), "its saved copy was damaged and has been removed"),
    (re.compile(r"sound card|alsa|playback device|\bpcm\b", re.I), "the sound system failed"),
    (re.compile(r"stopped|interrupted|cancel", re.I), "it was stopped"),
]


def fault_words(error: str | None, fallback: str = "it failed") -> str:
    """A fault's text as a short clause staff can read ("it could not be reached (is the network down?)")."""
    if not error:
        return fallback
    return next((words for pattern, words in _FAULTS if pattern.search(error)), fallback)


def unreachable(error: str) -> bool:
    """Whether a fault says the voice could not be reached at all (rather than refusing one request)."""
    return fault_words(error) in (_UNREACHABLE, _TOO_SLOW)


def voice_paused(name: str, reason: str | None, wait_s: int | None, local_stands_in: bool) -> str:
    """A voice in back-off, for the status's problems."""
    voice = VOICE_NAMES.get(name, "A voice")
    then = (
        "Lines ready offline still play; the others are spoken by the local voice meanwhile."
        if local_stands_in
        else "Lines ready offline still play; the others cannot be spoken until it is back."
    )
    again = f" It is tried again in {wait_s} s." if wait_s else ""
    return f"{voice} is not working: {fault_words(reason)}. {then}{again}"


def last_line(trace: dict | None) -> str:
    """The last line's outcome as the status page's 'Last line' card says it."""
    if not trace:
        return "–"
    error, source = trace.get("error"), trace.get("source")
    if error:
        return f"Not played: {fault_words(error)}"
    return f"Played from {SOURCE_WORDS.get(source, 'the speaker')}"
