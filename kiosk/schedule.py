"""Timed announcements and attract mode, on an injected clock.

An announcement fires once at its minute. Each slot ("2026-12-01 16:45 closing") is claimed in the history database
before it is spoken, so a restart never says it twice; after a power cut, a slot missed by less than `GRACE` is said
late, and one missed by more is skipped (nobody wants "we close in 15 minutes" at 19:00). Quiet hours apply as they do
to buttons: silent means skipped, quieter means quieter.

Attract mode: after `attract.idle_minutes` with nothing spoken, while the museum is open and outside quiet hours,
one of `attract.phrases` is said, each in turn.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from kiosk.config import Config

log = logging.getLogger(__name__)

GRACE = timedelta(minutes=10)
TICK_S = 1.0

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
    ):
        self._config, self._speak, self._claim, self._on_event = config, speak, claim, on_event
        self._now, self._grace = now, grace
        # At start, look back a day: a slot missed by less than the grace is said late; one missed by more is
        # reported once as skipped (the claim remembers either across restarts).
        self._checked = self._now() - timedelta(days=1)
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
        now, cfg = self._now(), self._config()
        checked, self._checked = self._checked, now
        for slot, phrase in _slots(cfg, checked, now):
            await self._announce(cfg, slot, phrase, now)
        self._maybe_invite(cfg, now)

    def next_announcement(self) -> dict | None:
        """The next announcement due (within a week), for the staff page."""
        now = self._now()
        upcoming = _slots(self._config(), now, now + timedelta(days=7))
        if not upcoming:
            return None
        slot, phrase = upcoming[0]
        return {"time": slot.isoformat(timespec="minutes"), "phrase": phrase}

    async def _announce(self, cfg: Config, slot: datetime, phrase: str, now: datetime) -> None:
        late = now - slot
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
        self._speak(phrase, "schedule", 100 if volume is None else volume)

    def _maybe_invite(self, cfg: Config, now: datetime) -> None:
        attract = cfg.attract
        if not attract.idle_minutes or now - self._last_activity < timedelta(minutes=attract.idle_minutes):
            return
        if not cfg.is_open(now) or cfg.quiet_volume(now) is not None:
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
