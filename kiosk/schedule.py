"""Timed announcements and attract mode, on an injected clock.

An announcement fires once at its minute. Each slot ("2026-12-01 16:45 closing") is claimed in the history database
before it is spoken, so a restart never says it twice; after a power cut, a slot missed by less than `GRACE` is said
late, and one missed by more is skipped (nobody wants "we close in 15 minutes" at 19:00). Quiet hours apply as they do
to buttons: silent means skipped, quieter means quieter.

Attract mode: after `attract.idle_minutes` with nothing spoken, while the museum is open and outside quiet hours,
one of `attract.phrases` is said, each in turn.

The wall clock may be wrong (kiosk.clock): while it is not trusted no announcement fires and none is reported
skipped, and once it is, announcements go on from that moment (none for the time before). A clock that jumps (the
wall clock moved more than `JUMP` away from what the monotonic clock says since the last tick: set by hand, or
synchronized at last) is followed from its new time on, without saying or reporting the jumped span's slots, and
no announcement is said again within REPEAT_GAP_S of monotonic time (a clock set back a day repeats nothing).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from kiosk import clock
from kiosk.config import Config

log = logging.getLogger(__name__)

GRACE = timedelta(minutes=10)
TICK_S = 1.0
JUMP = timedelta(minutes=2)
#: An announcement is never said again sooner than this (on the monotonic clock), whatever the wall clock says: a
#: clock set back a day must not bring back the slots of a day already spoken.
REPEAT_GAP_S = 23 * 3600

#: speak(phrase id, origin, volume percent) → True when the line was accepted.
Speak = Callable[[str, str, int], bool]


class Scheduler:
    def __init__(
        self,
        *,
        config: Callable[[], Config],
        speak: Speak,
        claim: Callable[[str], Awaitable[bool]],
        on_event: Callable[[str], None] = lambda text: None,
        now: Callable[[], datetime] = datetime.now,
        grace: timedelta = GRACE,
        trusted: Callable[[], bool] = lambda: True,
        monotonic: Callable[[], float] | None = None,
    ):
        """`trusted`: whether the wall clock can be believed (kiosk.clock); `monotonic`: a clock that never jumps,
        to notice the wall clock jumping (None: the wall clock is believed to run evenly)."""
        self._config, self._speak, self._claim, self._on_event = config, speak, claim, on_event
        self._now, self._grace, self._trusted, self._monotonic = now, grace, trusted, monotonic
        # At start, look back a day: a slot missed by less than the grace is said late; one missed by more is
        # reported once as skipped (the claim remembers either across restarts). None: from the next tick on.
        self._checked: datetime | None = self._now() - timedelta(days=1)
        self._mark: tuple[datetime, float] | None = None  # the last tick: (wall clock, monotonic clock)
        self._said_at: dict[tuple[str, str], float] = {}  # (time of day, phrase) → monotonic time it was said
        self._last_activity = self._now()  # no invitation the moment the speaker starts
        self._invitations = itertools.count()

    async def run(self) -> None:
        """Check every second, forever (a supervised task)."""
        while True:
            await self.tick()
            await asyncio.sleep(TICK_S)

    def activity(self) -> None:
        """Something was spoken or asked for: attract mode waits its full idle time again."""
        self._last_activity = self._now()

    async def tick(self) -> None:
        now, cfg, trusted = self._now(), self._config(), self._trusted()
        jumped = self._jumped(now)
        if jumped:
            self._last_activity = now  # the idle time starts again: no invitation for the jumped span
        if not trusted:
            self._checked = None  # nothing fires, nothing is skipped; once trusted, from then on
        elif jumped or self._checked is None:
            self._checked = now  # re-anchored: the jumped span's slots are neither said nor skipped
        else:
            checked, self._checked = self._checked, now
            for slot, phrase in _slots(cfg, checked, now):
                await self._announce(cfg, slot, phrase, now)
        self._maybe_invite(cfg, now, trusted)

    def _jumped(self, now: datetime) -> bool:
        """Whether the wall clock moved more than JUMP away from the monotonic clock since the last tick."""
        if self._monotonic is None:
            return False
        mark, self._mark = self._mark, (now, self._monotonic())
        if mark is None:
            return False
        drift = now - (mark[0] + timedelta(seconds=self._mark[1] - mark[1]))
        if abs(drift) <= JUMP:
            return False
        minutes = round(drift.total_seconds() / 60)
        log.warning("the clock jumped %+d min; announcements go on from %s", minutes, f"{now:%Y-%m-%d %H:%M}")
        self._on_event(f"the clock jumped {minutes:+d} min: announcements go on from {now:%Y-%m-%d %H:%M}")
        return True

    def next_announcement(self) -> dict | None:
        """The next announcement due (within a week), for the staff page; None while the clock is not trusted."""
        now = self._now()
        if not self._trusted():
            return None
        upcoming = _slots(self._config(), now, now + timedelta(days=7))
        if not upcoming:
            return None
        slot, phrase = upcoming[0]
        return {"time": slot.isoformat(timespec="minutes"), "phrase": phrase}

    async def _announce(self, cfg: Config, slot: datetime, phrase: str, now: datetime) -> None:
        late, entry = now - slot, (f"{slot:%H:%M}", phrase)
        if self._monotonic is not None and self._monotonic() - self._said_at.get(entry, -REPEAT_GAP_S) < REPEAT_GAP_S:
            return  # said less than a day ago by the monotonic clock: the wall clock was set back
        if not await self._claim(f"{slot:%Y-%m-%d %H:%M} {phrase}"):
            return  # said (or reported skipped) already, before a restart
        if late > self._grace:
            minutes = int(late.total_seconds() // 60)
            self._on_event(f"skipped the {slot:%H:%M} announcement '{phrase}': {minutes} min late")
            return
        volume = cfg.quiet_volume(now)
        if volume == 0:
            self._on_event(f"the {slot:%H:%M} announcement '{phrase}' fell in quiet hours: not said")
            return
        if self._monotonic is not None:
            self._said_at[entry] = self._monotonic()
        self._speak(phrase, "schedule", 100 if volume is None else volume)

    def _maybe_invite(self, cfg: Config, now: datetime, trusted: bool) -> None:
        attract = cfg.attract
        if not attract.idle_minutes or now - self._last_activity < timedelta(minutes=attract.idle_minutes):
            return
        if not clock.is_open(cfg, trusted, now) or clock.quiet_volume(cfg, trusted, now) is not None:
            return
        self._last_activity = now  # one invitation per idle period, whether or not it could be said
        phrase = attract.phrases[next(self._invitations) % len(attract.phrases)]
        self._speak(phrase, "attract", 100)


def _slots(cfg: Config, after: datetime, until: datetime) -> list[tuple[datetime, str]]:
    """Announcements due in (after, until], in time order."""
    slots = []
    day = after.date()
    while day <= until.date():
        for entry in cfg.schedule:
            slot = datetime.combine(day, datetime.strptime(entry.time, "%H:%M").time())
            if after < slot <= until and entry.on(slot):
                slots.append((slot, entry.phrase))
        day += timedelta(days=1)
    return sorted(slots)
