"""What staff read about faults, in their words: what happened and what to do, never an address, a port, a file
path, an exception's name or a model id. The technical text stays in the journal and in /api/status for machines.
"""

from __future__ import annotations

import re

#: Where a line was heard from, as staff say it.
SOURCE_WORDS = {"cache": "a saved copy (offline)", "openai": "the online voice", "piper": "the local voice"}
VOICE_NAMES = {"openai": "The online voice", "piper": "The local voice"}

#: What a fault's text (SpeechError, OSError, ...) says happened, by what it contains; the first kind that matches.
#: One table for every place staff read about a fault: each says the kind in its own words (the staff pages here, the
#: history CSV in kiosk.history_csv).
_KINDS: list[tuple[str, re.Pattern[str]]] = [
    (kind, re.compile(pattern, re.I))
    for kind, pattern in (
        ("software", r"internal error"),
        ("no_voice", r"no speech engine|no voice"),
        ("no_key", r"no openai api key"),
        ("quota", r"run out of credit|insufficient_quota|quota"),
        ("key_refused", r"api key|key was refused|\b401\b|\b403\b|no key"),
        ("gave_up", r"gave up"),
        ("cut_off", r"cut after"),
        (
            "unreachable",
            r"cannot connect|connect call failed|timed out connecting|name resolution|no route|"
            r"unreachable|network|connection",
        ),
        ("too_slow", r"stalled|no audio within|took longer|no answer|too slowly|timed? ?out"),
        ("ran_on", r"far more audio"),
        ("busy", r"\b429\b|rate limit|too many"),
        ("service_failed", r"answered 5|\b5\d\d\b|server error|unavailable"),
        ("refused", r"answered|no audio"),
        ("local_voice", r"piper"),
        ("sound", r"sound|alsa|audio|playback device|\bpcm\b"),
        ("cache", r"cache|corrupt|damaged"),
        ("stopped", r"stopped|interrupted|cancel"),
    )
]

#: Each kind as a clause on the staff pages ("Not played: …", "The online voice is not working: …").
_CLAUSES = {
    "software": "it failed inside the speaker's software",
    "no_voice": "no voice was available",
    "no_key": "it has no key (enter one on the Voice page)",
    "quota": "its account has run out of credit",
    "key_refused": "it refused the key",
    "gave_up": "it took too long",
    "cut_off": "its audio was cut off",
    "unreachable": "it could not be reached (is the network down?)",
    "too_slow": "it took too long to answer",
    "ran_on": "it ran on far past the line",
    "busy": "it is busy (too many requests); it will be tried again",
    "service_failed": "its service is having trouble",
    "refused": "it refused the request",
    "local_voice": "the local voice failed",
    "sound": "the sound system failed",
    "cache": "its saved copy was damaged and has been removed",
    "stopped": "it was stopped",
}


def fault_kind(error: str | None) -> str | None:
    """What a fault's text says happened ("unreachable", "quota", ...; see _KINDS), or None when it says nothing
    known."""
    if not error:
        return None
    return next((kind for kind, pattern in _KINDS if pattern.search(error)), None)


def fault_words(error: str | None, fallback: str = "it failed") -> str:
    """A fault's text as a short clause staff can read ("it could not be reached (is the network down?)")."""
    return _CLAUSES.get(fault_kind(error) or "", fallback)


def unreachable(error: str) -> bool:
    """Whether a fault says the voice could not be reached at all (rather than refusing one request)."""
    return fault_kind(error) in ("unreachable", "too_slow")


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
