"""Timed announcements, attract mode and opening hours, on an injected clock and a real history database."""

import asyncio
from datetime import datetime, timedelta

import pytest
from test_service import BUTTONS, config, press, started, wait_idle
from test_staff import operator, staff  # noqa: F401 (fixtures)

from kiosk.config import parse_config
from kiosk.history import History
from kiosk.schedule import Scheduler

SCHEDULE = """schedule:
  - {time: "16:45", phrase: closing}
  - {time: "09:00", phrase: opening, days: [sat, sun]}
phrases:
  closing: We close in fifteen minutes.
  opening: Good morning, we are open.
  hello: Press a button to hear about the minerals.
  hi: Come closer!
"""


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


async def scheduler_on(history_path, clock, text=SCHEDULE):
    history = History(history_path, keep_days=30)
    await history.open()
    said: list[tuple[str, str, int]] = []
    events: list[str] = []
    cfg = parse_config(text)
    scheduler = Scheduler(
        config=lambda: cfg,
        speak=lambda phrase, origin, volume: said.append((phrase, origin, volume)) or True,
        claim=history.claim,
        on_event=events.append,
        now=clock,
    )
    return scheduler, history, said, events


async def test_an_announcement_fires_once_at_its_minute(tmp_path):
    clock = Clock(datetime(2026, 12, 1, 16, 44, 30))  # a Tuesday
    scheduler, history, said, _ = await scheduler_on(tmp_path / "h.sqlite3", clock)
    try:
        await scheduler.tick()
        assert said == []
        clock.at = datetime(2026, 12, 1, 16, 45, 0)
        await scheduler.tick()
        await scheduler.tick()
        clock.at += timedelta(seconds=40)
        await scheduler.tick()
        assert said == [("closing", "schedule", 100)]
        assert scheduler.next_announcement() == {"time": "2026-12-02T16:45", "phrase": "closing"}
    finally:
        await history.close()


async def test_a_restart_never_says_it_twice(tmp_path):
    clock = Clock(datetime(2026, 12, 1, 16, 45, 5))
    first, history, said, _ = await scheduler_on(tmp_path / "h.sqlite3", clock)
    await first.tick()
    await history.close()
    assert said == [("closing", "schedule", 100)]
    clock.at += timedelta(minutes=2)  # the service restarts two minutes later, within the grace window
    second, history, said_after, _ = await scheduler_on(tmp_path / "h.sqlite3", clock)
    try:
        await second.tick()
        assert said_after == []
    finally:
        await history.close()


async def test_after_a_power_cut_a_slot_is_said_late_within_grace_and_skipped_beyond(tmp_path):
    clock = Clock(datetime(2026, 12, 1, 16, 52))  # power back 7 minutes after the slot
    scheduler, history, said, _ = await scheduler_on(tmp_path / "a.sqlite3", clock)
    await scheduler.tick()
    await history.close()
    assert said == [("closing", "schedule", 100)]

    clock = Clock(datetime(2026, 12, 1, 19, 0))  # power back two hours after the slot
    scheduler, history, said, events = await scheduler_on(tmp_path / "b.sqlite3", clock)
    await scheduler.tick()
    await scheduler.tick()
    await history.close()
    assert said == [] and events == ["skipped the 16:45 announcement 'closing': 135 min late"]


async def test_weekdays_and_quiet_hours_apply(tmp_path):
    quiet = SCHEDULE + "quiet_hours:\n  - {start: '16:30', end: '17:00', volume: 0}\n"
    clock = Clock(datetime(2026, 12, 5, 8, 59, 30))  # a Saturday
    scheduler, history, said, events = await scheduler_on(tmp_path / "h.sqlite3", clock, quiet)
    try:
        clock.at = datetime(2026, 12, 5, 9, 0, 1)
        await scheduler.tick()
        assert said == [("opening", "schedule", 100)]
        clock.at = datetime(2026, 12, 5, 16, 45, 1)
        await scheduler.tick()
        assert said == [("opening", "schedule", 100)] and "fell in quiet hours" in events[-1]
    finally:
        await history.close()
    quieter = SCHEDULE + "quiet_hours:\n  - {start: '16:30', end: '17:00', volume: 30}\n"
    clock = Clock(datetime(2026, 12, 2, 16, 45, 1))  # a Wednesday: no 09:00 slot
    scheduler, history, said, _ = await scheduler_on(tmp_path / "q.sqlite3", clock, quieter)
    try:
        await scheduler.tick()
        assert said == [("closing", "schedule", 30)]
    finally:
        await history.close()


