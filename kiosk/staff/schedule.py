"""The Schedule page: lines announced at set times of day.

Each announcement is a time (24-hour "HH:MM", read by kiosk.staff.timefmt), a line and its weekdays. The line is
either one of the exhibit's lines or words typed in place: those become a new line (its id made from the words),
saved together with the schedule in one save, so both are saved or neither. Saved, the new line is like any other:
the reload pins it in the cache and warms it.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from datetime import datetime
from typing import Any

from aiohttp import web

from kiosk.config import WEEKDAYS, phrase_problem
from kiosk.config.phrases import PHRASE_ID
from kiosk.staff.common import BACKEND, FORM, MAX_ROWS, render, save_changes
from kiosk.staff.timefmt import TIME_HINT, moment, parse_time_of_day

routes = web.RouteTableDef()

#: An option's label in the line menus: the line's words, shortened so that the chosen one fits the menu's box on a
#: 390 px phone (tests/test_staff_schedule.py measures it); the whole line is shown under the menu.
OPTION_CHARS = 28
#: How long an id made from typed words may be (the config allows 64; a suffix may be added to make it unique).
_ID_CHARS = 40


def _blank_row() -> dict:
    return {"time": "", "phrase": "", "text": "", "days": (), "new": True, "remove": False}


@routes.get("/schedule")
async def schedule_page(
    request: web.Request, errors: dict | None = None, values: dict | None = None, status: int = 200
) -> web.Response:
    """The schedule; `values["rows"]` holds the rows as posted (an answer to a form that was not saved: each row
    keeps its place and what was typed, so that each error is beside its own row)."""
    backend = request.app[BACKEND]
    cfg = backend.cfg
    values = values or {}
    rows = values.get("rows")
    if rows is None:
        rows = [{**dataclasses.asdict(entry), "text": ""} for entry in cfg.schedule] + [_blank_row()]
    upcoming = backend.next_announcement()
    if upcoming:
        upcoming = {**upcoming, "shown": moment(datetime.fromisoformat(upcoming["time"]))}
    return render(
        "schedule.html",
        request,
        status=status,
        rows=rows,
        phrases=cfg.phrases,
        labels={pid: option_label(text) for pid, text in cfg.phrases.items()},
        weekdays=WEEKDAYS,
        upcoming=upcoming,
        saved=[
            {"time": a.time, "phrase": a.phrase, "days": ", ".join(d.capitalize() for d in a.days) or "every day"}
            for a in cfg.schedule
        ],
        time_hint=TIME_HINT,
        errors=errors or {},
        values=values,
    )


def option_label(text: str) -> str:
    """A line as a menu shows it: its words on one line, shortened with "…" to OPTION_CHARS."""
    flat = " ".join(text.split())
    return flat if len(flat) <= OPTION_CHARS else flat[: OPTION_CHARS - 1].rstrip() + "…"


def new_line_id(text: str, taken: set[str]) -> str:
    """An id for a line made from typed words: "The museum closes in 15 minutes" → "the-museum-closes-in-15-minutes",
    by the config's id rules (lowercase letters, digits, '-' and '_'), "-2", "-3", … added when it is taken; words
    with no Latin letters or digits give "announcement"."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", ascii_text)
    base = ""
    for word in words:
        longer = f"{base}-{word}" if base else word
        if len(longer) > _ID_CHARS:
            break
        base = longer
    base = base or (words[0][:_ID_CHARS] if words else "announcement")
    pid, n = base, 1
    while pid in taken:
        n += 1
        pid = f"{base}-{n}"
    assert PHRASE_ID.fullmatch(pid), pid  # by construction
    return pid


def _posted_rows(form: Any) -> list[dict]:
    """Every row of the form as posted, in its place (`at`: its number in the form), with what was typed."""
    rows = []
    for i in range(MAX_ROWS):
        if not any(f"schedule.{i}.{key}" in form for key in ("time", "phrase", "text", "new")):
            continue
        time_text, phrase, text = (str(form.get(f"schedule.{i}.{key}", "")) for key in ("time", "phrase", "text"))
        rows.append(
            {
                "at": i,
                "time": time_text.strip(),
                "phrase": phrase.strip(),
                "text": text.strip(),
                "days": [day for day in WEEKDAYS if day in form.getall(f"schedule.{i}.days", [])],
                "remove": bool(form.get(f"schedule.{i}.remove")),
                "new": bool(form.get(f"schedule.{i}.new")),
            }
        )
    return rows


