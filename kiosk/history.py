"""The history: every press and trigger with its outcome, and the events staff see, kept in SQLite for years.

Modelled on Home Assistant's recorder: WAL mode, rows buffered in memory and committed together every
`write_every_s` (60 s by default; an SD card wears with every write, so a press writes nothing at once and a busy
minute is one transaction), or sooner when MAX_PENDING rows are waiting, and always before a read and at shutdown.
A power cut loses at most the rows of the last interval. Rows older than `keep_days` are purged once a day.

All database work runs on one thread of its own, so SQLite's connection never crosses threads
and a slow card never stalls the event loop. A database that cannot be opened (read-only or full disk) leaves the
speaker speaking: `problem` says why and nothing is recorded until it can be.

A damaged database (not SQLite, corrupt pages, tables of another shape) is never a reason to stop: whenever SQLite
says so, at the start or later, it is renamed `<file>.corrupt-<time>` (with its -wal and -shm files, kept for a
human), a new one is started, and `notice` says so; the notice is also told as an event (to `on_notice`, else
recorded in the new database, where the events loaded at the start find it). Rows of the wrong types are skipped
when read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiosk.history_csv import iso_time, outcomes_csv
from kiosk.history_summary import summarize

if TYPE_CHECKING:
    from kiosk.config import Config

log = logging.getLogger(__name__)

#: Rows kept in memory before they are written even though the interval has not passed.
MAX_PENDING = 1000
PURGE_EVERY_S = 24 * 3600
#: SQLite's result codes (the low byte of sqlite_errorcode): SQL that does not fit the tables found, and a file
#: that is damaged or is no database at all.
_SQLITE_ERROR, _SQLITE_READONLY, _SQLITE_CORRUPT, _SQLITE_NOTADB = 1, 8, 11, 26
_COMPANIONS = ("", "-wal", "-shm", "-journal")  # a database is these files together: they are set aside together
_LATEST_TIME = 1e11  # the year 5138: a later (or infinite) time is no time a press happened

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    time REAL NOT NULL, origin TEXT NOT NULL, line TEXT, source TEXT, response_ms REAL,
    outcome TEXT NOT NULL, error TEXT, text_chars INTEGER, language TEXT, clock_trusted INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
CREATE TABLE IF NOT EXISTS events (time REAL NOT NULL, text TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS fired (slot TEXT PRIMARY KEY, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
"""
#: Read at the start: every column in use and the newest rows (where writes go), so that a database of another
#: shape or with damaged pages is found now rather than at the first write.
_PROBES = (
    "SELECT time, origin, line, source, response_ms, outcome, error, text_chars, language, clock_trusted "
    "FROM requests ORDER BY time DESC LIMIT 1",
    "SELECT rowid, time, text, count FROM events ORDER BY rowid DESC LIMIT 1",
    "SELECT slot, time FROM fired ORDER BY slot DESC LIMIT 1",
)
_TIME_OK = f"typeof(time) IN ('integer', 'real') AND time BETWEEN 0 AND {_LATEST_TIME:.0f}"
_OUTCOMES = (
    "SELECT time, origin, line, source, response_ms, outcome, error, text_chars, language, clock_trusted IS NOT 0 "
    "FROM requests "
    f"WHERE time >= ? AND {_TIME_OK} AND typeof(origin) = 'text' AND typeof(outcome) = 'text' "
    "AND typeof(line) IN ('text', 'null') AND typeof(source) IN ('text', 'null') "
    "AND (response_ms IS NULL OR typeof(response_ms) IN ('integer', 'real') AND abs(response_ms) < 1e9) "
    "AND typeof(error) IN ('text', 'null') AND typeof(text_chars) IN ('integer', 'null') "
    "AND typeof(language) IN ('text', 'null') ORDER BY time"
)
#: The newest time recorded while the clock was trusted: a wall clock earlier than it is not set (kiosk.clock).
_NEWEST = f"SELECT time FROM requests WHERE clock_trusted = 1 AND {_TIME_OK} ORDER BY time DESC LIMIT 1"
_EVENTS = (
    f"SELECT time, text, count FROM events WHERE {_TIME_OK} AND typeof(text) = 'text' "
    "AND typeof(count) = 'integer' ORDER BY rowid DESC LIMIT ?"
)


@dataclass(frozen=True)
class Outcome:
    """One press or trigger and how it ended (`outcome`: done, stopped, failed, dropped, or why it was refused)."""

    time: float
    origin: str  # "button:17", "api", "staff", "schedule"
    line: str | None  # the phrase id; None for free text
    source: str | None  # "cache" or the engine that spoke; None when nothing played
    response_ms: float | None  # press → first audio
    outcome: str
    error: str | None = None
    text_chars: int | None = None
    language: str | None = None  # the language heard; None where the exhibit offers no languages
    clock_trusted: bool = True  # False: recorded while the clock was not set (kiosk.clock), so its time is doubtful


