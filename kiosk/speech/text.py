"""Splitting long text into request-sized pieces at sentence boundaries."""

from __future__ import annotations

import re

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
