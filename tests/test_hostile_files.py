"""Every file the service reads is hostile: whatever a file holds, the speaker starts and speaks (issue #20).

The files: cache entries and the cache's `usage.json`, the history database, the staff settings file, the staff
password file, the chime, the key and token files, and the config file itself (the one file allowed to stop
`kiosk run`, with exit 2 and one line per problem: its loader may only raise ConfigError).

Each gets hostile contents: random bytes, deep nesting (JSON and YAML), valid content cut short or with bytes
flipped, wrong types, empty, invalid UTF-8, 1 to 5 MB, a directory in its place (and, when not run as root, a file
that cannot be read). Two kinds of property:

- each loader, fed any of them, returns or raises only its documented error, and keeps what it cannot use
  (a damaged history database or staff settings file is set aside whole, never overwritten);
- end to end, a real Service (the loopback OpenAI stand-in, ALSA's file plugin) with one hostile file starts, a
  cached line plays, and the damage is reported where staff see it.

KIOSK_FUZZ_EXAMPLES sets the loaders' max_examples (default 60); KIOSK_HOSTILE_STARTS the service starts per file
(default 3; a directory, an empty file and nested brackets are started with at every run besides). A longer run,
some six minutes: KIOSK_FUZZ_EXAMPLES=2000 KIOSK_HOSTILE_STARTS=150 (add -s --hypothesis-show-statistics to see what
was drawn and what the speaker made of it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import math
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from conftest import file_sink_opener
from fake_openai import Behaviour, ThreadedFakeOpenAI
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from kiosk.cache import USAGE_FILE, PhraseCache
from kiosk.chime import load_chime, soft_chime
from kiosk.config import (
    SET_ASIDE,
    STAFF_SETTABLE,
    Config,
    load_config,
    read_secret_file,
    read_staff_settings,
    staff_settings_problem,
)
from kiosk.errors import CacheError, ConfigError
from kiosk.history import History, Outcome
from kiosk.pcm import OPENAI_PCM
from kiosk.service import Service
from kiosk.staff.account import write_settings
from kiosk.staff.auth import PasswordFile, hash_password, parse_hash
from kiosk.systemd import Notifier

WELCOME = "Welcome to the hall of minerals."
QUARTZ = "Quartz grows as six-sided prisms."
KEY = "sk-hostile-files-test"
PASSWORD = "correct horse battery"
NESTED_BRACKETS = b"[" * 2048
ENTRY_KEY = "e" * 64
LOADER_EXAMPLES = int(os.environ.get("KIOSK_FUZZ_EXAMPLES", "60"))
STARTS = int(os.environ.get("KIOSK_HOSTILE_STARTS", "3"))
PROPERTY = settings(
    max_examples=LOADER_EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the working tree; a failure prints its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TIMEOUT = aiohttp.ClientTimeout(total=15)


def with_the_single_cases(test):
    """The contents a property run draws at most once (there is one of each), in every run."""
    for content in (DIRECTORY, b"", NESTED_BRACKETS):
        test = example(content=content)(test)
    return test


pytestmark = pytest.mark.timeout(max(300, (LOADER_EXAMPLES + STARTS * 10) * 3))


# -- hostile contents


class Blob(bytes):
    """Bytes that print short: a failing example of 5 MB is shown by its size and its start."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {bytes(self[:40])!r}...>"


