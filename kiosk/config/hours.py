"""When the exhibit speaks on its own or stays quiet: `opening_hours:`, `quiet_hours:`, `schedule:` (announcements
at a time of day) and `attract:`. The checks between them (a period that ends where it starts, lines that exist)
are in kiosk.config.validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kiosk.config.fields import _CLOCK_TIME, _NONEMPTY, _bounded, _choice

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class QuietHours:
    """A period when button presses are silent (volume 0) or quieter, daily or on some weekdays.

    A period whose end is before its start runs overnight and belongs to the day it starts on: `fri 22:00-06:00`
    covers Friday night until Saturday 06:00.
    """

    start: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    end: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    volume: int = _bounded(0, 0, 100)  # percent of the normal volume; 0: presses are silent
    days: tuple[str, ...] = field(default=(), metadata={"choices": WEEKDAYS})  # empty: every day

    @property
    def overnight(self) -> bool:
        return self.end < self.start

    def covers(self, moment: datetime) -> bool:
        hhmm, today = moment.strftime("%H:%M"), WEEKDAYS[moment.weekday()]
        if not self.overnight:
            return self._on(today) and self.start <= hhmm < self.end
        yesterday = WEEKDAYS[(moment.weekday() - 1) % 7]
        return (self._on(today) and hhmm >= self.start) or (self._on(yesterday) and hhmm < self.end)

    def _on(self, day: str) -> bool:
        return not self.days or day in self.days


@dataclass(frozen=True)
class OpeningHours:
    """When the museum is open on some weekdays (all days when `days` is left out)."""

    open: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    close: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    days: tuple[str, ...] = field(default=(), metadata={"choices": WEEKDAYS})

    def covers(self, moment: datetime) -> bool:
        day = WEEKDAYS[moment.weekday()]
        return (not self.days or day in self.days) and self.open <= moment.strftime("%H:%M") < self.close


@dataclass(frozen=True)
class Announcement:
    """A line spoken at a time of day, daily or on some weekdays ("we close in 15 minutes")."""

    time: str = field(default="", metadata={"required": True, **_CLOCK_TIME})
    phrase: str = field(default="", metadata={"required": True, **_NONEMPTY})
    days: tuple[str, ...] = field(default=(), metadata={"choices": WEEKDAYS})

    def on(self, day: datetime) -> bool:
        return not self.days or WEEKDAYS[day.weekday()] in self.days


@dataclass(frozen=True)
class AttractConfig:
    """Inviting visitors: after this many idle minutes while open (and outside quiet hours), say one of `phrases`,
    each in turn."""

    idle_minutes: int = _bounded(0, 0, 1440)  # 0: off
    phrases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClockConfig:
    """While the system clock cannot be trusted (kiosk.clock: a Pi without network after a power cut), opening
    hours follow `untrusted_hours` (open: always open; closed: always closed), quiet hours are off and no
    announcement is made. `check: false` trusts the clock as it is (a Pi with a real-time clock module)."""

    untrusted_hours: str = _choice("open", "closed")
    check: bool = True