ATTRACT = SCHEDULE + (
    "attract: {idle_minutes: 5, phrases: [hello, hi]}\n"
    "opening_hours:\n  - {open: '09:00', close: '17:00'}\n"
    "quiet_hours:\n  - {start: '12:00', end: '13:00', volume: 50}\n"
)


async def test_attract_mode_invites_in_turn_only_when_idle_open_and_not_quiet(tmp_path):
    clock = Clock(datetime(2026, 12, 1, 10, 0))
    scheduler, history, said, _ = await scheduler_on(tmp_path / "h.sqlite3", clock, ATTRACT)
    try:
        clock.at += timedelta(minutes=4, seconds=59)
        await scheduler.tick()
        assert said == []
        clock.at += timedelta(seconds=2)
        await scheduler.tick()
        await scheduler.tick()
        assert said == [("hello", "attract", 100)]
        clock.at += timedelta(minutes=3)
        scheduler.activity()  # a visitor pressed a button
        clock.at += timedelta(minutes=4)
        await scheduler.tick()
        assert len(said) == 1
        clock.at += timedelta(minutes=1, seconds=1)
        await scheduler.tick()
        assert said[-1] == ("hi", "attract", 100)
        clock.at = datetime(2026, 12, 1, 12, 30)  # quiet hours
        await scheduler.tick()
        clock.at = datetime(2026, 12, 1, 18, 0)  # closed
        await scheduler.tick()
        assert len(said) == 2
    finally:
        await history.close()


async def test_buttons_outside_opening_hours_say_the_closed_line_or_nothing(server, tmp_path, alsa_file, pins):
    extra = "opening_hours:\n  - {open: '09:00', close: '17:00'}\n"
    clock = Clock(datetime(2026, 12, 1, 20, 0))
    cfg = config(server.url, tmp_path / "c", BUTTONS + extra)
    service = await started(cfg, alsa_file[0], pins, now=clock)
    try:
        press(pins, 18)
        await asyncio.sleep(0.1)
        assert not service.speaker.history  # closed, no closed line: nothing said
        status = await service.status()
        assert status["open"] is False
        clock.at = datetime(2026, 12, 2, 10, 0)
        press(pins, 18)
        await wait_idle(service)
        assert [r.phrase for r in service.speaker.history.values()] == ["quartz"]
    finally:
        await service.stop()
    closed = BUTTONS + extra + "closed_phrase: welcome\n"
    clock = Clock(datetime(2026, 12, 1, 20, 0))
    service = await started(config(server.url, tmp_path / "c2", closed), alsa_file[0], pins, now=clock)
    try:
        press(pins, 18)
        await wait_idle(service)
        assert [r.phrase for r in service.speaker.history.values()] == ["welcome"]
    finally:
        await service.stop()


async def test_staff_edit_the_schedule(staff):  # noqa: F811
    from test_staff import PASSWORD, csrf_of, get, log_in, post, settings_of

    from kiosk.staff.auth import PasswordFile

    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/schedule")
    bad = {"csrf": token, "schedule.0.time": "16:45", "schedule.0.phrase": ""}
    status, html, _ = await post(http, "/schedule", bad)
    assert status == 400 and "must not be empty" in html and settings_of(service) is None
    good = {"csrf": token, "schedule.0.time": "16:45", "schedule.0.phrase": "quartz", "schedule.0.days": "sat"}
    assert (await post(http, "/schedule", good))[0] == 303
    assert [(a.time, a.phrase, a.days) for a in service.cfg.schedule] == [("16:45", "quartz", ("sat",))]
    _, html, _ = await get(http, "/schedule")
    assert "Next: <strong>Quartz is hard.</strong>" in html
    removed = {**good, "schedule.0.remove": "1"}
    assert (await post(http, "/schedule", removed))[0] == 303
    assert service.cfg.schedule == ()


async def test_a_line_the_schedule_says_cannot_be_deleted(staff):  # noqa: F811
    from test_staff import PASSWORD, csrf_of, log_in, post

    from kiosk.staff.auth import PasswordFile

    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/schedule")
    good = {"csrf": token, "schedule.0.time": "16:45", "schedule.0.phrase": "quartz"}
    assert (await post(http, "/schedule", good))[0] == 303
    status, html, _ = await post(http, "/lines/quartz/delete", {"csrf": token})
    assert status == 400 and "the 16:45 announcement still says this line" in html
    assert "quartz" in service.cfg.phrases
