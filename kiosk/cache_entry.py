"""One phrase cache entry on disk: its file format, reading it verified block by block, and its header.

An entry is one file `<key>.pcm`: a single JSON header line (format, length, a BLAKE2b hash of every 64 KB block of
audio, text, engine identity, loudness) followed by the raw PCM. Every header is read as hostile: any JSON of any
shape, from a bad sector, is a `CorruptEntry`, never another exception. The cache itself (writing, eviction, the
last-use index) is kiosk.cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kiosk.captions.timing import Word
from kiosk.loudness import Levelled
from kiosk.pcm import AudioFormat

#: Audio is verified in blocks of this size: 1.4 s at 24 kHz, the most that is read ahead of the speaker.
BLOCK_BYTES = 64 * 1024
MAX_HEADER = 1 << 20
#: Times outside [0, this] (the year 5138) are not times an entry was made or used: `time.localtime` may refuse them.
LATEST_TIME = 1e11
VERSION = 2
LEGACYVERSION = 1
DIGEST_BYTES = 16


def cache_key(identity: dict, fmt: AudioFormat, text: str, speed: float = 1.0) -> str:
    """A hash of everything that shapes the audio: engine identity (engine, model, voice, ...), format, text, and
    the speed asked for (a `slower` button's: a line of its own). At speed 1 the key is what it always was, so
    caches made before speeds existed keep working."""
    material: dict = {"identity": identity, "format": [fmt.rate, fmt.channels, fmt.sample_width], "text": text}
    if speed != 1.0:
        material["speed"] = speed
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def block_digest(block: bytes) -> str:
    return hashlib.blake2b(block, digest_size=DIGEST_BYTES).hexdigest()


@dataclass(frozen=True)
class EntryInfo:
    key: str
    text: str
    engine: str
    fmt: AudioFormat
    length: int
    created: float
    last_used: float
    levelled: Levelled | None = None  # None: measured at the entry's next rewrite
    words: tuple[Word, ...] | None = None  # when each word is said (captions); None: worked out at the next rewrite

    @property
    def duration_s(self) -> float:
        return self.length / self.fmt.frame_bytes / self.fmt.rate


@dataclass(frozen=True)
class Entry:
    info: EntryInfo
    pcm: bytes


class CorruptEntry(Exception):
    pass


class NewerEntry(Exception):
    """An entry a later version of kiosk wrote (after an update that was rolled back): not read and not removed,
    a miss; a line spoken again writes it anew in this version's format."""


class CachedAudio:
    """An open entry whose header and first block are verified; later blocks are verified as they are read.

    `read_block(i)` returns block i (BLOCK_BYTES of audio, the last one shorter) or raises CorruptEntry. `pcm` reads
    and verifies the rest at once, for callers that want the whole line. Close it when done (`with` works).
    """

    def __init__(self, path: Path, key: str):
        self.key = key
        self._file = open(path, "rb")  # noqa: SIM115 - kept open while the line plays; see close()
        try:
            self.info, header, self._offset = parse_header(self._file, key)
            self.legacy = header["v"] == LEGACYVERSION
            self.identity: dict = header["identity"]  # what a rewrite keeps (see PhraseCache.migrate)
            #: The entry is worth rewriting (see PhraseCache.migrate); set by the cache that opened it.
            self.outdated = self.legacy or self.info.levelled is None or self.info.words is None
            size = os.fstat(self._file.fileno()).st_size
            if size != self._offset + self.info.length:
                raise CorruptEntry(f"holds {size - self._offset} audio bytes, header says {self.info.length}")
            if self.legacy:
                self._whole: bytes | None = self._read_legacy(header)
                self._digests: list[str] = []
            else:
                self._whole = None
                self._digests = _digests(header, self.info.length)
            self.first_block = self.read_block(0) if self.block_count else b""
        except BaseException:
            self._file.close()
            raise

    @property
    def block_count(self) -> int:
        return -(-self.info.length // BLOCK_BYTES)

    def read_block(self, index: int) -> bytes:
        if self._whole is not None:
            return self._whole[index * BLOCK_BYTES : (index + 1) * BLOCK_BYTES]
        self._file.seek(self._offset + index * BLOCK_BYTES)
        block = self._file.read(min(BLOCK_BYTES, self.info.length - index * BLOCK_BYTES))
        if block_digest(block) != self._digests[index]:
            raise CorruptEntry(f"audio block {index} of {self.block_count} does not match its hash")
        return block

    def blocks(self) -> Iterator[bytes]:
        for index in range(self.block_count):
            yield self.first_block if index == 0 else self.read_block(index)

    @property
    def pcm(self) -> bytes:
        try:
            return b"".join(self.blocks())
        finally:
            self.close()

    def _read_legacy(self, header: dict) -> bytes:
        self._file.seek(self._offset)
        pcm = self._file.read(self.info.length)
        if hashlib.sha256(pcm).hexdigest() != header.get("sha256"):
            raise CorruptEntry("audio does not match its SHA-256")
        return pcm

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CachedAudio:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_header(
    key: str,
    pcm: bytes,
    fmt: AudioFormat,
    text: str,
    identity: dict,
    *,
    created: float,
    levelled: Levelled,
    words: tuple[Word, ...],
) -> dict:
    return {
        "v": VERSION,
        "key": key,
        "length": len(pcm),
        "block": BLOCK_BYTES,
        "hash": f"blake2b-{8 * DIGEST_BYTES}",
        "blocks": [block_digest(pcm[i : i + BLOCK_BYTES]) for i in range(0, len(pcm), BLOCK_BYTES)],
        "format": [fmt.rate, fmt.channels, fmt.sample_width],
        "engine": identity.get("engine", "?"),
        "identity": identity,
        "text": text,
        "created": created,
        "loudness": levelled.as_json(),
        "words": [word.as_json() for word in words],
    }


def read_info(path: Path) -> EntryInfo:
    with open(path, "rb") as f:
        return parse_header(f, path.stem)[0]


def parse_header(f, key: str) -> tuple[EntryInfo, dict, int]:
    """(info, header, offset of the audio) of the entry open as `f` (positioned at its start)."""
    line = f.readline(MAX_HEADER)
    if not line.endswith(b"\n"):
        raise CorruptEntry("header is truncated")
    try:
        header = parse_json(line)
        if _later_format(header, key):
            raise NewerEntry(f"written by a later version of kiosk (format {header['v']})")
        info = entry_info(header)
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # any JSON, of any shape, from a bad sector
        raise CorruptEntry(f"header is unreadable ({exc})") from exc
    if header.get("v") not in (VERSION, LEGACYVERSION) or header.get("key") != key:
        raise CorruptEntry("header does not belong to this entry")
    if not isinstance(header.get("identity"), dict):
        raise CorruptEntry("header lacks the engine's identity")
    return info, header, len(line)


def _later_format(header: object, key: str) -> bool:
    if not isinstance(header, dict) or header.get("key") != key:
        return False
    version = header.get("v")
    return type(version) is int and version > VERSION


def _digests(header: dict, length: int) -> list[str]:
    digests = header.get("blocks")
    if header.get("block") != BLOCK_BYTES or not isinstance(digests, list):
        raise CorruptEntry("header lacks the block hashes")
    if len(digests) != -(-length // BLOCK_BYTES) or not all(isinstance(d, str) for d in digests):
        raise CorruptEntry(f"header has {len(digests)} block hashes for {length} audio bytes")
    return digests


def entry_info(header: dict, last_used: float | None = None) -> EntryInfo:
    """The entry a header describes (last used when it was made, unless said); ValueError, KeyError or TypeError
    for a header no writer of the cache made."""
    rate, channels, width = header["format"]
    created = _moment(header["created"])
    return EntryInfo(
        key=header["key"],
        text=_text(header["text"]),
        engine=_text(header["engine"]),
        fmt=AudioFormat(_whole(rate, 1, 768_000), _whole(channels, 1, 32), _whole(width, 1, 4)),
        length=_whole(header["length"], 0, 1 << 40),
        created=created,
        last_used=created if last_used is None else last_used,
        levelled=Levelled.from_json(header.get("loudness")),
        words=_words(header.get("words"), header["text"]),
    )


def _words(raw: object, text: str) -> tuple[Word, ...] | None:
    """The word times a header holds; None when it holds none, or any that do not fit its text (a bad sector, a
    hand edit): they are then worked out again."""
    if not isinstance(raw, list):
        return None
    words = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            return None
        if not all(type(n) is int and 0 <= n < 1 << 31 for n in item[1:]):
            return None
        words.append(Word(item[0], item[1], item[2]))
    if "".join(w.text for w in words).strip() != text.strip():
        return None
    return tuple(words)


def parse_json(data: bytes) -> object:
    """json.loads, with nesting too deep for the parser a ValueError like any other malformed JSON."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    value.encode("utf-8")  # a lone surrogate (UnicodeEncodeError, a ValueError) cannot be printed or logged
    return value


def _whole(value: object, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"expected a whole number from {lo} to {hi}")
    return value


def _moment(value: object) -> float:
    if not is_moment(value):
        raise ValueError("expected a time")
    return float(value)


def is_moment(value: object) -> bool:
    return type(value) in (int, float) and 0 <= value <= LATEST_TIME  # NaN and infinities fail the comparison
