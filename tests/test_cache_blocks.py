"""Cached lines verified block by block as they play, old entries migrated, and no disk write per cached press."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import file_sink_opener

import kiosk.cache_entry
from kiosk.alsa_output import AlsaOutput
from kiosk.announcer import Announcer
from kiosk.cache import USAGE_FILE, PhraseCache
from kiosk.cache_entry import BLOCK_BYTES, CachedAudio
from kiosk.errors import SpeechError
from kiosk.pcm import OPENAI_PCM
from kiosk.player import Player
from kiosk.speech.chain import EngineChain

TEXT = "The orrery was built to show the planets turning around the sun."
PERIOD_BYTES = OPENAI_PCM.bytes_for_ms(40)


class SilentEngine:
    """An engine that cannot speak: whatever reaches the device came from the cache."""

    name = "silent"
    on_device = True
    fmt = OPENAI_PCM

    def identity(self) -> dict:
        return {"engine": self.name}

    async def synthesize(self, text, on_audio) -> None:
        raise SpeechError("silent: no engine in this test", "transient")

    async def probe(self) -> None:
        raise SpeechError("silent: no engine in this test", "transient")

    async def aclose(self) -> None:
        pass


def audio(blocks: float) -> bytes:
    """Distinct bytes for every block, so a block played twice or out of order shows."""
    size = int(blocks * BLOCK_BYTES) // 2 * 2
    return b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(size // 32 + 1))[:size]


@pytest.fixture
async def speaker(tmp_path, alsa_file):
    """An announcer whose only engine is silent, playing to ALSA's `file` device; (announcer, cache, device file)."""
    device, out = alsa_file
    cache = PhraseCache(tmp_path / "cache", 1 << 30).open()
    player = Player(file_sink_opener(device), preroll_ms=120)
    player.start()
    announcer = Announcer(engines=EngineChain([SilentEngine()], failover_s=2.5), cache=cache, player=player)
    yield announcer, cache, out
    await asyncio.to_thread(player.close)


def store(announcer: Announcer, cache: PhraseCache, pcm: bytes, text: str = TEXT) -> str:
    key = announcer.key_for(text)
    cache.put(key, pcm, fmt=OPENAI_PCM, text=text, identity=SilentEngine().identity())
    return key


def audio_offset(path: Path) -> int:
    return len(path.read_bytes().split(b"\n", 1)[0]) + 1


def test_opening_an_entry_verifies_only_its_first_block(tmp_path, monkeypatch):
    cache = PhraseCache(tmp_path, 1 << 30).open()
    pcm = audio(10.5)  # 35 s of audio
    key = "a" * 64
    cache.put(key, pcm, fmt=OPENAI_PCM, text="long", identity={"engine": "x"})
    hashed: list[int] = []
    real = kiosk.cache_entry.block_digest
    monkeypatch.setattr(kiosk.cache_entry, "block_digest", lambda block: hashed.append(len(block)) or real(block))
    with cache.open_entry(key) as entry:
        assert hashed == [BLOCK_BYTES] and entry.first_block == pcm[:BLOCK_BYTES]
        assert entry.block_count == 11
        assert entry.read_block(10) == pcm[10 * BLOCK_BYTES :]
        assert hashed == [BLOCK_BYTES, len(pcm) - 10 * BLOCK_BYTES]


async def test_a_corrupt_block_stops_the_line_where_it_begins(speaker, caplog):
    """One byte flipped in block 2: blocks 0 and 1 play, nothing of block 2 or after reaches the device, the entry
    is removed and the log says why."""
    announcer, cache, out = speaker
    pcm = audio(5)
    key = store(announcer, cache, pcm)
    path = cache.path_for(key)
    raw = bytearray(path.read_bytes())
    raw[audio_offset(path) + 2 * BLOCK_BYTES + 1234] ^= 0x01
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        trace = await asyncio.wait_for(announcer.say(TEXT), timeout=10)
    await asyncio.to_thread(announcer.player.close)
    got = out.read_bytes()
    assert got[: 2 * BLOCK_BYTES] == pcm[: 2 * BLOCK_BYTES]
    tail = got[2 * BLOCK_BYTES :]
    assert tail == bytes(len(tail)) and len(tail) < PERIOD_BYTES  # only the silence padding the last period
    assert trace.source == "cache" and "corrupt" in trace.error
    assert trace.frames == BLOCK_BYTES  # two blocks of 16-bit frames
    assert not path.exists()
    assert f"cache entry {key[:12]} is corrupt and was removed: audio block 2 of 5" in caplog.text


