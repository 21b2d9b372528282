"""A process that commits phrase cache entries as fast as it can, to be SIGKILLed by the crash-safety test."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from kiosk.cache import PhraseCache
from kiosk.cache_entry import cache_key
from kiosk.loudness import measure
from kiosk.pcm import OPENAI_PCM

IDENTITY = {"engine": "crash-test"}
LINES = 24


def text_for(n: int) -> str:
    return f"crash test line {n}"


def key_for(n: int) -> str:
    return cache_key(IDENTITY, OPENAI_PCM, text_for(n))


def expected_pcm(n: int) -> bytes:
    """Distinct, deterministic audio for line n: 64 KB to about 1.5 MB, so kills land mid-write."""
    size = 65_536 + (n * 61_000)
    block = hashlib.sha256(str(n).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def main(root: str, start: int) -> None:
    cache = PhraseCache(Path(root), max_bytes=1 << 40).open()
    # A put's first loudness measure imports numpy (100 ms and more, longer than the test waits before its kill):
    # done before "ready", so that the kills land in puts, not in an import.
    measure(expected_pcm(0)[:4800], OPENAI_PCM)
    print("ready", flush=True)
    n = start
    while True:
        line = n % LINES
        cache.put(key_for(line), expected_pcm(line), fmt=OPENAI_PCM, text=text_for(line), identity=IDENTITY)
        n += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
