"""The Volume page: the volume, and the quiet hours when the speaker is softer."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from kiosk.config import WEEKDAYS
from kiosk.staff.common import BACKEND, FORM, MAX_ROWS, render, save_changes, whole_number

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
    errors = {
        f"quiet.{i}.volume": "must be a whole number from 0 to 100"
        for i, row in enumerate(rows)
        if not isinstance(row["volume"], int)
    }
    if errors:
        return await volume_page(request, errors, values, 400)
    quiet = [
        {k: row[k] for k in ("start", "end", "volume")} | ({"days": row["days"]} if row["days"] else {}) for row in rows
    ]
    changes = {"audio": {"volume": int(volume_text)}, "quiet_hours": quiet}
    return await save_changes(request, changes, "/volume", volume_page, None, values)


def _quiet_rows(form: Any) -> list[dict]:
    """The quiet periods posted, in order, without blank or removed rows (numbered afresh, so that a problem
    the config finds in quiet_hours[i] is shown beside row i)."""
    rows = []
    for i in range(MAX_ROWS):
        start, end = (str(form.get(f"quiet.{i}.{key}", "")).strip() for key in ("start", "end"))
        if (not start and not end) or form.get(f"quiet.{i}.remove"):
            continue
        volume_text = str(form.get(f"quiet.{i}.volume", "0")).strip() or "0"
        volume = whole_number(volume_text, digits=3)
        volume = volume_text if volume is None else volume
        days = [day for day in WEEKDAYS if day in form.getall(f"quiet.{i}.days", [])]
        rows.append(
            {"start": start, "end": end, "volume": volume, "days": days, "overnight": bool(end and end < start)}
        )
    return rows
