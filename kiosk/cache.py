"""The phrase cache: content-addressed PCM entries on disk, written atomically and verified block by block as they play.

An entry is one file `<key>.pcm`: a single JSON header line (format, length, a BLAKE2b hash of every 64 KB block of
audio, text, engine identity) followed by the raw PCM. It is written to a temp file, fsynced, renamed into place and
the directory fsynced, so after a crash or power cut an entry is either whole or absent.

Reading is constant-time at the start: `open_entry` checks the header and the file's length and verifies only the
first block; every later block is verified when it is read, just before it is played. A block that fails is never
played: the line stops where that block would begin, the entry is removed and the fault logged. BLAKE2b rather than
SHA-256: a Pi 4 has no SHA instructions, and BLAKE2b is the faster of the two in software on 64-bit ARM.

With a loudness target, each line is levelled to it when its entry is committed (kiosk.loudness) and the header
records its loudness, the engine's and the target, and when each word starts (kiosk.captions.timing). Entries of the
first format (one SHA-256 of all the audio), without a loudness or word times, or levelled to another target are
read and verified whole once, then rewritten (`migrate`, done in the background after such an entry's first play,
and by `kiosk cache verify`).

Pinned entries (the configured exhibit lines) are never evicted; the rest are evicted least recently used first when
the cache is over its size cap. A cached press writes nothing to disk (an SD card wears with writes): the time each
entry was last used is kept in memory and saved to a small index file (`usage.json`, written atomically) only when
entries are evicted, every few hours, and on `close()`. An entry the index does not know is dated by its file time.

All methods block on disk I/O: call them from a worker thread, not the event loop.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from kiosk.cache_entry import (
    CachedAudio,
    CorruptEntry,
    Entry,
    EntryInfo,
    NewerEntry,
    entry_info,
    is_moment,
    make_header,
    parse_json,
    read_info,
)
from kiosk.captions.timing import align
from kiosk.errors import CacheError
from kiosk.fileio import TEMP_SUFFIX, write_atomically
from kiosk.loudness import Levelled, level, measure
from kiosk.memory import release_freed_memory
from kiosk.pcm import AudioFormat

log = logging.getLogger(__name__)

SUFFIX = ".pcm"
USAGE_FILE = "usage.json"
#: A second of speech: enough to tell a cache that can keep lines again from one with a few bytes to spare.
WRITE_PROBE_BYTES = 48_000
#: The last-used times are saved at most this often (besides evictions and close()).
USAGE_FLUSH_S = 3 * 3600.0
#: An index larger than this (some 180 000 entries) is not one this cache wrote: it is ignored, never parsed.
_MAX_USAGE_BYTES = 16 << 20


class PhraseCache:
    def __init__(
        self, root: Path, max_bytes: int, *, loudness_lufs: float | None = None, clock: Callable[[], float] = time.time
    ):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.loudness_lufs = loudness_lufs  # new lines are levelled to it; None: stored as the engine made them
        self._clock = clock
        self._pinned: frozenset[str] = frozenset()
        self._used: dict[str, float] = {}  # last use of entries since the index was last saved
        self._saved: dict[str, float] | None = None  # the index file's content, read once
        self._lock = threading.Lock()
        #: Entries rewritten from the first format by the last `verify`.
        self.migrated = 0

    def open(self) -> PhraseCache:
        """Create the directory if needed and check that it is usable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create cache directory {self.root}: {exc.strerror or exc}") from exc
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise CacheError(f"cache directory {self.root} is not readable")
        return self

    def close(self) -> None:
        """Save the last-used times (at shutdown)."""
        self.flush_usage()

    def pin(self, keys: Iterable[str]) -> None:
        """Entries with these keys (the configured exhibit lines) are never evicted."""
        self._pinned = frozenset(keys)

    def is_pinned(self, key: str) -> bool:
        return key in self._pinned

    def path_for(self, key: str) -> Path:
        if not _is_key(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.root / f"{key}{SUFFIX}"

    def open_entry(self, key: str) -> CachedAudio | None:
        """The entry opened for playing, its first block verified; None when absent or corrupt (a corrupt one is
        removed). Writes nothing: the use is noted in memory."""
        path = self.path_for(key)
        try:
            audio = CachedAudio(path, key)
        except (FileNotFoundError, NewerEntry):
            return None
        except (CorruptEntry, OSError) as exc:
            self.discard(key, str(exc))
            return None
        audio.outdated = self._outdated(audio)
        self._touch(key)
        return audio

    def _outdated(self, audio: CachedAudio) -> bool:
        levelled = audio.info.levelled
        if audio.legacy or levelled is None or audio.info.words is None:
            return True
        return self.loudness_lufs is not None and levelled.target_lufs != self.loudness_lufs

    def get(self, key: str) -> Entry | None:
        """The whole entry, verified; None when absent or corrupt (a corrupt one is removed)."""
        audio = self.open_entry(key)
        if audio is None:
            return None
        try:
            return Entry(audio.info, audio.pcm)
        except (CorruptEntry, OSError) as exc:
            self.discard(key, str(exc))
            return None

    def discard(self, key: str, reason: str) -> None:
        """Remove an entry found corrupt, and say so."""
        log.warning("cache entry %s is corrupt and was removed: %s", key[:12], reason)
        _remove(self.path_for(key))

    def remove(self, key: str) -> None:
        _remove(self.path_for(key))

    def contains(self, key: str) -> bool:
        return self.path_for(key).is_file()  # a directory of that name is no entry: the line is made again

    def put(self, key: str, pcm: bytes, *, fmt: AudioFormat, text: str, identity: dict) -> EntryInfo:
        """Commit an entry atomically (temp, fsync, rename, directory fsync), then evict down to the cap."""
        pcm, levelled = self._levelled(pcm, fmt, engine_lufs=None)
        words = tuple(align(text, pcm, fmt))
        header = make_header(key, pcm, fmt, text, identity, created=self._clock(), levelled=levelled, words=words)
        self._write(key, header, pcm)
        self._touch(key)
        self.evict()
        return entry_info(header, self._clock())

    def _levelled(self, pcm: bytes, fmt: AudioFormat, *, engine_lufs: float | None) -> tuple[bytes, Levelled]:
        """The audio to store and its record: levelled to the target, or as it is without one. `engine_lufs`: the
        engine's own loudness, when `pcm` is no longer as the engine made it."""
        if self.loudness_lufs is None:
            made = measure(pcm, fmt)
            return pcm, Levelled(made, engine_lufs if engine_lufs is not None else made.lufs, None)
        levelled_pcm, levelled = level(pcm, fmt, self.loudness_lufs)
        if levelled_pcm is not pcm:  # the limiter ran: its arrays (seconds of audio as floats) are freed now
            release_freed_memory()
        pcm = levelled_pcm
        if engine_lufs is not None:
            levelled = replace(levelled, engine_lufs=engine_lufs)
        return pcm, levelled

    def migrate(self, key: str) -> bool:
        """Rewrite an entry of the first format in the block format, or one without a loudness with it (verified
        whole first); False if there was nothing to do. A corrupt entry is removed."""
        try:
            with CachedAudio(self.path_for(key), key) as audio:
                if not self._outdated(audio):
                    return False
                pcm = audio.pcm
        except (FileNotFoundError, NewerEntry):
            return False
        except (CorruptEntry, OSError) as exc:
            self.discard(key, str(exc))
            return False
        info = audio.info
        before = info.levelled
        if audio.legacy or before is None or before.target_lufs != self.loudness_lufs:
            pcm, levelled = self._levelled(pcm, info.fmt, engine_lufs=before.engine_lufs if before else None)
        else:  # only the word times are missing: the audio stays as it is
            levelled = before
        words = tuple(align(info.text, pcm, info.fmt))
        new = make_header(
            key, pcm, info.fmt, info.text, audio.identity, created=info.created, levelled=levelled, words=words
        )
        self._write(key, new, pcm)
        log.info("cache entry %s rewritten with block hashes, its loudness and word times", key[:12])
        return True

    def _write(self, key: str, header: dict, pcm: bytes) -> None:
        try:
            write_atomically(self.path_for(key), json.dumps(header, ensure_ascii=False).encode() + b"\n", pcm)
        except OSError as exc:
            raise CacheError(f"cannot write cache entry in {self.root}: {exc.strerror or exc}") from exc

    def entries(self) -> Iterator[Path]:
        """The entry files. Anything else with the suffix (a directory, a name that is no key) is not an entry:
        it is neither listed, nor counted, nor removed."""
        try:
            paths = sorted(self.root.glob(f"*{SUFFIX}"))
        except OSError:
            return
        yield from (path for path in paths if _is_key(path.stem) and path.is_file())

    def list(self) -> list[EntryInfo]:
        """Headers of all entries (not verified; see `verify`)."""
        infos = []
        for path in self.entries():
            try:
                info = read_info(path)
            except (CorruptEntry, NewerEntry, OSError):
                continue
            infos.append(replace(info, last_used=self.last_used(path.stem, info.created)))
        return infos

    def verify(self) -> tuple[list[EntryInfo], list[tuple[str, str]]]:
        """Check every block of every entry; remove the corrupt ones; rewrite outdated entries (counted in
        `migrated`). Returns ([info of each entry that is ok, with its loudness], [(file name, reason) removed])."""
        ok, removed, self.migrated = [], [], 0
        for path in self.entries():
            try:
                with CachedAudio(path, path.stem) as audio:
                    for _ in audio.blocks():
                        pass
                    outdated, info = self._outdated(audio), audio.info
            except NewerEntry:  # kept for the later version, should it come back
                continue
            except (CorruptEntry, OSError) as exc:
                log.warning("cache entry %s is corrupt and was removed: %s", path.name, exc)
                _remove(path)
                removed.append((path.name, str(exc)))
                continue
            if outdated and self.migrate(path.stem):
                self.migrated += 1
                info = read_info(path)
            ok.append(info)
        return ok, removed

    def remove_stale_temps(self) -> int:
        """Remove temp files left by writers that died (a crash or power cut mid-write)."""
        removed = 0
        for tmp in self.root.glob(f".*{TEMP_SUFFIX}"):
            if not _writer_alive(tmp) and _remove(tmp):
                removed += 1
        return removed

    def write_problem(self, probe_bytes: int = WRITE_PROBE_BYTES) -> str | None:
        """Why a line could not be kept now (a full disk, a read-only directory), or None: a probe of `probe_bytes`
        is written, synced and removed."""
        probe = self.root / f".write-probe.{os.getpid()}{TEMP_SUFFIX}"
        try:
            with open(probe, "wb") as f:
                f.write(bytes(probe_bytes))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            return f"the phrase cache {self.root} cannot be written: {exc.strerror or exc}"
        finally:
            _remove(probe, quiet=True)
        return None

    def total_bytes(self) -> int:
        return sum(_size(p) for p in self.entries())

    def evict(self, max_bytes: int | None = None) -> list[str]:
        """Remove least-recently-used unpinned entries until the cache fits; returns the removed keys."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        files = [(p, st) for p in self.entries() if (st := _stat(p))]
        total = sum(st.st_size for _, st in files)
        removed = []
        if total > limit:
            for path, st in sorted(files, key=lambda f: self.last_used(f[0].stem, f[1].st_mtime)):
                if total <= limit:
                    break
                if path.stem in self._pinned or not _remove(path):
                    continue
                total -= st.st_size
                removed.append(path.stem)
        try:
            self.flush_usage()  # the disk is being written anyway (a new entry, an eviction): save the order too
        except CacheError as exc:
            log.warning("%s", exc)
        if total > limit:
            log.warning("cache holds %d bytes of pinned lines, over its %d byte cap", total, limit)
        return removed

    # -- last use, kept in memory

    def last_used(self, key: str, default: float) -> float:
        """When the entry was last played or written; `default` (its file's time) if that was never noted."""
        with self._lock:
            used = self._used.get(key)
            return used if used is not None else self._saved_usage().get(key, default)

    def _touch(self, key: str) -> None:
        with self._lock:
            self._used[key] = self._clock()

    def flush_usage(self) -> None:
        """Save the last-used times to the index file (atomically), merged with what another process saved."""
        with self._lock:
            if not self._used:
                return
            used, self._used = self._used, {}
            self._saved = None  # re-read: `kiosk cache` commands may have written it meanwhile
            merged = dict(self._saved_usage())
            for key, at in used.items():
                merged[key] = max(at, merged.get(key, at))
            live = {p.stem for p in self.entries()}
            merged = {k: v for k, v in merged.items() if k in live}
            try:
                write_atomically(self.root / USAGE_FILE, json.dumps({"v": 1, "used": merged}).encode())
            except OSError as exc:
                self._used = {**used, **self._used}
                raise CacheError(f"cannot save the cache's last-used times: {exc.strerror or exc}") from exc
            self._saved = merged

    def _saved_usage(self) -> dict[str, float]:
        if self._saved is None:
            self._saved = _read_usage(self.root / USAGE_FILE)
        return self._saved


def _is_key(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _read_usage(path: Path) -> dict[str, float]:
    """The index's last-used times; {} when it is missing or cannot be read (entries are then dated by their file
    times, and the index is rewritten whole at the next save). Only valid times of entry keys are kept."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_USAGE_BYTES + 1)
        if len(data) > _MAX_USAGE_BYTES:
            raise ValueError(f"larger than {_MAX_USAGE_BYTES} bytes")
        saved = parse_json(data)["used"]
        return {key: float(at) for key, at in saved.items() if _is_key(key) and is_moment(at)}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("the cache's last-used index %s cannot be read (%s); entries are dated by their files", path, exc)
        return {}


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


def _remove(path: Path, *, quiet: bool = False) -> bool:
    """Remove a file the cache is done with; False (and said so, unless `quiet`) when it cannot be, e.g. a directory
    in its place: what the cache gives up on is never a reason to fail a line or the start."""
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if not quiet:
            log.warning("cannot remove %s: %s", path, exc.strerror or exc)
        return False
    return True
