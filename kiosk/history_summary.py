"""What the staff page's charts show, worked out from the history's rows (kiosk.history.Outcome): presses per day
per line, by hour of day, response times, when each button was last used; and the visitors the motion sensor saw
come close per day, with how many of them pressed a button."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from kiosk.history_csv import iso_time

_MAX_PLOT_POINTS = 2000
#: A button pressed this long after a visitor came close (and before the next one did) was that visitor's press.
PRESS_AFTER_APPROACH_S = 120.0


def summarize(everything: Sequence[Any], days: int, now: float) -> dict:
    """The summary of `everything` (the rows of the last `days` days, oldest first) as of `now`. Staff tests and
    the motion sensor's rows (approaches, invitations) are left out of the press counts."""
    rows = [r for r in everything if r.origin not in ("staff", "presence")]
    today = datetime.fromtimestamp(now).date()
    dates = [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]
    day_index = {day: n for n, day in enumerate(dates)}
    per_line: dict[str, list[int]] = {}
    by_hour = [0] * 24
    for row in rows:
        counts = per_line.setdefault(row.line or "(text)", [0] * days)
        index = day_index.get(_day(row.time))
        if index is not None:
            counts[index] += 1
        by_hour[datetime.fromtimestamp(row.time).hour] += 1
    timed = [(r.time, r.response_ms, r.source) for r in rows if r.response_ms is not None]
    approached = [r.time for r in everything if r.origin == "presence" and r.outcome == "approach"]
    pressed = [r.time for r in rows if r.origin.startswith("button:")]
    approaches, buttons = Counter(map(_day, approached)), Counter(map(_day, pressed))
    return {
        "days": dates,
        "presses_per_day": per_line,
        "presses_by_hour": by_hour,
        "approaches": [approaches[day] for day in dates],
        "button_presses": [buttons[day] for day in dates],  # by visitors at the exhibit: beside the approaches
        "approaches_pressed": _followed_by_a_press(approached, pressed),
        "response": [{"time": t, "ms": ms, "source": s} for t, ms, s in timed[-_MAX_PLOT_POINTS:]],
        "last_used": {r.origin: iso_time(r.time) for r in rows},
        "total": len(rows),
    }


def _followed_by_a_press(approached: list[float], pressed: list[float]) -> int:
    """How many approaches (times, in order) had a button pressed after them, before the next approach and within
    PRESS_AFTER_APPROACH_S."""
    count, p = 0, 0
    for n, at in enumerate(approached):
        until = min(at + PRESS_AFTER_APPROACH_S, approached[n + 1] if n + 1 < len(approached) else float("inf"))
        while p < len(pressed) and pressed[p] < at:
            p += 1
        count += p < len(pressed) and pressed[p] < until
    return count


def _day(at: float) -> str:
    return datetime.fromtimestamp(at).date().isoformat()
