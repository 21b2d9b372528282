import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cache_writer import LINES, expected_pcm, key_for
from conftest import Clock

from kiosk.cache import PhraseCache
from kiosk.cache_entry import BLOCK_BYTES, cache_key
from kiosk.pcm import OPENAI_PCM, AudioFormat

IDENTITY = {"engine": "openai", "model": "m", "voice": "v", "instructions": "", "speed": 1.0}


def put(cache: PhraseCache, text: str, pcm: bytes) -> str:
    key = cache_key(IDENTITY, OPENAI_PCM, text)
    cache.put(key, pcm, fmt=OPENAI_PCM, text=text, identity=IDENTITY)
    return key


def test_key_covers_everything_that_shapes_the_audio():
    base = cache_key(IDENTITY, OPENAI_PCM, "Hello")
    assert base == cache_key(dict(IDENTITY), OPENAI_PCM, "Hello")
    variants = [
        cache_key({**IDENTITY, "voice": "w"}, OPENAI_PCM, "Hello"),
        cache_key({**IDENTITY, "model": "n"}, OPENAI_PCM, "Hello"),
        cache_key({**IDENTITY, "instructions": "slow"}, OPENAI_PCM, "Hello"),
        cache_key({**IDENTITY, "speed": 1.1}, OPENAI_PCM, "Hello"),
        cache_key({**IDENTITY, "engine": "piper"}, OPENAI_PCM, "Hello"),
        cache_key(IDENTITY, AudioFormat(rate=22_050), "Hello"),
        cache_key(IDENTITY, OPENAI_PCM, "Hello!"),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_round_trip_and_listing(tmp_path):
    cache = PhraseCache(tmp_path, 10_000_000).open()
    key = put(cache, "Welcome", b"\x01\x02" * 1000)
    entry = cache.get(key)
    assert entry.pcm == b"\x01\x02" * 1000
    assert entry.info.text == "Welcome" and entry.info.fmt == OPENAI_PCM and entry.info.engine == "openai"
    assert [i.key for i in cache.list()] == [key]
    assert cache.get(cache_key(IDENTITY, OPENAI_PCM, "other")) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:-1],  # truncated audio
        lambda raw: raw[:-100] + bytes(100),  # flipped audio
        lambda raw: raw[:20],  # truncated header
        lambda raw: b"",  # empty file
        lambda raw: raw.replace(b'"v": 2', b'"v": 0', 1),  # a version no kiosk ever wrote
        lambda raw: raw.replace(b'"v": 2', b'"v": "3"', 1),  # not a version
        lambda raw: raw.replace(b'"blocks": ["', b'"blocks": ["0', 1),  # a block hash changed
    ],
)
def test_corrupt_entry_is_removed_logged_and_never_served(tmp_path, caplog, damage):
    cache = PhraseCache(tmp_path, 10_000_000).open()
    key = put(cache, "Welcome", os.urandom(4000))
    path = cache.path_for(key)
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert not path.exists()
    assert "corrupt" in caplog.text


def test_an_entry_of_a_later_version_is_a_miss_kept_for_it(tmp_path, caplog):
    # After an update was rolled back: the later version's entries are neither read, nor reported corrupt, nor
    # removed; speaking the line again writes it anew in this version's format.
    cache = PhraseCache(tmp_path, 10_000_000).open()
    key = put(cache, "Welcome", os.urandom(4000))
    path = cache.path_for(key)
    later = path.read_bytes().replace(b'"v": 2', b'"v": 3, "shape": {"of": "the future"}', 1)
    path.write_bytes(later)
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
        assert cache.list() == []
        ok, removed = cache.verify()
        assert cache.migrate(key) is False
    assert ok == [] and removed == []
    assert path.read_bytes() == later
    assert "corrupt" not in caplog.text
    put(cache, "Welcome", b"\x01\x02" * 100)
    assert cache.get(key).pcm == b"\x01\x02" * 100


def test_entry_under_another_key_is_refused(tmp_path):
    cache = PhraseCache(tmp_path, 10_000_000).open()
    key_a = put(cache, "A", b"\0\0" * 10)
    key_b = cache_key(IDENTITY, OPENAI_PCM, "B")
    os.rename(cache.path_for(key_a), cache.path_for(key_b))
    assert cache.get(key_b) is None


def test_lru_eviction_keeps_pinned_lines(tmp_path):
    clock = Clock(1_000_000.0)
    cache = PhraseCache(tmp_path, 35_000, clock=clock).open()
    pinned = put(cache, "pinned exhibit line", bytes(10_000))  # least recently used of all, but pinned
    cache.pin([pinned])
    clock.now += 100
    old = put(cache, "old ad-hoc", bytes(10_000))
    clock.now += 10
    recent = put(cache, "recent ad-hoc", bytes(10_000))
    clock.now += 10
    cache.get(old)  # a hit makes it recently used
    clock.now += 10
    put(cache, "newest ad-hoc", bytes(10_000))
    assert cache.contains(pinned) and cache.contains(old)
    assert not cache.contains(recent)
    assert cache.evict(0) and cache.contains(pinned)
    assert [i.key for i in cache.list()] == [pinned]


def test_verify_reports_and_removes_only_corrupt_entries(tmp_path):
    cache = PhraseCache(tmp_path, 10_000_000).open()
    good = put(cache, "good", bytes(1000))
    bad = put(cache, "bad", bytes(1000))
    path = cache.path_for(bad)
    path.write_bytes(path.read_bytes()[:-10])
    ok, removed = cache.verify()
    assert [info.key for info in ok] == [good] and [name for name, _ in removed] == [path.name]
    assert cache.contains(good) and not cache.contains(bad)


def test_leftover_temp_files_of_dead_writers_are_removed(tmp_path):
    cache = PhraseCache(tmp_path, 10_000_000).open()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{'a' * 64}.{dead.stdout.strip()}.0000{'.tmp'}"
    live = tmp_path / f".{'b' * 64}.{os.getpid()}.0000{'.tmp'}"
    stale.write_bytes(b"partial")
    live.write_bytes(b"being written")
    assert cache.remove_stale_temps() == 1
    assert not stale.exists() and live.exists()


def test_unwritable_directory_is_a_clear_error(tmp_path):
    from kiosk.errors import CacheError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot create cache directory"):
        PhraseCache(blocker / "cache", 1000).open()


KILLS = 200


def test_sigkill_mid_write_never_leaves_a_torn_entry(tmp_path):
    """A writer is SIGKILLed at random moments; no torn entry is ever served and verify finds nothing corrupt."""
    rng = random.Random(20261121)
    cache = PhraseCache(tmp_path, 1 << 40).open()
    writer = Path(__file__).with_name("cache_writer.py")
    temps_seen = 0
    for kill in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(writer), str(tmp_path), str(rng.randrange(LINES))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        proc.stdout.close()
        temps_seen += len(list(tmp_path.glob(".*.tmp")))
        for line in range(LINES):  # whatever was committed reads back exactly, or is absent
            entry = cache.get(key_for(line))
            assert entry is None or entry.pcm == expected_pcm(line), f"torn entry served after kill {kill}"
    assert temps_seen > 0, "no kill landed mid-write; the test proves nothing"
    assert len(list(cache.entries())) > 0
    cache.remove_stale_temps()
    ok, removed = cache.verify()
    assert removed == [] and len(ok) == len(list(cache.entries()))
    assert list(tmp_path.glob(".*.tmp")) == []
    header = json.loads(next(cache.entries()).read_bytes().split(b"\n", 1)[0])
    assert header["length"] > 0 and len(header["blocks"]) == -(-header["length"] // BLOCK_BYTES)