@routes.post("/schedule")
async def save_schedule(request: web.Request) -> web.Response:
    cfg = request.app[BACKEND].cfg
    posted = _posted_rows(request[FORM])
    if not any(row["new"] for row in posted):  # an answer to the form has its row for adding one, as the page has
        posted.append({**_blank_row(), "at": posted[-1]["at"] + 1 if posted else 0})
    values = {"rows": posted}
    errors: dict[str, str] = {}
    phrases = dict(cfg.phrases)
    by_text = {text: pid for pid, text in cfg.phrases.items()}
    kept: list[dict] = []  # the rows to save, each with the place it was posted in
    new_lines: dict[str, int] = {}  # id of a line made from typed words → the row it was typed in
    for row in posted:
        i = row["at"]
        if row["remove"] or not (row["time"] or row["phrase"] or row["text"]):
            continue  # removed, or the empty row for adding one
        time_of_day, problem = parse_time_of_day(row["time"])
        if problem:
            errors[f"schedule.{i}.time"] = problem
        phrase = row["phrase"]
        if not (row["text"] or phrase):
            errors[f"schedule.{i}.phrase"] = "choose a line or type the words to say (the line must not be empty)"
        elif row["text"] and phrase:
            errors[f"schedule.{i}.text"] = "choose a line or type new words, not both"
        elif phrase and phrase not in phrases:  # deleted since the page was loaded, or a form made by hand
            errors[f"schedule.{i}.phrase"] = f"there is no line '{phrase[:40]}' now; reload the page and choose again"
        elif row["text"]:
            text = row["text"]
            phrase = by_text.get(text)  # the same words as a line already there: that line
            if phrase is None:
                phrase = new_line_id(text, set(phrases))
                problem = phrase_problem(phrase, text)  # the Lines page's rules: length, control characters, …
                if problem:
                    errors[f"schedule.{i}.text"] = problem
                    continue
                phrases[phrase], by_text[text] = text, phrase
                new_lines[phrase] = i
        kept.append({"at": i, "time": time_of_day, "phrase": phrase, "days": row["days"]})
    if errors:
        return await schedule_page(request, errors, values, 400)
    kept.sort(key=lambda row: row["time"])  # shown in the order of the day once saved
    entries = [{"time": r["time"], "phrase": r["phrase"], **({"days": r["days"]} if r["days"] else {})} for r in kept]
    changes: dict[str, Any] = {"schedule": entries}
    if new_lines:
        changes["phrases"] = cfg.phrase_settings(phrases)  # with the schedule, in the same save
    places = [r["at"] for r in kept]

    async def answer(request: web.Request, errs: dict, vals: dict | None, status: int) -> web.Response:
        return await schedule_page(request, _in_place(errs, places, new_lines), vals, status)

    return await save_changes(request, changes, "/schedule", answer, None, values)


_SCHEDULE_FIELD = re.compile(r"schedule\.(\d+)\.(\w+)")


def _in_place(errors: dict, places: list[int], new_lines: dict[str, int]) -> dict:
    """The config's problems (numbered by the saved rows: schedule.<n>.<field>, phrases.<id>) beside the fields of
    the rows as posted."""
    placed: dict[str, str] = {}
    for field, message in errors.items():
        match = _SCHEDULE_FIELD.fullmatch(field)
        pid = field.removeprefix("phrases.").split(".")[0] if field.startswith("phrases.") else None
        if match and int(match.group(1)) < len(places):
            field = f"schedule.{places[int(match.group(1))]}.{match.group(2)}"
        elif pid in new_lines:
            field = f"schedule.{new_lines[pid]}.text"
        elif field != "form":
            field, message = "form", f"{field}: {message}"
        placed.setdefault(field, message)
    return placed
