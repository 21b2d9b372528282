"""Whether the wall clock can be trusted: a Raspberry Pi has no real-time clock, so after a power cut with no
network it boots with a stale time (or 1970), and opening hours, quiet hours, announcements and the history would
all follow it.

The clock is trusted once the system says it is synchronized — systemd-timesyncd's flag file, chrony's
`Leap status : Normal`, `timedatectl`'s NTPSynchronized, else the kernel's own view (adjtimex's STA_UNSYNC bit,
through ctypes) — and it is not earlier than the newest time already in the history (a clock that went back past
what was recorded is not set, whatever the system says). `TrustedClock.run` asks the system every `CHECK_EVERY_S`;
everyone else reads `trusted()`, which never blocks.

Until then the speaker says "clock not set" (status, staff page, MQTT, `kiosk doctor`), fires no announcements, uses
the staff's fallback hours (`clock.untrusted_hours`) and marks the history rows it writes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from kiosk.config import Config

log = logging.getLogger(__name__)

NOT_SET = "clock not set"
CHECK_EVERY_S = 30.0
PROBE_TIMEOUT_S = 2.0
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5

#: A probe: True when the system clock is synchronized, False when it is not, None when this probe cannot tell.
Probe = Callable[[], bool | None]


class _Timex(ctypes.Structure):
    """struct timex (linux/timex.h): `modes` 0 reads without changing; `status` holds STA_UNSYNC. The tail is
    padding large enough for every architecture's layout."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def timesyncd_flag(flag: Path = TIMESYNCD_FLAG) -> bool | None:
    """systemd-timesyncd touches this file once it has synchronized; its absence alone says nothing."""
    return True if flag.exists() else None


def chrony() -> bool | None:
    out = _run(["chronyc", "-n", "tracking"])
    if out is None:
        return None
    leap = next((line.partition(":")[2].strip() for line in out.splitlines() if line.startswith("Leap status")), None)
    return None if not leap else leap == "Normal"


def timedatectl() -> bool | None:
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    return None if out is None or out.strip() not in ("yes", "no") else out.strip() == "yes"


def kernel() -> bool | None:
    """The kernel's view (what timedatectl reports too): adjtimex without changing anything."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex(modes=0)
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not timex.status & _STA_UNSYNC


def system_synchronized() -> bool:
    """Whether the system clock is synchronized, by the first probe that can tell; False when none can."""
    for probe in (timesyncd_flag, chrony, timedatectl, kernel):
        answer = probe()
        if answer is not None:
            return answer
    return False


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


class TrustedClock:
    """Whether the wall clock can be believed now. `check()` asks the system (blocking, bounded); `trusted()`
    answers from the last check and the history's newest time."""

    def __init__(
        self,
        *,
        probe: Probe | None = None,
        wall: Callable[[], float] = time.time,
        enabled: bool = True,
        on_change: Callable[[bool], None] = lambda trusted: None,
    ):
        self._probe = probe or system_synchronized
        self._wall = wall
        self.enabled = enabled  # False: trusted always (a Pi with a real-time clock module)
        self.on_change = on_change
        self._synced = False
        self._not_before = 0.0  # the newest time in the history
        self._last: bool | None = None

    def not_before(self, newest: float | None) -> None:
        """A wall clock earlier than `newest` (the history's newest row) is not set."""
        if newest is not None:
            self._not_before = max(self._not_before, newest)

    def check(self) -> bool:
        """Ask the system now; tell `on_change` when the answer differs from the last one."""
        try:
            self._synced = bool(self._probe())
        except Exception:  # a probe that fails tells nothing: not synchronized
            log.exception("checking the system clock failed")
            self._synced = False
        return self._note()

    def trusted(self) -> bool:
        if not self.enabled:
            return True
        return self._synced and self._wall() >= self._not_before

    def problem(self) -> str | None:
        return None if self.trusted() else NOT_SET

    async def run(self, every_s: float = CHECK_EVERY_S) -> None:
        """Check every `every_s` (a supervised task): a clock synchronized later is noticed within that."""
        while True:
            await asyncio.to_thread(self.check)
            await asyncio.sleep(every_s)

    def _note(self) -> bool:
        now = self.trusted()
        if self._last is not None and now != self._last:
            log.warning("the clock is %s", "set (synchronized)" if now else "not set")
            self.on_change(now)
        self._last = now
        return now


def is_open(cfg: Config, trusted: bool, moment: datetime) -> bool:
    """Opening hours, or the staff's fallback while the clock cannot be trusted."""
    if trusted:
        return cfg.is_open(moment)
    return cfg.clock.untrusted_hours == "open"


def quiet_volume(cfg: Config, trusted: bool, moment: datetime) -> int | None:
    """Quiet hours; off while the clock cannot be trusted (the hour is unknown)."""
    return cfg.quiet_volume(moment) if trusted else None