DIRECTORY = "a directory in its place"
UNREADABLE = "a file that cannot be read (mode 000)"
ROOT = os.geteuid() == 0  # root reads a mode-000 file: that case is left out
SPECIAL = [DIRECTORY] if ROOT else [DIRECTORY, UNREADABLE]

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**400), 10**400)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([0, 1, -1, 2**63, 1e400, "NaN"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
YAML_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats()
    | st.text(st.characters(codec="utf-8"), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _nested(opener: bytes, depth: int) -> bytes:
    return Blob(opener * depth)


def _indented(item: bytes, depth: int) -> bytes:
    return Blob(b"".join(b" " * level + item for level in range(depth)))


NESTED = st.one_of(
    st.builds(_nested, st.sampled_from([b"[", b'{"a":', b"{a: ", b"- ", b"[[", b"!!seq ["]), st.integers(33, 60_000)),
    st.builds(_indented, st.sampled_from([b"a:\n", b"- \n", b"- a:\n"]), st.integers(33, 600)),
    st.integers(33, 5_000).map(lambda n: Blob(b"[" * n + b"]" * n)),  # valid, and too deep all the same
)


def _huge(size: int, fill: bytes) -> bytes:
    if fill == b"random":
        return Blob(random.Random(size).randbytes(size))
    return Blob((fill * (size // len(fill) + 1))[:size])


HUGE = st.builds(_huge, st.integers(1 << 20, 5 << 20), st.sampled_from([b"A", b"[", b"\0", b"- a\n", b"random"]))


def _flipped(valid: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(valid)
    for at, value in flips:
        data[at % len(data)] = value
    return Blob(data)


def hostile(valid: bytes, wrong_types: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes | str]:
    """Any of the hostile contents for a file whose good content is `valid`."""
    cut_at = st.integers(0, max(0, len(valid) - 1))
    return st.one_of(
        st.binary(max_size=4096),
        st.just(b""),
        cut_at.map(lambda n: Blob(valid[:n])),  # cut short: a power cut, a full disk
        st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), min_size=1, max_size=16).map(
            lambda flips: _flipped(valid, flips)  # a bad sector
        ),
        cut_at.map(lambda n: Blob(valid[:n] + b"\xff\xfe\xc0" + valid[n:])),  # not UTF-8
        NESTED,
        wrong_types,
        HUGE,
        st.sampled_from(SPECIAL),
    )


def plant(path: Path, content: bytes | str, valid: bytes = b"") -> None:
    """Put `content` where `path` is read (a directory or an unreadable file for the special cases)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == DIRECTORY:
        path.mkdir()
        (path / "inside").write_bytes(valid or b"x")
    elif content == UNREADABLE:
        path.write_bytes(valid)
        path.chmod(0)
    else:
        path.write_bytes(content)


def tell(what: str) -> None:
    """Count `what` in the statistics of a property run (-s --hypothesis-show-statistics); outside one, nothing."""
    if currently_in_test_context():
        event(what)


def note(content: bytes | str) -> None:
    """What kind of content an example had, in the statistics hypothesis prints (-s --hypothesis-show-statistics)."""
    if isinstance(content, str):
        tell(content)
    else:
        tell("huge" if len(content) >= 1 << 20 else "empty" if not content else "bytes")


# -- good contents, and each file's wrong types


def json_bytes(value) -> bytes:
    return json.dumps(value).encode()


def yaml_bytes(value) -> bytes:
    return yaml.safe_dump(value, allow_unicode=True).encode("utf-8", "surrogatepass")


def usage_valid() -> bytes:
    return json_bytes({"v": 1, "used": {ENTRY_KEY: 1_780_000_000.0, "f" * 64: 1_780_000_100.0}})


USAGE_WRONG = st.one_of(
    JSON_VALUES.map(json_bytes),
    JSON_VALUES.map(lambda used: json_bytes({"v": 1, "used": used})),
    st.dictionaries(st.sampled_from([ENTRY_KEY, "x", ""]), JSON_VALUES, max_size=3).map(
        lambda used: json_bytes({"v": 1, "used": used})
    ),
)


def entry_wrong(valid: bytes) -> st.SearchStrategy[bytes]:
    """A real entry with one header field removed or replaced by any JSON value."""
    line, audio = valid.split(b"\n", 1)
    header = json.loads(line)

    def replaced(field: str, value) -> bytes:
        changed = {k: v for k, v in header.items() if k != field}
        if value is not _REMOVE:
            changed[field] = value
        return Blob(json_bytes(changed) + b"\n" + audio)

    fields = st.sampled_from(sorted(header))
    return st.builds(replaced, fields, st.just(_REMOVE) | JSON_VALUES) | JSON_VALUES.map(
        lambda value: Blob(json_bytes(value) + b"\n" + audio)
    )


_REMOVE = object()


@functools.cache
def entry_valid() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        cache = PhraseCache(Path(folder), 1 << 30).open()
        pcm = bytes(range(256)) * 600  # 150 KB: three blocks
        cache.put(ENTRY_KEY, pcm, fmt=OPENAI_PCM, text="a hostile line", identity={"engine": "test"})
        return cache.path_for(ENTRY_KEY).read_bytes()


@functools.cache
def history_valid() -> bytes:
    """A history database as the service leaves it: rows, events, a fired slot."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "h.db"

        async def fill() -> None:
            history = History(path, keep_days=400)
            await history.open()
            for n in range(200):
                history.record(Outcome(time.time() - n * 600, "button:17", "welcome", "cache", 2.5, "done", None, 30))
            history.event("started")
            await history.claim("slot-1")
            await history.close()

        asyncio.run(fill())
        return path.read_bytes()


def _database(statements: list[str], rows: list[tuple]) -> bytes:
    """The bytes of a SQLite database made by `statements`, then `rows` put in the history's tables."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.db"
        db = sqlite3.connect(path)
        with contextlib.suppress(sqlite3.Error):  # a statement that fails is a schema like any other
            for statement in statements:
                db.execute(statement)
            for table, values in rows:
                marks = ", ".join("?" * len(values))
                db.execute(f"INSERT INTO {table} VALUES ({marks})", values)
        db.commit()
        db.close()
        return path.read_bytes()


_OURS = [
    "CREATE TABLE requests (time REAL NOT NULL, origin TEXT NOT NULL, line TEXT, source TEXT, response_ms REAL, "
    "outcome TEXT NOT NULL, error TEXT, text_chars INTEGER, language TEXT)",
    "CREATE TABLE events (time REAL NOT NULL, text TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 1)",
    "CREATE TABLE fired (slot TEXT PRIMARY KEY, time REAL NOT NULL)",
]
_FOREIGN = [
    ["CREATE TABLE requests (a, b)"],
    ["CREATE VIEW events AS SELECT 1 AS time, 'x' AS text, 1 AS count"],
    ["CREATE TABLE events (time, text)", "CREATE TABLE requests (time)"],
    ["CREATE TABLE fired (slot, time)", "CREATE TABLE requests (x)"],
    ["CREATE TABLE something_else (x)"],
    ["CREATE INDEX requests_time ON fired (slot)", *_OURS],
]
SQL_VALUES = st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=10) | st.binary(max_size=10)
HISTORY_WRONG = st.one_of(
    st.sampled_from(_FOREIGN).map(lambda schema: _database(schema, [])),
    st.lists(
        st.tuples(st.just("requests"), st.tuples(*[SQL_VALUES] * 9))
        | st.tuples(st.just("events"), st.tuples(SQL_VALUES, SQL_VALUES, SQL_VALUES)),
        max_size=5,
    ).map(lambda rows: _database(_OURS, rows)),
    st.binary(max_size=4096).map(lambda tail: b"SQLite format 3\x00" + tail),
)


def settings_valid() -> bytes:
    lines = f"phrases:\n  welcome: {WELCOME}\n  quartz: {QUARTZ}\n"
    return b"# Written by the kiosk staff page.\naudio:\n  volume: 70\n" + lines.encode()


SETTINGS_WRONG = st.one_of(
    st.dictionaries(st.sampled_from(sorted(STAFF_SETTABLE)), YAML_VALUES, min_size=1, max_size=3).map(yaml_bytes),
    st.dictionaries(st.sampled_from(["audio", "openai", "speech"]), st.dictionaries(st.text(max_size=8), YAML_VALUES))
    .filter(bool)
    .map(yaml_bytes),
    YAML_VALUES.map(yaml_bytes),
)


@functools.cache
def password_valid() -> bytes:
    return hash_password(PASSWORD).encode() + b"\n"


_SALT = base64.b64encode(b"s" * 16).decode()
PASSWORD_WRONG = st.builds(
    lambda *fields: "$".join(fields).encode(),
    st.sampled_from(["scrypt", "bcrypt", ""]),
    st.sampled_from(["16384", "2", "0", "-4", "3", "x", str(2**20), str(2**40), "9" * 5000]),
    st.sampled_from(["8", "0", "1", "65", str(2**31)]),
    st.sampled_from(["1", "0", "5", str(10**9)]),
    st.sampled_from([_SALT, "", "!!!", "A" * 500, "A"]),
    st.sampled_from([_SALT, "", "%%%", "A" * 2000]),
)


def wav_bytes(rate: int, channels: int, bits: int, declared: int, data: bytes, tag: int = 1) -> bytes:
    """A WAV file as a header claims it, whatever it holds."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", declared) + data
    return Blob(b"RIFF" + struct.pack("<I", len(body) & 0xFFFFFFFF) + body)


@functools.cache
def chime_valid() -> bytes:
    pcm = soft_chime(24_000)
    return wav_bytes(24_000, 1, 16, len(pcm), pcm)


CHIME_WRONG = st.builds(
    wav_bytes,
    st.sampled_from([0, 1, 7_999, 8_000, 24_000, 192_001, 2**32 - 1]),
    st.integers(0, 3),
    st.sampled_from([0, 8, 16, 24, 33]),
    st.sampled_from([0, 1, 3, 4800, 2**31, 2**32 - 1]),
    st.binary(max_size=4096),
    st.sampled_from([1, 3, 0xFFFE, 0]),
)

SECRET_WRONG = st.text(max_size=64).map(lambda text: text.encode("utf-8", "surrogatepass"))
CONFIG_WRONG = st.dictionaries(
    st.sampled_from(["audio", "cache", "staff", "history", "phrases", "buttons", "api", "nonsense"]),
    YAML_VALUES,
    max_size=4,
).map(yaml_bytes)


# -- 1. regressions: nested brackets in usage.json once stopped `kiosk run` and broke `kiosk cache list`


@pytest.fixture(scope="module")
def server():
    with ThreadedFakeOpenAI(Behaviour(ms_per_char=10.0)) as fake:
        yield fake


@pytest.fixture(scope="module", autouse=True)
def api_key():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", KEY)
        yield


def write_config(home: Path, server_url: str, *, staff: bool = False) -> Path:
    path = home / "kiosk.yaml"
    staff_section = (
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {home / 'state' / 'password'}\n"
        f"  settings_file: {home / 'state' / 'staff.yaml'}\n"
        if staff
        else "staff:\n  enabled: false\n"
    )
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"speech:\n  fallback: none\n"
        f"audio:\n  chime: {home / 'chime.wav' if staff else 'soft'}\n"
        f"cache:\n  dir: {home / 'cache'}\n"
        f"history:\n  file: {home / 'history.db'}\n"
        f"api:\n  port: 0\n{staff_section}"
        f"phrases:\n  welcome: {WELCOME}\n  quartz: {QUARTZ}\n"
    )
    return path


async def start(home: Path) -> Service:
    cfg = load_config(home / "kiosk.yaml")
    device = f"file:FILE={home / 'alsa-out.raw'},FORMAT=raw"
    service = Service(cfg, open_sink=file_sink_opener(device), pin_factory=MockFactory(), notifier=Notifier({}))
    await asyncio.wait_for(service.start(), timeout=10)
    return service


async def speak(http: aiohttp.ClientSession, phrase: str) -> dict:
    """Ask the API for a line and wait (bounded) until it has ended; its summary with the trace (or the refusal)."""
    async with http.post("/api/play", json={"phrase": phrase}) as answer:
        if answer.status != 202:
            return {"state": f"refused {answer.status}", "refusal": await answer.text(), "trace": None}
        request_id = (await answer.json())["id"]
    deadline = time.monotonic() + 10
    while True:
        async with http.get(f"/api/play/{request_id}") as answer:
            summary = await answer.json()
        if summary["state"] in ("done", "stopped", "failed", "dropped"):
            return summary
        assert time.monotonic() < deadline, f"'{phrase}' did not end within 10 s: {summary}"
        await asyncio.sleep(0.02)


async def status_of(http: aiohttp.ClientSession) -> dict:
    async with http.get("/api/status") as answer:
        assert answer.status == 200
        return await answer.json()


@contextlib.asynccontextmanager
async def running(home: Path):
    service = await start(home)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            yield service, http
    finally:
        await service.stop()


async def test_nested_brackets_in_usage_json_do_not_stop_the_start(server, tmp_path):
    write_config(tmp_path, server.url)
    async with running(tmp_path) as (_service, http):
        assert (await speak(http, "welcome"))["trace"]["source"] == "openai"
    (tmp_path / "cache" / USAGE_FILE).write_bytes(NESTED_BRACKETS)
    async with running(tmp_path) as (_service, http):
        summary = await speak(http, "welcome")
        assert summary["state"] == "done" and summary["trace"]["source"] == "cache"


def kiosk(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
    return subprocess.run(
        [sys.executable, "-m", "kiosk", *args, "--config", str(home / "kiosk.yaml")],
        env={**env, "OPENAI_API_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nested_brackets_in_usage_json_do_not_break_kiosk_cache_list(tmp_path):
    (tmp_path / "kiosk.yaml").write_text(f"cache:\n  dir: {tmp_path / 'cache'}\nphrases:\n  welcome: {WELCOME}\n")
    cache = PhraseCache(tmp_path / "cache", 10**9).open()
    cache.put("a" * 64, bytes(4800), fmt=OPENAI_PCM, text="a line", identity={"engine": "test"})
    (tmp_path / "cache" / USAGE_FILE).write_bytes(NESTED_BRACKETS)
    done = kiosk("cache", "list", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "1 entries" in done.stdout and "a line" in done.stdout


def test_hostile_entries_are_listed_and_verified_without_a_traceback(tmp_path):
    """`kiosk cache list` and `verify` over entries no writer made: too deep, too large, of wrong types, a
    directory of an entry's name, a text that would drive the terminal."""
    (tmp_path / "kiosk.yaml").write_text(f"cache:\n  dir: {tmp_path / 'cache'}\nphrases:\n  welcome: {WELCOME}\n")
    cache = PhraseCache(tmp_path / "cache", 10**9).open()
    good = entry_valid()
    header = json.loads(good.split(b"\n", 1)[0])
    hostile_entries = {
        "1": b"[" * 100_000 + b"\n",
        "2": b"{" * (2 << 20),
        "3": json_bytes({**header, "key": "3" * 64, "format": [10**400, 1, 2]}) + b"\n",
        "4": json_bytes({**header, "key": "4" * 64, "created": 1e400, "text": ["a"]}) + b"\n",
        "5": json_bytes({**header, "key": "5" * 64, "identity": 5, "v": 1}) + b"\n",
        "6": json_bytes({**header, "key": "6" * 64, "loudness": {"lufs": 10**400}}) + good.split(b"\n", 1)[1],
    }
    for digit, content in hostile_entries.items():
        cache.path_for(digit * 64).write_bytes(content)
    cache.path_for("7" * 64).mkdir()
    shown = json_bytes({**header, "key": "8" * 64, "text": "\x1b[2J\x07 wipe"}) + b"\n" + good.split(b"\n", 1)[1]
    cache.path_for("8" * 64).write_bytes(shown)
    listed = kiosk("cache", "list", home=tmp_path)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert "\x1b" not in listed.stdout and "?[2J? wipe" in listed.stdout
    verified = kiosk("cache", "verify", home=tmp_path)
    assert verified.returncode == 1 and "Traceback" not in verified.stderr, verified.stderr
    assert verified.stdout.count("removed ") == len(hostile_entries) and "\x1b" not in verified.stdout
    left = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".pcm")
    assert left == ["7" * 64 + ".pcm", "8" * 64 + ".pcm"]  # the directory is no entry; the odd text is only text


# -- 2. each loader, fed anything, returns or raises only what it documents


@PROPERTY
@with_the_single_cases
@given(content=hostile(usage_valid(), USAGE_WRONG))
def test_any_usage_index_leaves_the_cache_usable(tmp_path_factory, content):
    note(content)
    root = tmp_path_factory.mktemp("usage")
    PhraseCache(root, 10**9).open().put(ENTRY_KEY, bytes(4800), fmt=OPENAI_PCM, text="a line", identity={})
    plant(root / USAGE_FILE, content, usage_valid())
    cache = PhraseCache(root, 10**9).open()  # a new one (a restart): it knows the last uses from the index only
    infos = cache.list()
    assert [info.key for info in infos] == [ENTRY_KEY]
    time.localtime(infos[0].last_used)  # what `kiosk cache list` prints: a time the clock can show
    assert cache.get(ENTRY_KEY) is not None
    with contextlib.suppress(CacheError):  # a directory in its place cannot be replaced: said, never raised
        cache.close()
    assert cache.contains(ENTRY_KEY)


@PROPERTY
@given(data=st.data())
def test_any_entry_is_played_or_removed_never_raised(tmp_path_factory, data):
    good = entry_valid()
    content = data.draw(hostile(good, entry_wrong(good)))
    note(content)
    cache = PhraseCache(tmp_path_factory.mktemp("entry"), 10**9).open()
    path = cache.path_for(ENTRY_KEY)
    plant(path, content, good)
    audio = cache.open_entry(ENTRY_KEY)
    if audio is not None:
        audio.close()
    entry = cache.get(ENTRY_KEY)
    assert entry is None or entry.pcm == good.split(b"\n", 1)[1]  # what plays is the audio as it was made
    for info in cache.list():
        assert isinstance(info.text, str) and isinstance(info.engine, str)
        assert math.isfinite(info.duration_s) and time.localtime(info.last_used)
    plant(path, content, good)
    ok, removed = cache.verify()
    assert len(ok) + len(removed) == (0 if content == DIRECTORY else 1)
    cache.migrate(ENTRY_KEY)
    if path.is_file():  # what is left after verify is an entry that plays
        assert cache.get(ENTRY_KEY) is not None
    assert cache.contains(ENTRY_KEY) == bool(ok)


@PROPERTY
@with_the_single_cases
@given(content=hostile(history_valid(), HISTORY_WRONG))
def test_any_history_database_is_used_or_set_aside_and_a_new_one_started(tmp_path_factory, content):
    note(content)
    home = tmp_path_factory.mktemp("history")
    path = home / "h.db"
    plant(path, content, history_valid())
    history = asyncio.run(exercise_history(path))
    aside = sorted(home.glob("h.db.corrupt-*"))
    if content in (DIRECTORY, UNREADABLE):
        assert history.problem and str(path) in history.problem
        return
    assert history.problem is None, history.problem  # the history works: the old database or a new one
    if aside:
        assert history.notice and aside[0].name in history.notice
        if not content.startswith(b"SQLite format 3\x00"):
            assert aside[0].read_bytes() == content  # kept exactly as found (SQLite never wrote to it)
    else:
        assert history.notice is None


async def exercise_history(path: Path) -> History:
    """Every use the service makes of the history; nothing may raise."""
    history = History(path, keep_days=400)
    await history.open()
    await history.recent_events()
    history.record(Outcome(time.time(), "api", "welcome", "cache", 3.0, "done", None, 30))
    history.event("started")
    await history.flush()
    await history.claim("slot-2")
    await history.summary(days=30)
    await history.csv(days=3650)
    await history.as_json(days=3650)
    await history.close()
    return history


def operator_config(home: Path) -> Path:
    path = home / "kiosk.yaml"
    path.write_text(
        f"staff:\n  settings_file: {home / 'staff.yaml'}\naudio:\n  volume: 50\n"
        f"buttons:\n  - pin: 17\n    phrase: welcome\nphrases:\n  welcome: {WELCOME}\n"
    )
    return path


@PROPERTY
@with_the_single_cases
@given(content=hostile(settings_valid(), SETTINGS_WRONG))
def test_any_staff_settings_file_never_stops_the_config_and_is_never_lost(tmp_path_factory, content):
    note(content)
    home = tmp_path_factory.mktemp("settings")
    operator, path = operator_config(home), home / "staff.yaml"
    plant(path, content, settings_valid())
    cfg = load_config(operator)
    assert isinstance(cfg, Config)
    aside = sorted(home.glob(f"staff.yaml{SET_ASIDE}*"))
    if content == DIRECTORY:
        assert not aside and path.is_dir() and staff_settings_problem(path)
        return
    if aside:
        assert cfg.audio.volume == 50  # the operator's file alone
        assert staff_settings_problem(path) and aside[0].name in staff_settings_problem(path)
    kept = [*aside, path] if path.exists() else aside
    expected = settings_valid() if content == UNREADABLE else content
    assert expected in [p.read_bytes() for p in kept]
    read_staff_settings(path)
    write_settings(path, {"audio": {"volume": 60}})  # a staff save after it: what it held is still kept
    kept = [p for p in home.iterdir() if p.name.startswith("staff.yaml") and p.is_file()]
    assert expected in [p.read_bytes() for p in kept]


@PROPERTY
@with_the_single_cases
@given(content=hostile(password_valid(), PASSWORD_WRONG))
def test_any_password_file_asks_for_a_password_or_checks_one(tmp_path_factory, content):
    note(content)
    path = tmp_path_factory.mktemp("password") / "password"
    plant(path, content, password_valid())
    passwords = PasswordFile(path)
    started = time.monotonic()
    usable = passwords.is_set()
    checked = passwords.check(PASSWORD)
    assert time.monotonic() - started < 5  # no file makes a login wait (scrypt's costs are bounded)
    if isinstance(content, bytes) and content.strip() == password_valid().strip():
        assert checked
    if checked:  # only for the hash of this password: its salt and costs, its digest (perhaps cut short, not much)
        n, r, p, salt, digest = parse_hash(content.decode("ascii"))
        real = parse_hash(password_valid().decode("ascii"))
        assert (n, r, p, salt) == real[:4] and real[4].startswith(digest) and len(digest) >= 32
    assert (passwords.problem() is None) == usable  # a file that is there and holds no hash: staff are told why


@PROPERTY
@with_the_single_cases
@given(content=hostile(chime_valid(), CHIME_WRONG))
def test_any_chime_file_is_a_chime_or_a_config_error(tmp_path_factory, content):
    note(content)
    path = tmp_path_factory.mktemp("chime") / "chime.wav"
    plant(path, content, chime_valid())
    try:
        chime = load_chime(str(path), OPENAI_PCM)
    except ConfigError as exc:
        assert len(exc.problems) == 1 and "\n" not in exc.problems[0]
        return
    assert 8_000 <= chime.fmt.rate <= 192_000 and chime.pcm and len(chime.pcm) % 2 == 0


@PROPERTY
@with_the_single_cases
@given(content=hostile(b"sk-proj-abc123\n", SECRET_WRONG))
def test_any_key_or_token_file_is_a_secret_or_a_config_error(tmp_path_factory, content):
    note(content)
    path = tmp_path_factory.mktemp("secret") / "key"
    plant(path, content, b"sk-proj-abc123\n")
    try:
        secret = read_secret_file(path, "openai.api_key_file")
    except ConfigError as exc:
        assert len(exc.problems) == 1 and exc.problems[0].startswith("openai.api_key_file: ")
        return
    assert secret and secret.isprintable() and secret == secret.strip()


@PROPERTY
@with_the_single_cases
@given(content=hostile(b"audio:\n  volume: 40\nphrases:\n  welcome: Welcome.\n", CONFIG_WRONG))
def test_any_config_file_is_a_config_or_a_config_error(tmp_path_factory, content):
    note(content)
    path = tmp_path_factory.mktemp("config") / "kiosk.yaml"
    plant(path, content, b"audio:\n  volume: 40\n")
    try:
        load_config(path, staff_settings={})
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and "\n" not in p for p in exc.problems)


# -- 3. end to end: a real Service with one hostile file starts, plays a cached line and says what it found


class Logged(logging.Handler):
    """Warnings and errors logged under `kiosk` while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> Logged:
        logging.getLogger("kiosk").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("kiosk").removeHandler(self)


@pytest.fixture(scope="module")
def template(server, tmp_path_factory) -> Path:
    """A speaker's files after a first run: both lines cached, a history, a password, settings and a chime."""
    home = tmp_path_factory.mktemp("template")
    write_config(home, server.url, staff=True)
    plant(home / "state" / "password", password_valid())
    plant(home / "state" / "staff.yaml", settings_valid())
    plant(home / "chime.wav", chime_valid())

    async def first_run() -> None:
        async with running(home) as (_service, http):
            for phrase in ("welcome", "quartz"):
                await speak(http, phrase)

    asyncio.run(first_run())
    return home


def entry_of(home: Path, text: str) -> Path:
    for path in (home / "cache").glob("*.pcm"):
        if json.loads(path.read_bytes().split(b"\n", 1)[0])["text"] == text:
            return path
    raise AssertionError(f"no cache entry for {text!r}")


#: Per file: where it lies in a speaker's home, and its good content there.
FILES: dict[str, Callable[[Path], Path]] = {
    "usage": lambda home: home / "cache" / USAGE_FILE,
    "entry": lambda home: entry_of(home, QUARTZ),
    "history": lambda home: home / "history.db",
    "settings": lambda home: home / "state" / "staff.yaml",
    "password": lambda home: home / "state" / "password",
    "chime": lambda home: home / "chime.wav",
}
HOSTILE: dict[str, Callable[[bytes], st.SearchStrategy]] = {
    "usage": lambda good: hostile(good, USAGE_WRONG),
    "entry": lambda good: hostile(good, entry_wrong(good)),
    "history": lambda good: hostile(good, HISTORY_WRONG),
    "settings": lambda good: hostile(good, SETTINGS_WRONG),
    "password": lambda good: hostile(good, PASSWORD_WRONG),
    "chime": lambda good: hostile(good, CHIME_WRONG),
}


@pytest.mark.parametrize("kind", sorted(FILES))
@settings(PROPERTY, max_examples=STARTS)
@given(data=st.data())
def test_a_speaker_with_any_hostile_file_starts_and_speaks(server, template, tmp_path_factory, kind, data):
    start_with_one_hostile_file(server, template, tmp_path_factory, kind, lambda good: data.draw(HOSTILE[kind](good)))


@pytest.mark.parametrize("content", [DIRECTORY, b"", NESTED_BRACKETS], ids=["directory", "empty", "nested"])
@pytest.mark.parametrize("kind", sorted(FILES))
def test_a_speaker_with_a_directory_empty_or_nested_file_starts_and_speaks(
    server, template, tmp_path_factory, kind, content
):
    """The cases a property run draws at most once (there is one of each), at every run."""
    start_with_one_hostile_file(server, template, tmp_path_factory, kind, lambda _good: content)


def start_with_one_hostile_file(server, template, tmp_path_factory, kind: str, draw: Callable[[bytes], object]):
    home = tmp_path_factory.mktemp(f"start-{kind}")
    shutil.copytree(template, home, dirs_exist_ok=True)
    write_config(home, server.url, staff=True)
    path = FILES[kind](home)
    good = path.read_bytes()
    content = draw(good)
    note(content)
    plant(path, content, good)
    with Logged() as logged:
        found = asyncio.run(start_and_speak(home))
    welcome, quartz = found["welcome"], found["quartz"]
    if not (kind == "settings" and staff_settings_in_use(home)):  # staff's own lines or voice: not what was cached
        assert welcome["state"] == "done" and welcome["trace"]["source"] == "cache", welcome
        assert kind == "entry" or quartz["state"] == "done", quartz
    CHECKS[kind](home, path, content, good, found, logged.lines)


async def start_and_speak(home: Path) -> dict:
    """Start, play the cached line (and the other one), look at the status and the staff page, stop."""
    async with running(home) as (service, http):
        notice_at_start = service.history.notice
        welcome = await speak(http, "welcome")
        quartz = await speak(http, "quartz")
        async with http.get("/api/history", params={"days": "30"}) as answer:
            assert answer.status == 200
        staff_status = await staff_page_status(service.staff_port)
        return {
            "status": await status_of(http),
            "staff_page": staff_status,
            "history_notice": service.history.notice,
            "history_notice_at_start": notice_at_start,
            "chime": service.announcer.chime,
            "welcome": welcome,
            "quartz": quartz,
        }


async def staff_page_status(port: int) -> int:
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=TIMEOUT) as staff,
        staff.get("/", allow_redirects=False) as answer,
    ):
        return answer.status


def staff_settings_in_use(home: Path) -> bool:
    """Whether the staff settings were good and change the config (their own lines, another voice)."""
    config = home / "kiosk.yaml"
    return load_config(config) != load_config(config, staff_settings={})


def events_of(found: dict) -> list[str]:
    return [e["text"] for e in found["status"]["events"]]


def check_usage(home, path, content, good, found, logs) -> None:
    readable = False
    with contextlib.suppress(ValueError, RecursionError, TypeError, KeyError):
        readable = isinstance(json.loads(content)["used"], dict)
    tell(f"usage: {'read' if readable else 'ignored, said so'}")
    if not readable:  # the index is rebuilt at the next save: a warning, not a problem for staff
        assert any("last-used index" in line for line in logs), logs


def check_entry(home, path, content, good, found, logs) -> None:
    quartz = found["quartz"]
    if content == DIRECTORY:  # nothing can be kept in its place: staff are told, the line still plays
        assert quartz["state"] == "done" and quartz["trace"]["source"] == "openai"
        assert any("New lines cannot be kept" in p for p in found["status"]["problems"])
    elif plays(content, path):
        tell("entry: still a good entry")
        assert quartz["state"] == "done" and quartz["trace"]["source"] == "cache"
    else:
        tell(
            f"entry: removed ({'made again' if quartz['trace']['source'] == 'openai' else 'cut at a bad block'})"
        )  # made again, or (a later block damaged) cut where the damage begins; either way the entry is gone
        assert quartz["trace"]["source"] == "openai" or "does not match" in str(quartz["trace"]["error"]), quartz
        assert path.read_bytes() != content
        assert any("corrupt" in line for line in logs), logs


def plays(content: bytes, path: Path) -> bool:
    """Whether an entry with `content` plays whole, as the cache's own reader says, in a cache of its own."""
    with tempfile.TemporaryDirectory() as folder:
        cache = PhraseCache(Path(folder), 1 << 30)
        (Path(folder) / path.name).write_bytes(content)
        return cache.get(path.stem) is not None


def check_history(home, path, content, good, found, logs) -> None:
    aside = sorted(home.glob("history.db.corrupt-*"))
    problems = found["status"]["problems"]
    if content in (DIRECTORY, UNREADABLE):
        assert any("Presses are not being recorded" in p for p in problems), problems
        return
    assert not any("Presses are not being recorded" in p for p in problems), problems  # the old one or a new one
    tell(f"history: {'set aside' if aside else 'kept'}")
    if aside:
        notice = found["history_notice"]
        assert notice and aside[0].name in notice
        if found["history_notice_at_start"]:
            assert notice in events_of(found)  # found at the start: among the events the status shows


def check_settings(home, path, content, good, found, logs) -> None:
    aside = sorted(path.parent.glob(f"{path.name}{SET_ASIDE}*"))
    tell(f"settings: {'set aside' if aside else 'kept'}")
    if aside or content == DIRECTORY:
        assert staff_settings_problem(path)
    expected = good if content == UNREADABLE else content
    kept = [p.read_bytes() for p in [*aside, path] if p.is_file()]
    assert content == DIRECTORY or expected in kept


def check_password(home, path, content, good, found, logs) -> None:
    usable = PasswordFile(path).is_set()
    tell(f"password: {'usable' if usable else 'asks for a new one'}")
    assert found["staff_page"] == (303 if usable else 503)  # the login page, or "set a password first"
    assert usable or PasswordFile(path).problem()


def check_chime(home, path, content, good, found, logs) -> None:
    try:
        load_chime(str(path), OPENAI_PCM)
    except ConfigError:
        tell("chime: none, said so")
        assert found["chime"] is None
        assert any(text.startswith("no chime: ") for text in events_of(found)), events_of(found)
    else:
        assert found["chime"] is not None


CHECKS = {
    "usage": check_usage,
    "entry": check_entry,
    "history": check_history,
    "settings": check_settings,
    "password": check_password,
    "chime": check_chime,
}


# -- 4. a key or token file that cannot be read: the speaker starts, says so, and the API stays closed


@pytest.mark.parametrize("content", [b"\xff\xfe not UTF-8\n", DIRECTORY], ids=["not-utf8", "directory"])
def test_a_speaker_with_a_damaged_key_file_starts_and_speaks(server, template, tmp_path_factory, content):
    home = tmp_path_factory.mktemp("key")
    shutil.copytree(template, home, dirs_exist_ok=True)
    config = write_config(home, server.url, staff=True)
    config.write_text(config.read_text().replace("openai:\n", f"openai:\n  api_key_file: {home / 'key'}\n", 1))
    plant(home / "key", content, b"sk-key\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OPENAI_API_KEY")
        found = asyncio.run(start_and_speak(home))
    assert any("api_key_file" in p for p in found["status"]["problems"])


@pytest.mark.parametrize(
    "content", [b"\xff\xfe not UTF-8\n", b"tok\x00en\n", DIRECTORY], ids=["not-utf8", "nul", "dir"]
)
async def test_a_damaged_api_token_file_closes_the_api_and_says_why(server, tmp_path, content):
    write_config(tmp_path, server.url)
    config = tmp_path / "kiosk.yaml"
    config.write_text(config.read_text().replace("api:\n", f"api:\n  token_file: {tmp_path / 'token'}\n", 1))
    plant(tmp_path / "token", content, b"a-good-token\n")
    async with running(tmp_path) as (service, http):
        async with http.post("/api/play", json={"phrase": "welcome"}) as answer:
            assert answer.status == 401  # closed, never open: nobody holds the token the service made up
        assert (await http.get("/healthz")).status == 200
        problems = (await service.status())["problems"]
        assert any(p.startswith("The API token cannot be read (api.token_file:") for p in problems), problems