class History:
    def __init__(
        self, path: Path, *, keep_days: int, write_every_s: float = 60.0, clock: Callable[[], float] = time.time
    ):
        self.path = path
        self.keep_days = keep_days
        self.write_every_s = write_every_s
        self._many_pending = asyncio.Event()
        self._clock = clock
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Outcome, int]] = []  # with whether the clock was trusted when it was recorded
        #: Whether the wall clock can be believed now (kiosk.clock): rows recorded while not are marked.
        self.clock_trusted: Callable[[], bool] = lambda: True
        self._pending_events: list[tuple[float, str]] = []
        self._claimed_in_memory: set[str] = set()
        #: Why nothing is being recorded, or None.
        self.problem: str | None = None
        #: The last time a damaged database was set aside, in words for staff; None if it never was.
        self.notice: str | None = None
        #: Told each such notice on the event loop (e.g. the service's event log); None: recorded as an event here.
        self.on_notice: Callable[[str], None] | None = None
        self._untold: deque[str] = deque()  # notices from the database thread, told on the event loop

    # -- lifetime

    async def open(self) -> None:
        await self._in_db_thread(self._open)

    async def close(self) -> None:
        await self.flush()
        await self._in_db_thread(self._close)
        self._db_thread.shutdown(wait=False)

    async def run(self) -> None:
        """Commit what was recorded every `write_every_s`; purge old rows once a day (a supervised task)."""
        next_purge = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._many_pending.wait(), self.write_every_s)
            await self.flush()
            if self._clock() >= next_purge and self.clock_trusted():  # a wrong clock must not purge by its time
                await self._in_db_thread(self._purge)
                next_purge = self._clock() + PURGE_EVERY_S

    # -- recording (from the event loop; never blocks)

    def record(self, outcome: Outcome) -> None:
        self._pending.append((outcome, int(self.clock_trusted() and outcome.clock_trusted)))
        self._note_pending()

    def event(self, text: str, at: float | None = None) -> None:
        self._pending_events.append((self._clock() if at is None else at, text))
        self._note_pending()

    def _note_pending(self) -> None:
        if len(self._pending) + len(self._pending_events) >= MAX_PENDING:
            self._many_pending.set()

    async def flush(self) -> None:
        self._many_pending.clear()
        rows, self._pending = self._pending, []
        events, self._pending_events = self._pending_events, []
        if rows or events:
            await self._in_db_thread(self._write, rows, events)

    async def claim(self, slot: str) -> bool:
        """Mark a scheduled slot as said, committed at once; False when it was said already (before a restart).
        Without a database, slots are remembered in memory only."""
        claimed = await self._in_db_thread(self._claim, slot)
        if claimed is None:  # the database is not available
            claimed = slot not in self._claimed_in_memory
        self._claimed_in_memory.add(slot)
        return claimed

    # -- reading

    async def newest_time(self) -> float | None:
        """The newest press's time recorded while the clock was trusted; None when there is none."""
        row = await self._in_db_thread(lambda: self._connection().execute(_NEWEST).fetchone())
        return row[0] if row else None

    async def outcomes(self, days: int) -> list[Outcome]:
        await self.flush()
        return await self._in_db_thread(self._outcomes, self._clock() - days * 86400)

    async def csv(self, days: int, cfg: Config | None = None) -> str:
        """The last `days` days as CSV, oldest first, named and worded from `cfg` (kiosk.history_csv)."""
        return outcomes_csv(await self.outcomes(days), cfg)

    async def as_json(self, days: int) -> list[dict]:
        return [{**asdict(row), "time": iso_time(row.time)} for row in await self.outcomes(days)]

    async def summary(self, days: int = 30) -> dict:
        """What the staff page charts (kiosk.history_summary.summarize) over the last `days` days."""
        return summarize(await self.outcomes(days), days, self._clock())

    async def recent_events(self, count: int = 100) -> list[dict]:
        await self.flush()
        stored = await self._in_db_thread(self._recent_events, count)
        # Told while reading (a damaged database set aside just now): not in the new database yet, but recent.
        waiting = [{"time": at, "text": text, "count": 1} for at, text in self._pending_events]
        return (stored + waiting)[-count:]

    # -- on the database thread

    async def _in_db_thread(self, function: Callable, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._db_thread, self._anew_if_damaged, function, *args
            )
        except (sqlite3.Error, OSError, UnicodeDecodeError) as exc:
            if self.problem is None:
                log.error("history: %s", exc)
            self.problem = f"the history cannot be kept in {self.path} ({exc})"
            return [] if function in (self._outcomes, self._recent_events) else None
        finally:
            self._tell_notices()

    def _tell_notices(self) -> None:
        while self._untold:
            notice = self._untold.popleft()
            if self.on_notice is not None:
                self.on_notice(notice)
            else:
                self.event(notice)

    def _anew_if_damaged(self, function: Callable, *args):
        """`function`, run once more on a new database if SQLite finds this one damaged."""
        try:
            return function(*args)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            if not (_damaged(exc) or self._read_only_inside(exc)):
                raise
            self._set_aside(exc)
            return function(*args)

    def _read_only_inside(self, exc: Exception) -> bool:
        """SQLite refuses to write a file the system lets it write: the file's own header says so (a damaged byte,
        a format from the future), so it is as good as damaged. A read-only card or file is only a problem."""
        if _code(exc) != _SQLITE_READONLY:
            return False
        return os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)

    def _set_aside(self, exc: Exception) -> None:
        """Rename the damaged database and its companion files (kept for a human to look at), then start anew."""
        self._close()
        aside = _free_name(self.path, time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock())))
        for suffix in _COMPANIONS:
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{self.path}{suffix}", f"{aside}{suffix}")
        log.error("history: %s is damaged (%s); set aside as %s, a new one is started", self.path, exc, aside.name)
        self.notice = f"The history database was damaged and has been set aside as {aside.name}; a new one was started"
        self._untold.append(self.notice)  # the new database is opened by the retry (see _connection)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            _prepare(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self.problem = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._open()
        return self._db

    def _write(self, rows: list[tuple[Outcome, int]], events: list[tuple[float, str]]) -> None:
        db = self._connection()
        with _transaction(db):
            db.executemany(
                "INSERT INTO requests (time, origin, line, source, response_ms, outcome, error, text_chars, language, "
                "clock_trusted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.time, r.origin, r.line, r.source, r.response_ms, r.outcome, r.error, r.text_chars, r.language, t)
                    for r, t in rows
                ],
            )
            for at, text in events:
                self._add_event(db, at, text)
        self.problem = None

    @staticmethod
    def _add_event(db: sqlite3.Connection, at: float, text: str) -> None:
        """The same event again in a row only counts up (a flapping network is one line, 'x 12')."""
        last = db.execute("SELECT rowid, text FROM events ORDER BY rowid DESC LIMIT 1").fetchone()
        if last is not None and last[1] == text:
            db.execute("UPDATE events SET time = ?, count = count + 1 WHERE rowid = ?", (at, last[0]))
        else:
            db.execute("INSERT INTO events (time, text) VALUES (?, ?)", (at, text))

    def _claim(self, slot: str) -> bool:
        cursor = self._connection().execute("INSERT OR IGNORE INTO fired VALUES (?, ?)", (slot, self._clock()))
        return cursor.rowcount == 1

    def _outcomes(self, since: float) -> list[Outcome]:
        return [Outcome(*row[:-1], bool(row[-1])) for row in self._connection().execute(_OUTCOMES, (since,))]

    def _recent_events(self, count: int) -> list[dict]:
        cursor = self._connection().execute(_EVENTS, (count,))
        return [{"time": t, "text": text, "count": n} for t, text, n in reversed(cursor.fetchall())]

    def _purge(self) -> None:
        cutoff = self._clock() - self.keep_days * 86400
        db = self._connection()
        with _transaction(db):
            db.execute("DELETE FROM requests WHERE time < ?", (cutoff,))
            db.execute("DELETE FROM events WHERE time < ?", (cutoff,))
            db.execute("DELETE FROM fired WHERE time < ?", (self._clock() - 7 * 86400,))


