"""A clock it can doubt (kiosk.clock): nothing announced, nothing reported skipped and the fallback hours while the
clock is not set; jumps neither repeat nor mass-fire; the words staff and the doctor see."""

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import Clock
from test_doctor import EXAMPLE
from test_schedule import SCHEDULE
from test_schedule import Clock as WallClock
from test_service import BUTTONS, config, press, started, wait_idle

from kiosk import clock
from kiosk.config import parse_config
from kiosk.doctor import needs_sudo
from kiosk.history import History, Outcome
from kiosk.schedule import Scheduler

HOURS = SCHEDULE + (
    "opening_hours:\n  - {open: '09:00', close: '17:00'}\nquiet_hours:\n  - {start: '00:00', end: '23:59', volume: 0}\n"
)


DOCTOR = [sys.executable, "-m", "kiosk", "doctor"]


class Trust:
    """Whether the clock is set, as a test says."""

    def __init__(self, trusted: bool):
        self.trusted = trusted

    def __call__(self) -> bool:
        return self.trusted


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


async def scheduler_on(path, wall, trust, mono=None, text=SCHEDULE):
    history = History(path, keep_days=30)
    await history.open()
    said, events = [], []
    cfg = parse_config(text)
    scheduler = Scheduler(
        config=lambda: cfg,
        speak=lambda phrase, origin, volume: said.append((phrase, origin, volume)) or True,
        claim=history.claim,
        on_event=events.append,
        now=wall,
        trusted=trust,
        monotonic=mono,
    )
    return scheduler, history, said, events


