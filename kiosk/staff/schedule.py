"""The Schedule page: lines announced at set times of day."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from kiosk.config import WEEKDAYS
from kiosk.staff.common import BACKEND, FORM, MAX_ROWS, render, save_changes

routes = web.RouteTableDef()


@routes.get("/schedule")
async def schedule_page(
    request: web.Request, errors: dict | None = None, values: dict | None = None, status: int = 200
) -> web.Response:
    backend = request.app[BACKEND]
    cfg = backend.cfg
    values = values or {}
    rows = values.get("rows")
    if rows is None:
        rows = [dataclasses.asdict(entry) for entry in cfg.schedule]
    return render(
        "schedule.html",
        request,
        status=status,
        rows=[*rows, {"time": "", "phrase": "", "days": (), "new": True}],
        phrases=cfg.phrases,
        weekdays=WEEKDAYS,
        upcoming=backend.next_announcement(),
        errors=errors or {},
        values=values,
    )


@routes.post("/schedule")
async def save_schedule(request: web.Request) -> web.Response:
    form = request[FORM]
    rows = []
    for i in range(MAX_ROWS):
        time_text, phrase = (str(form.get(f"schedule.{i}.{key}", "")).strip() for key in ("time", "phrase"))
        if (not time_text and not phrase) or form.get(f"schedule.{i}.remove"):
            continue
        days = [day for day in WEEKDAYS if day in form.getall(f"schedule.{i}.days", [])]
        rows.append({"time": time_text, "phrase": phrase, "days": days})
    entries = [{k: v for k, v in row.items() if v or k != "days"} for row in rows]
    values = {"rows": rows}
    return await save_changes(request, {"schedule": entries}, "/schedule", schedule_page, None, values)
