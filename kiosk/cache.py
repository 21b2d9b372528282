"""The phrase cache: content-addressed PCM entries on disk, written atomically and verified on every read.

An entry is one file `<key>.pcm`: a single JSON header line (format, length, SHA-256, text, engine identity)
followed by the raw PCM. It is written to a temp file, fsynced, renamed into place and the directory fsynced,
so after a crash or power cut an entry is either whole or absent. A read checks length and hash; an entry that
fails is removed, logged and never played. Pinned entries (the configured exhibit lines) are never evicted;
the rest are evicted least recently used first when the cache is over its size cap.

All methods block on disk I/O: call them from a worker thread, not the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiosk.errors import CacheError
from kiosk.fileio import TEMP_SUFFIX, write_atomically
from kiosk.pcm import AudioFormat

log = logging.getLogger(__name__)

SUFFIX = ".pcm"
_MAX_HEADER = 1 << 20
_VERSION = 1


def cache_key(identity: dict, fmt: AudioFormat, text: str) -> str:
    """A hash of everything that shapes the audio: engine identity (engine, model, voice, ...), format, text."""
    material = {"identity": identity, "format": [fmt.rate, fmt.channels, fmt.sample_width], "text": text}
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class EntryInfo:
    key: str
    text: str
    engine: str
    fmt: AudioFormat
    length: int
    sha256: str
    created: float
    last_used: float

    @property
    def duration_s(self) -> float:
        return self.length / self.fmt.frame_bytes / self.fmt.rate


@dataclass(frozen=True)
class Entry:
    info: EntryInfo
    pcm: bytes


class CorruptEntry(Exception):
    pass


class PhraseCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._pinned: frozenset[str] = frozenset()

    def open(self) -> PhraseCache:
        """Create the directory if needed and check that it is usable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create cache directory {self.root}: {exc.strerror or exc}") from exc
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise CacheError(f"cache directory {self.root} is not readable")
        return self

    def pin(self, keys: Iterable[str]) -> None:
        """Entries with these keys (the configured exhibit lines) are never evicted."""
        self._pinned = frozenset(keys)

    def is_pinned(self, key: str) -> bool:
        return key in self._pinned

    def path_for(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / f"{key}{SUFFIX}"

    def get(self, key: str) -> Entry | None:
        """The verified entry, or None when absent or corrupt (a corrupt one is removed)."""
        path = self.path_for(key)
        try:
            entry = _read_entry(path, key)
        except FileNotFoundError:
            return None
        except (CorruptEntry, OSError) as exc:
            log.warning("cache entry %s is corrupt and was removed: %s", key[:12], exc)
            _unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # mtime doubles as "last used" for LRU eviction
        return entry

    def remove(self, key: str) -> None:
        _unlink(self.path_for(key))

    def contains(self, key: str) -> bool:
        return self.path_for(key).exists()

    def put(self, key: str, pcm: bytes, *, fmt: AudioFormat, text: str, identity: dict) -> EntryInfo:
        """Commit an entry atomically (temp, fsync, rename, directory fsync), then evict down to the cap."""
        header = {
            "v": _VERSION,
            "key": key,
            "length": len(pcm),
            "sha256": hashlib.sha256(pcm).hexdigest(),
            "format": [fmt.rate, fmt.channels, fmt.sample_width],
            "engine": identity.get("engine", "?"),
            "identity": identity,
            "text": text,
            "created": time.time(),
        }
        try:
            write_atomically(self.path_for(key), json.dumps(header, ensure_ascii=False).encode() + b"\n", pcm)
        except OSError as exc:
            raise CacheError(f"cannot write cache entry in {self.root}: {exc.strerror or exc}") from exc
        self.evict()
        return _info(header, time.time())

    def entries(self) -> Iterator[Path]:
        try:
            yield from sorted(self.root.glob(f"*{SUFFIX}"))
        except FileNotFoundError:
            return

    def list(self) -> list[EntryInfo]:
        """Headers of all entries (not verified; see `verify`)."""
        infos = []
        for path in self.entries():
            try:
                infos.append(_read_header(path, path.stem)[0])
            except (CorruptEntry, OSError):
                continue
        return infos

    def verify(self) -> tuple[int, list[tuple[str, str]]]:
        """Check every entry; remove the corrupt ones. Returns (entries ok, [(file name, reason) removed])."""
        ok, removed = 0, []
        for path in self.entries():
            try:
                _read_entry(path, path.stem)
                ok += 1
            except (CorruptEntry, OSError) as exc:
                log.warning("cache entry %s is corrupt and was removed: %s", path.name, exc)
                _unlink(path)
                removed.append((path.name, str(exc)))
        return ok, removed

    def remove_stale_temps(self) -> int:
        """Remove temp files left by writers that died (a crash or power cut mid-write)."""
        removed = 0
        for tmp in self.root.glob(f".*{TEMP_SUFFIX}"):
            if not _writer_alive(tmp):
                _unlink(tmp)
                removed += 1
        return removed

    def total_bytes(self) -> int:
        return sum(_size(p) for p in self.entries())

    def evict(self, max_bytes: int | None = None) -> list[str]:
        """Remove least-recently-used unpinned entries until the cache fits; returns the removed keys."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        files = [(p, st) for p in self.entries() if (st := _stat(p))]
        total = sum(st.st_size for _, st in files)
        removed = []
        for path, st in sorted(files, key=lambda f: f[1].st_mtime):
            if total <= limit:
                break
            if path.stem in self._pinned:
                continue
            _unlink(path)
            total -= st.st_size
            removed.append(path.stem)
        if total > limit:
            log.warning("cache holds %d bytes of pinned lines, over its %d byte cap", total, limit)
        return removed


def _read_header(path: Path, key: str) -> tuple[EntryInfo, dict, int]:
    with open(path, "rb") as f:
        line = f.readline(_MAX_HEADER)
        st = os.fstat(f.fileno())
    if not line.endswith(b"\n"):
        raise CorruptEntry("header is truncated")
    try:
        header = json.loads(line)
        info = _info(header, st.st_mtime)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"header is unreadable ({exc})") from exc
    if header.get("v") != _VERSION or header.get("key") != key:
        raise CorruptEntry("header does not belong to this entry")
    return info, header, len(line)


def _read_entry(path: Path, key: str) -> Entry:
    info, _, header_len = _read_header(path, key)
    with open(path, "rb") as f:
        f.seek(header_len)
        pcm = f.read(info.length + 1)
    if len(pcm) != info.length:
        raise CorruptEntry(f"holds {len(pcm)} audio bytes, header says {info.length}")
    if hashlib.sha256(pcm).hexdigest() != info.sha256:
        raise CorruptEntry("audio does not match its SHA-256")
    return Entry(info, pcm)


def _info(header: dict, last_used: float) -> EntryInfo:
    rate, channels, width = header["format"]
    return EntryInfo(
        key=header["key"],
        text=header["text"],
        engine=header["engine"],
        fmt=AudioFormat(int(rate), int(channels), int(width)),
        length=int(header["length"]),
        sha256=str(header["sha256"]),
        created=float(header["created"]),
        last_used=last_used,
    )


def _writer_alive(tmp: Path) -> bool:
    """Temp names carry the writer's pid; a live writer's file must not be pulled from under it."""
    try:
        pid = int(tmp.name.split(".")[-3])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _size(path: Path) -> int:
    st = _stat(path)
    return st.st_size if st else 0


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
