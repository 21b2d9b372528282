"""The Volume page: the volume, and the quiet hours when the speaker is softer.

A quiet period's start and end are typed as 24-hour times and read by kiosk.staff.timefmt, as on the Schedule page:
"22:00", "7:00", "07.00" and "0700" are taken and saved as "HH:MM" (the staff settings' `quiet_hours` list, as
before); anything else is refused beside its field with what was typed kept, and nothing is saved.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from kiosk.config import WEEKDAYS
from kiosk.staff.common import BACKEND, FORM, MAX_ROWS, render, save_changes, whole_number
from kiosk.staff.timefmt import parse_time_of_day

routes = web.RouteTableDef()


@routes.get("/volume")
async def volume_page(
    request: web.Request, errors: dict | None = None, values: dict | None = None, status: int = 200
) -> web.Response:
    cfg = request.app[BACKEND].cfg
    values = values or {}
    rows = values.get("quiet_rows")
    if rows is None:
        rows = [{**dataclasses.asdict(q), "overnight": q.overnight} for q in cfg.quiet_hours]
    return render(
        "volume.html",
        request,
        status=status,
        volume=cfg.audio.volume,
        rows=[*rows, {"start": "", "end": "", "volume": 0, "days": (), "overnight": False, "new": True}],
        weekdays=WEEKDAYS,
        errors=errors or {},
        values=values,
    )


@routes.post("/volume")
async def save_volume(request: web.Request) -> web.Response:
    form = request[FORM]
    volume_text = str(form.get("volume", "")).strip()
    rows = _quiet_rows(form)
    values = {"volume": volume_text, "quiet_rows": rows}
    if whole_number(volume_text, digits=3) is None:
        return await volume_page(request, {"volume": "must be a whole number from 0 to 100"}, values, 400)
    errors: dict[str, str] = {}
    for i, row in enumerate(rows):
        for key in ("start", "end"):
            if row["problems"][key]:
                errors[f"quiet.{i}.{key}"] = row["problems"][key]
        if not isinstance(row["volume"], int):
            errors[f"quiet.{i}.volume"] = "must be a whole number from 0 to 100"
    if errors:
        return await volume_page(request, errors, values, 400)
    quiet = [
        {k: row["read"].get(k, row[k]) for k in ("start", "end", "volume")}
        | ({"days": row["days"]} if row["days"] else {})
        for row in rows
    ]
    changes = {"audio": {"volume": int(volume_text)}, "quiet_hours": quiet}
    return await save_changes(request, changes, "/volume", volume_page, None, values)


def _quiet_rows(form: Any) -> list[dict]:
    """The quiet periods posted, in order, without blank or removed rows (numbered afresh, so that a problem
    the config finds in quiet_hours[i] is shown beside row i). Each keeps its start and end as typed (shown again
    if the form is refused), with `read`: the times as saved ("HH:MM"), and `problems`: why a time was refused."""
    rows = []
    for i in range(MAX_ROWS):
        start, end = (str(form.get(f"quiet.{i}.{key}", "")).strip() for key in ("start", "end"))
        if (not start and not end) or form.get(f"quiet.{i}.remove"):
            continue
        volume_text = str(form.get(f"quiet.{i}.volume", "0")).strip() or "0"
        volume = whole_number(volume_text, digits=3)
        volume = volume_text if volume is None else volume
        days = [day for day in WEEKDAYS if day in form.getall(f"quiet.{i}.days", [])]
        read: dict[str, str] = {}
        problems: dict[str, str | None] = {}
        for key, typed in (("start", start), ("end", end)):
            time_of_day, problems[key] = parse_time_of_day(typed)
            if time_of_day is not None:
                read[key] = time_of_day
        overnight = len(read) == 2 and read["end"] < read["start"]
        rows.append(
            {"start": start, "end": end, "volume": volume, "days": days}
            | {"overnight": overnight, "read": read, "problems": problems}
        )
    return rows
