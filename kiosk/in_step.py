"""Speakers in step: a play command may carry a start time (`"at"`, Unix seconds), so that every speaker of a group
starts the line together, on wall clocks kept synchronized by the system's NTP client.

Each speaker decides alone. On arrival the start time is turned into a moment on the steady (monotonic) clock, once;
the line is then prepared (the cached entry opened, its first block verified, the device open) and the ALSA writer
thread holds the first write until that moment: it sleeps, then spins for the last SPIN_S (not the event loop, whose
timers are late by a few ms under load). A speaker whose clock is not synchronized plays at once and says why; a
start time already past plays at once and says how late; a line that is not cached starts when its audio arrives,
holding back nobody else.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiosk.errors import ConfigError

#: `kiosk fleet say`'s lead for a group: the broker hands a QoS 1 message to every subscriber within a few tens of
#: ms on a wired LAN, but a busy Wi-Fi (retries, power save: a speaker's radio wakes every 100-300 ms) can take
#: several hundred; a cached line is ready to play within ~10 ms of arriving. Half a second covers both and is
#: still heard as "at once".
DEFAULT_LEAD_S = 0.5
#: A start time further back than this is refused (a sender whose clock is wrong, or a command kept for a day).
MAX_PAST_S = 86_400.0
#: ... and further ahead than this: the speaker holds the line (and whatever waits behind it) until then.
MAX_AHEAD_S = 60.0
#: Past its start time by more than this, a line counts as late (and plays at once).
LATE_S = 0.005
#: The writer sleeps until this long before the start, then spins (a sleep can overshoot by a timer slack).
SPIN_S = 0.002
#: The writer wakes at least this often while it holds a line, to show it is alive and to notice a stop.
_SLICE_S = 0.1

NOT_SYNCHRONIZED = "played at once: this speaker's clock is not synchronized"
NOT_CACHED = "not cached: it started when its audio arrived"
BAD_AT = "'at' must be a start time in Unix seconds (a number)"


class BadStart(ValueError):
    """A start time that cannot be taken; the message says why in one sentence."""


def start_time(value: Any) -> float | None:
    """The `at` field of a play command: None when absent; a finite number (not a bool), else BadStart."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadStart(BAD_AT)
    try:
        at = float(value)  # an integer of hundreds of digits does not fit a float
    except OverflowError:
        raise BadStart(BAD_AT) from None
    if not math.isfinite(at):
        raise BadStart(BAD_AT)
    return at


@dataclass
class Start:
    """When a line is to start: `at` as sent (wall clock), `mono` the same moment on the monotonic clock (None:
    play at once, `why` says why). `tell` is handed the sentence for the events once the line has started.
    `received` is when the command arrived (wall clock): a late line says whether it came late or started late."""

    at: float
    mono: float | None
    why: str | None = None
    tell: Callable[[str], None] = lambda sentence: None
    received: float | None = None


def plan(
    at: float,
    *,
    synchronized: bool,
    tell: Callable[[str], None] = lambda sentence: None,
    wall: Callable[[], float] = time.time,
    mono: Callable[[], float] = time.monotonic,
) -> Start:
    """Turn `at` into a moment on the monotonic clock, once, on arrival. A clock that is not synchronized cannot
    judge `at` at all: the line plays at once. Otherwise `at` must lie within MAX_PAST_S behind and MAX_AHEAD_S
    ahead of now (else BadStart)."""
    now_wall, now_mono = wall(), mono()
    if not synchronized:
        return Start(at, None, NOT_SYNCHRONIZED, tell, now_wall)
    ahead = at - now_wall
    if ahead < -MAX_PAST_S:
        raise BadStart(f"'at' is {-ahead / 3600:.1f} hours ago; a start time may be at most a day past")
    if ahead > MAX_AHEAD_S:
        raise BadStart(f"'at' is {ahead:.0f} s ahead; a start time may be at most {MAX_AHEAD_S:.0f} s ahead")
    return Start(at, now_mono + ahead, None, tell, now_wall)


def hold(
    until: float,
    stop: threading.Event,
    clock: Callable[[], float],
    beat: Callable[[], None],
    spin_s: float | None = None,
) -> float:
    """Writer thread: wait until monotonic `until` (or `stop`), sleeping, then spinning the last `spin_s` (default
    SPIN_S; a real-time thread wakes within tens of microseconds and need not spin, and many spinning at once on a
    few cores would only queue behind each other); return how late the wait ended, in seconds (0 or less: on time)."""
    spin_s = SPIN_S if spin_s is None else spin_s
    while not stop.is_set():
        beat()
        left = until - clock()
        if left <= spin_s:
            break
        stop.wait(min(_SLICE_S, left - spin_s))
    while clock() < until and not stop.is_set():
        pass
    return clock() - until


def first_audio(trace: Any, playbacks: list) -> None:
    """Put in `trace` (a kiosk.trace.Trace) when its first audio went to the device, on the monotonic and the wall
    clock, and how late a line held to a start time began (`late_ms`; 0 or less: on time). `playbacks` are
    kiosk.player.Playbacks; neither is imported here, as the player imports this module."""
    stats = sorted((p.stats for p in playbacks if p.stats.first_write_at is not None), key=lambda s: s.first_write_at)
    if stats:
        trace.first_audio_mono, trace.first_audio_wall = stats[0].first_write_at, stats[0].first_write_wall
        if stats[0].late_s is not None:
            trace.late_ms = round(stats[0].late_s * 1000, 2)


def record(trace: Any, start: Start | None, line: str) -> None:
    """For a line with a start time: put the time planned in `trace` and say whether the line began at it (in the
    trace, and in the events when it did not)."""
    if start is None:
        return
    trace.start_at, trace.start_mono, trace.start_received_wall = start.at, start.mono, start.received
    if start.why is not None:
        trace.in_step = start.why
    elif trace.late_ms is None:
        trace.in_step = NOT_CACHED if trace.first_audio_mono is not None else None
    elif trace.late_ms > LATE_S * 1000:
        trace.in_step = f"played at once: {trace.late_ms:.0f} ms past its start time"
    else:
        trace.in_step = "on time"
    if trace.in_step not in (None, "on time"):
        start.tell(f"{line}: {trace.in_step}")


class Lead:
    """`kiosk fleet say`: a start time `seconds` after the command is published, stamped at the last moment (after
    connecting to the broker, which may take a TLS handshake) by `stamp`."""

    def __init__(self, seconds: float):
        self.seconds = seconds


def lead_for(seconds: float | None, *, together: bool) -> Lead | None:
    """`kiosk fleet say --lead`: None (no start time) for 0, and by default for one speaker; DEFAULT_LEAD_S by
    default for a group or all. Raises ConfigError for a lead that is not 0 to MAX_AHEAD_S."""
    if seconds is None:
        seconds = DEFAULT_LEAD_S if together else 0.0
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_AHEAD_S):
        raise ConfigError([f"fleet say: --lead must be 0 to {MAX_AHEAD_S:g} seconds, not {seconds:g}"])
    return Lead(seconds) if seconds > 0 else None


def stamp(body: dict, wall: Callable[[], float] = time.time) -> dict:
    """`body` with a Lead under "at" turned into the start time, now."""
    lead = body.get("at")
    if isinstance(lead, Lead):
        return {**body, "at": round(wall() + lead.seconds, 3)}
    return body