async def test_a_corrupt_first_block_plays_nothing_and_the_engines_are_asked(speaker, caplog):
    announcer, cache, out = speaker
    key = store(announcer, cache, audio(3))
    path = cache.path_for(key)
    raw = bytearray(path.read_bytes())
    raw[audio_offset(path) + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    trace = await asyncio.wait_for(announcer.say(TEXT), timeout=10)
    assert trace.source == "silent" and trace.frames == 0  # the cache had nothing trustworthy; the engine failed
    assert not path.exists() and "corrupt" in caplog.text
    await asyncio.to_thread(announcer.player.close)
    assert not out.exists() or out.read_bytes().strip(b"\0") == b""  # the device was never even opened


async def test_the_first_block_reaches_the_device_before_the_next_is_read(speaker, monkeypatch):
    announcer, cache, out = speaker
    pcm = audio(4)
    store(announcer, cache, pcm)
    events: list[str] = []
    lock = threading.Lock()
    real_read, real_write = CachedAudio.read_block, AlsaOutput.write

    def read_block(self, index):
        with lock:
            events.append(f"read {index}")
        return real_read(self, index)

    def write(self, frames):
        with lock:
            events.append("write")
        return real_write(self, frames)

    monkeypatch.setattr(CachedAudio, "read_block", read_block)
    monkeypatch.setattr(AlsaOutput, "write", write)
    trace = await asyncio.wait_for(announcer.say(TEXT), timeout=10)
    assert trace.error is None and trace.frames == len(pcm) // 2
    assert events[0] == "read 0"
    assert events.index("write") < events.index("read 1") < events.index("read 2") < events.index("read 3")
    # Each later block is read only once less than half a block waits to be played.
    writes_before_read_1 = events[: events.index("read 1")].count("write")
    assert writes_before_read_1 * PERIOD_BYTES > BLOCK_BYTES // 2
    await asyncio.to_thread(announcer.player.close)
    assert out.read_bytes()[: len(pcm)] == pcm


def write_legacy_entry(cache: PhraseCache, key: str, pcm: bytes, text: str) -> Path:
    """An entry as the first format wrote it: one SHA-256 of all the audio in the header."""
    header = {
        "v": 1,
        "key": key,
        "length": len(pcm),
        "sha256": hashlib.sha256(pcm).hexdigest(),
        "format": [OPENAI_PCM.rate, OPENAI_PCM.channels, OPENAI_PCM.sample_width],
        "engine": "silent",
        "identity": SilentEngine().identity(),
        "text": text,
        "created": 1_700_000_000.0,
    }
    path = cache.path_for(key)
    path.write_bytes(json.dumps(header).encode() + b"\n" + pcm)
    return path


def header_of(path: Path) -> dict:
    return json.loads(path.read_bytes().split(b"\n", 1)[0])


async def test_an_old_entry_plays_then_is_rewritten_in_the_block_format(speaker):
    announcer, cache, out = speaker
    pcm = audio(2.5)
    key = announcer.key_for(TEXT)
    path = write_legacy_entry(cache, key, pcm, TEXT)
    trace = await asyncio.wait_for(announcer.say(TEXT), timeout=10)
    assert trace.source == "cache" and trace.error is None and trace.frames == len(pcm) // 2
    deadline = time.monotonic() + 5
    while header_of(path)["v"] != 2:
        assert time.monotonic() < deadline, "the old entry was not rewritten"
        await asyncio.sleep(0.02)
    header = header_of(path)
    assert len(header["blocks"]) == 3 and header["text"] == TEXT and header["created"] == 1_700_000_000.0
    assert cache.get(key).pcm == pcm
    await asyncio.to_thread(announcer.player.close)
    assert out.read_bytes()[: len(pcm)] == pcm


def test_verify_migrates_old_entries_and_removes_corrupt_old_ones(tmp_path):
    cache = PhraseCache(tmp_path, 1 << 30).open()
    good, bad = "b" * 64, "c" * 64
    write_legacy_entry(cache, good, audio(1.5), "good")
    path = write_legacy_entry(cache, bad, audio(1.5), "bad")
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    ok, removed = cache.verify()
    assert [info.key for info in ok] == [good] and cache.migrated == 1 and [name for name, _ in removed] == [path.name]
    assert header_of(cache.path_for(good))["v"] == 2 and cache.get(good).pcm == audio(1.5)
    assert cache.get(bad) is None


def io_written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/self/io")


def disk_state(root: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in root.iterdir()}


async def test_a_cached_press_writes_nothing_to_disk(tmp_path):
    """Presses of cached lines on ALSA's `null` device: no byte written by this process, no file in the cache touched
    (the last-used order is kept in memory)."""
    if not Path("/proc/self/io").exists():
        pytest.skip("no /proc/self/io here")
    cache = PhraseCache(tmp_path / "cache", 1 << 30).open()
    player = Player(file_sink_opener("null"), preroll_ms=120)
    player.start()
    announcer = Announcer(engines=EngineChain([SilentEngine()], failover_s=2.5), cache=cache, player=player)
    try:
        lines = {TEXT: audio(0.7), "A second line.": audio(3.2)}
        for text, pcm in lines.items():
            store(announcer, cache, pcm, text)
            await asyncio.wait_for(announcer.say(text), timeout=10)  # a first hit, not counted
        before, files = io_written(), disk_state(cache.root)
        for _ in range(10):
            for text in lines:
                trace = await asyncio.wait_for(announcer.say(text), timeout=10)
                assert trace.source == "cache" and trace.error is None
        assert io_written() - before == 0
        assert disk_state(cache.root) == files
    finally:
        await asyncio.to_thread(player.close)


def test_last_use_is_saved_on_eviction_runs_and_close_not_per_use(tmp_path):
    now = [1_000_000.0]
    cache = PhraseCache(tmp_path, 1 << 30, clock=lambda: now[0]).open()
    older = "d" * 64
    cache.put(older, bytes(100), fmt=OPENAI_PCM, text="older", identity={"engine": "x"})
    now[0] += 10
    cache.put("e" * 64, bytes(100), fmt=OPENAI_PCM, text="newer", identity={"engine": "x"})
    one = cache.path_for(older).stat().st_size  # room for one entry
    index = tmp_path / USAGE_FILE
    saved = index.stat().st_mtime_ns, index.read_bytes()
    now[0] += 10
    cache.get(older)  # now the most recently used, in memory only
    assert (index.stat().st_mtime_ns, index.read_bytes()) == saved
    assert PhraseCache(tmp_path, 1 << 30).open().evict(one) == [older]  # another process does not know yet
    cache.put(older, bytes(100), fmt=OPENAI_PCM, text="older", identity={"engine": "x"})
    now[0] += 10
    cache.get(older)
    cache.close()
    assert PhraseCache(tmp_path, 1 << 30).open().evict(one) == ["e" * 64]
    assert os.path.exists(cache.path_for(older))
