"""The history in SQLite: batched writes, retention, events kept and de-duplicated, CSV and JSON export."""

import asyncio
import contextlib
import csv
import io
import sqlite3
import time
from datetime import datetime

import aiohttp
import pytest
from conftest import Clock
from test_service import BUTTONS, config, press, started, wait_idle

from kiosk.history import MAX_PENDING, History, Outcome
from kiosk.history_csv import CSV_COLUMNS

TIMEOUT = aiohttp.ClientTimeout(total=15)
DAY = 86400.0
NOW = 1_780_000_000.0


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def outcome(at, origin="button:17", line="welcome", outcome="done", response_ms=2.5, source="cache"):
    return Outcome(at, origin, line, source, response_ms, outcome, None, 30)


async def test_rows_are_written_in_one_batch_and_read_back(tmp_path):
    clock = Clock(NOW)
    history = History(tmp_path / "h.sqlite3", keep_days=400, clock=clock)
    await history.open()
    try:
        for i in range(50):
            history.record(outcome(clock.now + i))
        assert stored_rows(tmp_path / "h.sqlite3") == 0  # nothing is written per press: only at the next flush
        clock.now += 100
        rows = await history.outcomes(days=1)
        assert len(rows) == 50 and rows[0].line == "welcome" and rows[-1].time == clock.now - 100 + 49
        mode = sqlite3.connect(tmp_path / "h.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        await history.close()


def stored_rows(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM requests").fetchone()[0]


@contextlib.asynccontextmanager
async def writing(history: History):
    """The history open with its writer task running, as the service runs it."""
    await history.open()
    writer = asyncio.create_task(history.run())
    try:
        await asyncio.sleep(0)  # the writer is waiting
        yield history
    finally:
        writer.cancel()
        await history.close()


async def until_stored(path, count: int) -> None:
    async with asyncio.timeout(10):
        while stored_rows(path) < count:
            await asyncio.sleep(0.05)


async def test_rows_wait_for_the_interval_then_are_written_together(tmp_path):
    async with writing(History(tmp_path / "h.sqlite3", keep_days=400, write_every_s=0.5)) as history:
        for i in range(3):
            history.record(outcome(time.time() + i))
        assert stored_rows(tmp_path / "h.sqlite3") == 0  # a press writes nothing at once
        await until_stored(tmp_path / "h.sqlite3", 3)


async def test_a_flood_of_rows_is_written_before_the_interval(tmp_path):
    async with writing(History(tmp_path / "h.sqlite3", keep_days=400, write_every_s=3600)) as history:
        for i in range(MAX_PENDING):
            history.record(outcome(time.time() + i))
        await until_stored(tmp_path / "h.sqlite3", MAX_PENDING)


async def test_rows_still_in_memory_are_written_at_shutdown(tmp_path):
    history = History(tmp_path / "h.sqlite3", keep_days=400, write_every_s=3600)
    await history.open()
    history.record(outcome(time.time()))
    history.event("speaker stopped")
    await history.close()
    assert stored_rows(tmp_path / "h.sqlite3") == 1


async def test_old_rows_are_purged_after_keep_days(tmp_path):
    clock = Clock(NOW)
    history = History(tmp_path / "h.sqlite3", keep_days=2, clock=clock)
    await history.open()
    try:
        history.record(outcome(clock.now - 3 * DAY))
        history.record(outcome(clock.now - 1 * DAY))
        history.event("old news", clock.now - 3 * DAY)
        await history.flush()
        await history._in_db_thread(history._purge)
        rows = await history.outcomes(days=10)
        assert [r.time for r in rows] == [clock.now - DAY]
        assert await history.recent_events() == []
    finally:
        await history.close()


async def test_the_same_event_again_counts_up(tmp_path):
    clock = Clock(NOW)
    history = History(tmp_path / "h.sqlite3", keep_days=400, clock=clock)
    await history.open()
    try:
        for _ in range(3):
            history.event("speaker missing")
        history.event("speaker back")
        history.event("speaker missing")
        events = await history.recent_events()
        assert [(e["text"], e["count"]) for e in events] == [
            ("speaker missing", 3),
            ("speaker back", 1),
            ("speaker missing", 1),
        ]
    finally:
        await history.close()


async def test_csv_has_the_agreed_columns_and_iso_times(tmp_path):
    clock = Clock(NOW)
    history = History(tmp_path / "h.sqlite3", keep_days=400, clock=clock)
    await history.open()
    try:
        history.record(outcome(clock.now - 60))
        history.record(Outcome(clock.now - 30, "api", None, None, None, "busy", None, 12))
        rows = list(csv.reader(io.StringIO((await history.csv(days=1)).removeprefix("\ufeff"))))
        assert tuple(rows[0]) == CSV_COLUMNS
        assert tuple(rows[0][:2]) == ("Date and time", "Clock set")
        assert rows[1][3:] == ["GPIO 17", "welcome", "", "", "visitor button", "offline copy", "2", "played"]
        assert rows[2][3:] == ["", "", "", "", "show control (web API)", "not heard", "", "refused: busy speaking"]
        when = datetime.fromisoformat(rows[1][0])
        assert when.tzinfo is not None and when.timestamp() == clock.now - 60
    finally:
        await history.close()


async def test_summary_counts_presses_per_day_and_hour_without_staff_tests(tmp_path):
    clock = Clock(NOW)
    history = History(tmp_path / "h.sqlite3", keep_days=400, clock=clock)
    await history.open()
    try:
        history.record(outcome(clock.now - 2 * DAY))
        history.record(outcome(clock.now))
        history.record(outcome(clock.now, line="quartz"))
        history.record(outcome(clock.now, origin="staff"))
        summary = await history.summary(days=7)
        assert len(summary["days"]) == 7 and summary["days"][-1] == datetime.fromtimestamp(clock.now).date().isoformat()
        assert summary["presses_per_day"]["welcome"][-1] == 1 and summary["presses_per_day"]["welcome"][-3] == 1
        assert summary["presses_per_day"]["quartz"][-1] == 1
        assert sum(summary["presses_by_hour"]) == 3 and summary["total"] == 3
        assert set(summary["last_used"]) == {"button:17"}
    finally:
        await history.close()


async def test_an_unwritable_history_is_a_problem_not_a_crash(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    history = History(blocker / "h.sqlite3", keep_days=400)
    await history.open()
    history.record(outcome(1.0))
    await history.flush()
    assert history.problem and "cannot be kept" in history.problem
    assert await history.outcomes(days=1) == []
    await history.close()


async def test_presses_survive_a_restart_and_export_as_csv(server, tmp_path, alsa_file, pins):
    cfg = config(server.url, tmp_path / "c", BUTTONS)
    service = await started(cfg, alsa_file[0], pins)
    try:
        for pin in (17, 18, 19):
            press(pins, pin)
            await wait_idle(service)
        service.event("a staff note")
    finally:
        await service.stop()

    service = await started(cfg, alsa_file[0], pins)  # a new process would see the same file
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            async with http.get("/api/history.csv?days=1") as r:
                assert r.status == 200 and r.content_type == "text/csv"
                exported = await r.text()
                print(f"\n{exported}", end="")  # the export as a curator gets it (pytest -s)
                rows = list(csv.DictReader(io.StringIO(exported.removeprefix("\ufeff"))))
            async with http.get("/api/history?days=1") as r:
                as_json = await r.json()
            async with http.get("/api/history?days=0") as r:
                assert r.status == 400 and "1 to 3650" in (await r.json())["error"]
            async with http.get("/api/history?days=" + "9" * 5000) as r:
                assert r.status == 400
        presses = [(r["Button"], r["Line"], r["Outcome"]) for r in rows]
        assert presses == [
            ("GPIO 17", "welcome", "played"),
            ("GPIO 18", "quartz", "played"),
            ("GPIO 19", "quartz", "played"),
        ]
        assert rows[0]["Heard from"] in ("online voice", "offline copy") and rows[2]["Heard from"] == "offline copy"
        assert int(rows[2]["Response (ms)"]) >= 0
        assert [r["line"] for r in as_json] == ["welcome", "quartz", "quartz"]
        status = await service.status()
        kept = [e for e in status["events"] if e["text"] == "a staff note"]
        assert kept and kept[0]["date"] == datetime.now().date().isoformat()
    finally:
        await service.stop()


async def test_history_needs_the_api_token(server, tmp_path, alsa_file, pins):
    (tmp_path / "token").write_text("s3cret-token-for-tests\n")
    cfg = config(server.url, tmp_path / "c", extra=f"  token_file: {tmp_path / 'token'}\n")
    service = await started(cfg, alsa_file[0], pins)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            async with http.get("/api/history.csv") as r:
                assert r.status == 401
            async with http.get("/api/history.csv", headers={"Authorization": "Bearer s3cret-token-for-tests"}) as r:
                assert r.status == 200 and (await r.text()).startswith("\ufeffDate and time,Clock set,Exhibit")
    finally:
        await service.stop()


async def test_a_history_a_later_version_widened_keeps_working_after_a_rollback(tmp_path):
    # A later release added a table and a column with a default, then was switched back: this version reads and
    # writes the same file, and leaves what it does not know alone.
    path = tmp_path / "h.sqlite3"
    clock = Clock(NOW)
    history = History(path, keep_days=400, clock=clock)
    await history.open()
    history.record(outcome(clock.now))
    await history.flush()
    await history.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE requests ADD COLUMN heard_ms REAL DEFAULT 0")
        db.execute("CREATE TABLE visitors (time REAL, count INTEGER)")
        db.execute("INSERT INTO visitors VALUES (1, 2)")
    history = History(path, keep_days=400, clock=clock)
    await history.open()
    try:
        history.record(outcome(clock.now + 1, line="quartz"))
        await history.flush()
        assert [r.line for r in await history.outcomes(days=1)] == ["welcome", "quartz"]
        assert history.problem is None
    finally:
        await history.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count FROM visitors").fetchall() == [(2,)]
