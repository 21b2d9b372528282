"""Text for the engines: request-sized pieces cut at sentence boundaries, and the most audio a line can need."""

from __future__ import annotations

import re
import unicodedata

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+")
_SOFT_BREAK = re.compile(r"[,;:—–]\s+|\s+")


def split_text(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut after sentences where possible, else at commas or spaces."""
    text = text.strip()
    pieces: list[str] = []
    current = ""
    for sentence in _sentences(text):
        for part in _fit(sentence, limit):
            joined = f"{current} {part}" if current else part
            if len(joined) <= limit:
                current = joined
            else:
                pieces.append(current)
                current = part
    if current:
        pieces.append(current)
    return pieces


def _sentences(text: str) -> list[str]:
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        parts.append(text[start : match.end()].strip())
        start = match.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _fit(sentence: str, limit: int) -> list[str]:
    """A sentence longer than the limit is cut at the last comma or space that fits (a hard cut if none)."""
    parts = []
    while len(sentence) > limit:
        cut = max((m.end() for m in _SOFT_BREAK.finditer(sentence, 0, limit) if m.end() <= limit), default=limit)
        parts.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    parts.append(sentence)
    return parts


# --- pieces for a local voice --------------------------------------------------------------------------------------
#
# A local voice (Piper) synthesizes a sentence in one go, so its first audio waits for the whole first sentence. Long
# sentences are therefore fed to it clause by clause, cut only where a speaker pauses anyway: after a comma,
# semicolon or colon, or a dash standing between spaces. Short sentences stay whole (their prosody is worth more than
# the few milliseconds), and so do clauses of only a word or two, which join the next one ("by boat, by cart").

#: A sentence of up to this many words is spoken whole.
SHORT_SENTENCE_WORDS = 12
#: A clause shorter than this many words joins the next one.
MIN_CLAUSE_WORDS = 4
#: A clause more than this many times as long as the one before is joined to it: the voice makes a clause while
#: the one before it plays, and on a Pi 4 it runs at about half real time, so a clause that is much longer than
#: the one playing would leave a gap.
MAX_GROWTH = 2.0
_CLAUSE_END = re.compile(r"(?:[,;:]|\s(?:—|–|--?))[\"'”’)\]]*(?=\s)")


def speech_pieces(text: str, limit: int = 200) -> list[str]:
    """The text in pieces for a local voice: sentences, long ones cut into clauses; never inside a word.

    Joined with single spaces, the pieces are the text with its runs of whitespace made single spaces. A piece
    longer than `limit` characters is cut at its last space within the limit (a single longer word stays whole).
    """
    pieces: list[str] = []
    for sentence in _sentences(text.strip()):
        parts = [sentence] if len(sentence.split()) <= SHORT_SENTENCE_WORDS else _clauses(sentence)
        for part in parts:
            pieces.extend(_fit_words(part, limit))
    return pieces


def _clauses(sentence: str) -> list[str]:
    cuts, start = [], 0
    for match in _CLAUSE_END.finditer(sentence):
        cuts.append(sentence[start : match.end()].strip())
        start = match.end()
    cuts.append(sentence[start:].strip())
    clauses: list[str] = []
    for clause in filter(None, cuts):
        previous = clauses[-1] if clauses else None
        too_short = previous is not None and len(previous.split()) < MIN_CLAUSE_WORDS
        too_long = previous is not None and len(clause) > MAX_GROWTH * len(previous)
        if too_short or too_long:
            clauses[-1] = f"{previous} {clause}"
        else:
            clauses.append(clause)
    if len(clauses) > 1 and len(clauses[-1].split()) < MIN_CLAUSE_WORDS:
        last = clauses.pop()
        clauses[-1] = f"{clauses[-1]} {last}"
    return clauses


def _fit_words(part: str, limit: int) -> list[str]:
    words = part.split()
    pieces, current = [], ""
    for word in words:
        joined = f"{current} {word}" if current else word
        if len(joined) <= limit or not current:
            current = joined
        else:
            pieces.append(current)
            current = word
    if current:
        pieces.append(current)
    return pieces


# --- how much audio a line can need --------------------------------------------------------------------------------
#
# An engine that keeps sending audio long after its text is said (a model that loops or babbles, silence without
# end, a server that never closes the stream) is cut at a bound far above any real reading, and treated as a fault.
# Speech runs at 60-70 ms a character at speed 1; digits and abbreviations said in full run to about 0.3 s a character
# ("1889": "eighteen eighty-nine"), but only for a few characters of a line. Ideographs, kana and hangul are each a
# syllable or more, so such a character counts as three.

#: Seconds of audio per character that no reading at speed 1 exceeds (about 3.5 times ordinary speech).
MAX_AUDIO_S_PER_CHAR = 0.25
#: Added to every line, for short ones ("Hi.") and a voice's pauses at the start and the end.
MAX_AUDIO_SLACK_S = 5.0
_WIDE_CHAR_WEIGHT = 3


def max_audio_s(text: str, speed: float = 1.0) -> float:
    """The most audio any voice can need to say `text` at `speed` (slower speech needs more, faster never less)."""
    chars = sum(_WIDE_CHAR_WEIGHT if unicodedata.east_asian_width(c) in "WF" else 1 for c in text.strip())
    return (chars * MAX_AUDIO_S_PER_CHAR + MAX_AUDIO_SLACK_S) / min(1.0, speed)
