"""Times and dates as the staff pages show and read them: one style everywhere.

- A time of day is 24-hour "HH:MM" ("09:30", "16:45"), never AM/PM, whatever the browser's locale. Staff may type
  "16:45", "9:30", "16.45" or "1645"; anything else is refused with a message saying why, never guessed at.
- A date is "Fri 4 Dec 2026" (weekday, day, English month abbreviation, year), a moment "Fri 4 Dec 2026, 16:45".
  The month and weekday names are fixed here, not taken from the server's locale.
- Where dates are mostly recent (the Status page: events, charts) a date is "Fri 4 Dec", the year added only when
  it is not this year, and a moment "Fri 4 Dec, 16:45:03" (events: seconds matter there).

Every time is the speaker's own local time (the museum's): the phone that shows it may be in another time zone.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

#: What staff may type for a time of day (before the range check): H:MM or HH:MM (":" or "."), or HHMM.
_TYPED_TIME = re.compile(r"(\d{1,2})[:.](\d{2})|(\d{2})(\d{2})")
#: How many characters of a refused entry the message repeats.
_SHOWN_CHARS = 20

TIME_HINT = "24-hour, like 16:45"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def parse_time_of_day(typed: str) -> tuple[str | None, str | None]:
    """`typed` as "HH:MM" and None, or None and why it is not a time of day (for beside the field).

    "16:45", "9:30", "09.30" and "0930" are taken; "24:00", "25:00", "9:60", "4pm", "quarter to five", "٠٩:٣٠" are
    not. An empty entry is refused too: the caller decides whether a row left empty is skipped first.
    """
    text = typed.strip()
    if not text:
        return None, f"type a time of day ({TIME_HINT})"
    match = _TYPED_TIME.fullmatch(text) if text.isascii() else None
    if match is None:
        return None, f"{_shown(text)} is not a time of day: type hours and minutes, {TIME_HINT}"
    hours, minutes = (int(g) for g in match.groups() if g is not None)
    if hours > 23 or minutes > 59:
        return None, f"{_shown(text)} is not a time of day (00:00 to 23:59)"
    return f"{hours:02d}:{minutes:02d}", None


def _shown(text: str) -> str:
    """A refused entry as the message repeats it: shortened, and quoted when it is not plain digits."""
    short = text[:_SHOWN_CHARS] + ("…" if len(text) > _SHOWN_CHARS else "")
    return short if re.fullmatch(r"[0-9:.]+", text) else f"'{short}'"


def day(d: date) -> str:
    """A date as the staff pages show it: "Fri 4 Dec 2026"."""
    return f"{WEEKDAY_NAMES[d.weekday()]} {d.day} {MONTHS[d.month - 1]} {d.year}"


def moment(when: datetime) -> str:
    """A moment as the staff pages show it: "Fri 4 Dec 2026, 16:45" (seconds are not shown)."""
    return f"{day(when)}, {when:%H:%M}"


def short_day(d: date, today: date) -> str:
    """A date as the Status page shows it: "Fri 4 Dec", with the year when it is not `today`'s ("Thu 31 Dec 2025")."""
    shown = f"{WEEKDAY_NAMES[d.weekday()]} {d.day} {MONTHS[d.month - 1]}"
    return shown if d.year == today.year else f"{shown} {d.year}"


def clock(when: datetime, *, seconds: bool = False) -> str:
    """A time of day, 24-hour: "16:45", or "16:45:03" where seconds matter."""
    return f"{when:%H:%M:%S}" if seconds else f"{when:%H:%M}"


def short_moment(when: datetime, today: date, *, seconds: bool = False) -> str:
    """A moment as the Status page shows it: "Fri 4 Dec, 16:45:03" (the year only when it is not this year)."""
    return f"{short_day(when.date(), today)}, {clock(when, seconds=seconds)}"


def local_seconds(at: float) -> int:
    """The speaker's local wall-clock time at `at` (a Unix time) as seconds since 1970-01-01 00:00 *local*: a
    browser that reads it as UTC (getUTCHours, …) shows the speaker's time whatever its own time zone."""
    when = datetime.fromtimestamp(at).astimezone()
    offset = when.utcoffset() or timedelta(0)
    return round(at + offset.total_seconds())