async def ticks(scheduler, wall, mono, seconds, step=30):
    """The scheduler ticking as time passes evenly: `seconds` of both clocks, a tick every `step`."""
    for _ in range(seconds // step):
        wall.at += timedelta(seconds=step)
        mono.now += step
        await scheduler.tick()


# -- the clock itself


def test_the_clock_is_not_set_until_the_system_says_so_and_notices_when_it_is():
    synced, changes = Trust(False), []
    trusted = clock.TrustedClock(probe=synced, on_change=changes.append)
    assert trusted.trusted() is False and trusted.problem() == "clock not set"
    assert trusted.check() is False and changes == []
    synced.trusted = True
    assert trusted.check() is True and trusted.problem() is None and changes == [True]
    assert trusted.check() is True and changes == [True]  # told once
    off = clock.TrustedClock(probe=Trust(False), enabled=False)  # clock.check: false (a real-time clock module)
    assert off.trusted() is True


def test_a_wall_clock_earlier_than_the_history_is_not_set():
    wall = Clock(1_700_000_000.0)
    trusted = clock.TrustedClock(probe=lambda: True, wall=wall)
    trusted.check()
    trusted.not_before(1_700_000_500.0)  # the newest press recorded
    assert trusted.trusted() is False and trusted.problem() == "clock not set"
    wall.now = 1_700_000_600.0
    assert trusted.trusted() is True
    trusted.not_before(None)  # an empty history changes nothing
    assert trusted.trusted() is True


def test_the_probes_answer_or_say_they_cannot_tell(tmp_path):
    flag = tmp_path / "synchronized"
    assert clock.timesyncd_flag(flag) is None  # absent: timesyncd may simply not be the one keeping time
    flag.touch()
    assert clock.timesyncd_flag(flag) is True
    assert clock.kernel() in (True, False)  # adjtimex answers on Linux (this machine: not synchronized)
    assert SYSTEM_SYNCHRONIZED() in (True, False)


#: The real probe chain: conftest's autouse synchronized_clock replaces kiosk.clock.system_synchronized in every test.
SYSTEM_SYNCHRONIZED = clock.system_synchronized

# What chronyc and timedatectl print (chrony 4.3 and systemd 252 on Debian 12), for the programs that stand in for
# them: neither can run here without taking over this machine's clock.
CHRONY_TRACKING = """Reference ID    : C0A80001 (192.168.0.1)
Stratum         : 3
Ref time (UTC)  : Fri Dec 04 10:31:07 2026
System time     : 0.000012345 seconds fast of NTP time
Leap status     : {leap}
"""


def stand_in(directory: Path, name: str, body: str) -> None:
    program = directory / name
    program.write_text(f"#!/bin/sh\n{body}\n")
    program.chmod(0o755)


@pytest.mark.parametrize(
    ("name", "body", "probe", "answer"),
    [
        ("chronyc", f"cat <<'EOF'\n{CHRONY_TRACKING.format(leap='Normal')}EOF", clock.chrony, True),
        ("chronyc", f"cat <<'EOF'\n{CHRONY_TRACKING.format(leap='Not synchronised')}EOF", clock.chrony, False),
        ("chronyc", "echo '506 Cannot talk to daemon'; exit 1", clock.chrony, None),
        ("chronyc", "echo 'Leap status'", clock.chrony, None),
        ("chronyc", "sleep 30", clock.chrony, None),
        ("timedatectl", "echo yes", clock.timedatectl, True),
        ("timedatectl", "echo no", clock.timedatectl, False),
        ("timedatectl", "echo 'Failed to connect to bus'; exit 1", clock.timedatectl, None),
        ("timedatectl", "echo maybe", clock.timedatectl, None),
    ],
)
def test_chrony_and_timedatectl_are_read_or_say_they_cannot_tell(tmp_path, monkeypatch, name, body, probe, answer):
    stand_in(tmp_path, name, body)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    started = time.monotonic()
    assert probe() is answer
    assert time.monotonic() - started < clock.PROBE_TIMEOUT_S + 2  # a hung program is given up on


def test_the_first_probe_that_can_tell_decides(tmp_path, monkeypatch):
    stand_in(tmp_path, "chronyc", f"cat <<'EOF'\n{CHRONY_TRACKING.format(leap='Not synchronised')}EOF")
    stand_in(tmp_path, "timedatectl", "echo yes")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", tmp_path / "absent")
    monkeypatch.setattr(clock.timesyncd_flag, "__defaults__", (tmp_path / "absent",))
    assert SYSTEM_SYNCHRONIZED() is False  # chrony, asked before timedatectl, says not synchronized
    (tmp_path / "chronyc").unlink()
    assert SYSTEM_SYNCHRONIZED() is True


async def test_a_history_knows_its_newest_trusted_time_and_marks_rows(tmp_path):
    trust = Trust(True)
    history = History(tmp_path / "h.sqlite3", keep_days=30)
    history.clock_trusted = trust
    await history.open()
    try:
        assert await history.newest_time() is None
        history.record(Outcome(2000.0, "api", "a", None, None, "done"))
        trust.trusted = False
        history.record(Outcome(9000.0, "api", "a", None, None, "done"))  # a clock not set: marked, not believed
        await history.flush()
        assert await history.newest_time() == 2000.0
    finally:
        await history.close()
    rows = sqlite3.connect(tmp_path / "h.sqlite3").execute("SELECT time, clock_trusted FROM requests ORDER BY time")
    assert rows.fetchall() == [(2000.0, 1), (9000.0, 0)]


async def test_a_history_from_before_the_clock_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE requests (time REAL NOT NULL, origin TEXT NOT NULL, line TEXT, source TEXT, response_ms REAL,"
        " outcome TEXT NOT NULL, error TEXT, text_chars INTEGER, language TEXT);"
        "INSERT INTO requests VALUES (1234.0, 'api', 'a', NULL, NULL, 'done', NULL, 3, NULL);"
    )
    db.commit()
    db.close()
    history = History(path, keep_days=36500)
    await history.open()
    try:
        assert history.problem is None and history.notice is None  # kept, not set aside
        assert await history.newest_time() == 1234.0
        assert len(await history.outcomes(days=36500)) == 1
    finally:
        await history.close()


# -- the scheduler


async def test_an_unsynchronized_boot_fires_nothing_and_reports_nothing_skipped(tmp_path):
    wall, mono, trust = WallClock(datetime(2026, 12, 1, 16, 50)), Clock(), Trust(False)  # 5 min after the slot
    scheduler, history, said, events = await scheduler_on(tmp_path / "h.sqlite3", wall, trust, mono)
    try:
        await scheduler.tick()
        await ticks(scheduler, wall, mono, 24 * 3600, step=600)  # a whole day without the clock set
        assert said == [] and events == [] and scheduler.next_announcement() is None
    finally:
        await history.close()


async def test_sync_arriving_later_resumes_from_then_on_and_fires_nothing_for_the_past(tmp_path):
    wall, mono, trust = WallClock(datetime(1970, 1, 1, 0, 1)), Clock(), Trust(False)  # booted at 1970
    scheduler, history, said, events = await scheduler_on(tmp_path / "h.sqlite3", wall, trust, mono)
    try:
        await ticks(scheduler, wall, mono, 120)
        wall.at, trust.trusted = datetime(2026, 12, 1, 16, 47), True  # synchronized 2 min after the slot
        mono.now += 1
        await scheduler.tick()
        await ticks(scheduler, wall, mono, 600)
        assert said == [] and not any("skipped" in e for e in events)
        assert scheduler.next_announcement() == {"time": "2026-12-02T16:45", "phrase": "closing"}
        wall.at, mono.now = datetime(2026, 12, 2, 16, 44), mono.now + 24 * 3600 - 300
        await scheduler.tick()
        await ticks(scheduler, wall, mono, 120)
        assert said == [("closing", "schedule", 100)]
    finally:
        await history.close()


async def test_a_jump_back_a_day_repeats_nothing(tmp_path):
    wall, mono, trust = WallClock(datetime(2026, 12, 1, 16, 44)), Clock(), Trust(True)
    scheduler, history, said, events = await scheduler_on(tmp_path / "h.sqlite3", wall, trust, mono)
    try:
        await scheduler.tick()
        events.clear()  # the start's look back a day: yesterday's slot reported skipped, once
        await ticks(scheduler, wall, mono, 120)
        assert said == [("closing", "schedule", 100)]
        wall.at -= timedelta(days=1, minutes=3)  # set back a day, to 16:43 the day before
        mono.now += 1
        await scheduler.tick()
        await ticks(scheduler, wall, mono, 3600)
        assert said == [("closing", "schedule", 100)]
        assert not any("skipped" in e for e in events) and any("clock jumped" in e for e in events)
    finally:
        await history.close()


async def test_a_jump_forward_a_year_neither_mass_fires_nor_floods_skips(tmp_path):
    wall, mono, trust = WallClock(datetime(2026, 12, 1, 10, 0)), Clock(), Trust(True)
    scheduler, history, said, events = await scheduler_on(tmp_path / "h.sqlite3", wall, trust, mono)
    try:
        await scheduler.tick()
        events.clear()  # the start's look back a day
        wall.at += timedelta(days=365)
        mono.now += 1
        await scheduler.tick()
        await ticks(scheduler, wall, mono, 120)
        assert said == [] and len(events) == 1 and "clock jumped +525600 min" in events[0]
        wall.at = datetime(2027, 12, 1, 16, 44, 30)  # set by hand to a later time the same day: a jump too
        mono.now += 1
        await scheduler.tick()
        await ticks(scheduler, wall, mono, 60)
        assert said == [("closing", "schedule", 100)]  # and from there on, on time
    finally:
        await history.close()


def test_hours_follow_the_fallback_while_the_clock_is_not_set():
    cfg = parse_config(HOURS)
    night = datetime(2026, 12, 1, 23, 0)
    assert clock.is_open(cfg, True, night) is False and clock.quiet_volume(cfg, True, night) == 0
    assert clock.is_open(cfg, False, night) is True and clock.quiet_volume(cfg, False, night) is None
    closed = parse_config(HOURS + "clock: {untrusted_hours: closed}\n")
    assert clock.is_open(closed, False, datetime(2026, 12, 1, 12, 0)) is False


# -- the service: presses, history rows, status and MQTT words


async def test_a_service_without_a_set_clock(server, tmp_path, alsa_file, pins):
    extra = "opening_hours:\n  - {open: '09:00', close: '17:00'}\nquiet_hours:\n  - {start: '18:00', end: '23:00'}\n"
    synced = Trust(False)
    cfg = config(server.url, tmp_path / "c", BUTTONS + extra)
    wall = WallClock(datetime(2026, 12, 1, 20, 0))  # closed and quiet, by a clock nobody can believe
    service = await started(cfg, alsa_file[0], pins, now=wall, clock_probe=synced)
    try:
        status = await service.status()
        assert status["clock"] == {"trusted": False, "state": "clock not set"}
        assert status["open"] is True and status["headline"].startswith("Needs attention: Clock not set")
        assert (await service.fleet.snapshot())["clock"] == "clock not set"
        press(pins, 18)  # always open meanwhile, quiet hours off: said
        await wait_idle(service)
        assert [r.phrase for r in service.speaker.history.values()] == ["quartz"]
        await service.history.flush()
        rows = sqlite3.connect(cfg.history.file).execute("SELECT clock_trusted FROM requests").fetchall()
        assert rows == [(0,)]
        synced.trusted = True
        await asyncio.wait_for(asyncio.to_thread(service.parts.clock.check), 5)
        status = await service.status()
        assert status["clock"]["state"] == "set" and status["open"] is False
        assert any("the clock is set" in e["text"] for e in status["events"])
        assert (await service.fleet.snapshot())["clock"] == "set"
    finally:
        await service.stop()


# -- the doctor


def test_the_doctor_says_clock_not_set_on_this_unsynchronized_machine(tmp_path, alsa_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
    result = subprocess.run(
        [*DOCTOR, "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "c"), "--device", "hw:CARD=Nope"],
        env=dict(env, GPIOZERO_PIN_FACTORY="mock"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    clock_line = next(line for line in result.stdout.splitlines() if line.split(None, 1)[1].startswith("clock:"))
    synchronized = subprocess.run(
        [sys.executable, "-c", "from kiosk.clock import system_synchronized as s; print(s())"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    if synchronized == "False":
        assert clock_line.startswith("WARN  clock: clock not set:")
    else:
        assert clock_line == "OK    clock: synchronized"
    assert "ALSA lib" not in result.stderr  # alsa-lib's own lines from C stay off the terminal
    assert "FAIL  audio device: cannot open ALSA device 'hw:CARD=Nope'" in result.stdout


def test_the_doctor_as_a_user_who_cannot_read_the_config_says_to_use_sudo(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the doctor as another user")
    tmp_path.chmod(0o755)
    secret = tmp_path / "kiosk.yaml"
    secret.write_text(EXAMPLE.read_text())
    secret.chmod(0)
    result = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", *DOCTOR, "--config", str(secret)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"kiosk doctor: {secret} cannot be read as nobody: run it with sudo (sudo kiosk doctor)"
    ]


def test_needs_sudo_is_one_line_for_a_permission_error_only(tmp_path, monkeypatch):
    missing, fine = tmp_path / "missing.yaml", tmp_path / "fine.yaml"
    fine.write_text("x")
    assert needs_sudo([missing, None, fine]) is None
    real_open = open

    def refusing(path, *args, **kwargs):
        if Path(path) == fine:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing)
    why = needs_sudo([fine])
    assert why is not None and "run it with sudo" in why and "\n" not in why and "Permission denied" not in why


def test_alsa_quiet_silences_fd_2_and_restores_it(tmp_path):
    script = (
        "import os, sys\n"
        "from kiosk.doctor import alsa_quiet\n"
        "with alsa_quiet():\n    os.write(2, b'ALSA lib noise\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert result.stderr == b"after\n"