def _prepare(db: sqlite3.Connection) -> None:
    """Set up a connection: WAL, the tables (created where missing, migrated where older), then the probes."""
    db.text_factory = _lenient_text  # a damaged text is shown with replacement characters, never a failed read
    try:
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer; fewer syncs per commit
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
        db.executescript(_SCHEMA)
        columns = [row[1] for row in db.execute("PRAGMA table_info(requests)")]
        if "language" not in columns:  # a database from before languages: kept, with the new column added
            db.execute("ALTER TABLE requests ADD COLUMN language TEXT")
        if "clock_trusted" not in columns:  # from before kiosk.clock: its rows were written trusting the clock
            db.execute("ALTER TABLE requests ADD COLUMN clock_trusted INTEGER NOT NULL DEFAULT 1")
        for probe in _PROBES:
            db.execute(probe).fetchall()
    except sqlite3.OperationalError as exc:
        if _code(exc) == _SQLITE_ERROR:  # our own SQL, refused: the tables found are of another shape
            raise _NotHistory(f"its tables are not the history's ({exc})") from exc
        raise


class _NotHistory(sqlite3.DatabaseError):
    """A database whose tables the history cannot use: set aside like a damaged one."""


def _damaged(exc: Exception) -> bool:
    """Whether SQLite says the file is damaged. A UnicodeDecodeError is its message about a damaged schema (which
    quotes the damaged text), failing to decode on its way to Python."""
    return isinstance(exc, _NotHistory | UnicodeDecodeError) or _code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _code(exc: Exception) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _free_name(path: Path, stamp: str) -> Path:
    """`<path>.corrupt-<stamp>`, numbered on where that is taken: a database set aside is never overwritten."""
    aside, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while any(Path(f"{aside}{suffix}").exists() for suffix in _COMPANIONS):
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    return aside


class _transaction:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind, *_rest) -> None:
        if kind is None:
            self._db.execute("COMMIT")
            return
        with contextlib.suppress(sqlite3.Error):  # the error that ended the transaction is the one that matters
            self._db.execute("ROLLBACK")
