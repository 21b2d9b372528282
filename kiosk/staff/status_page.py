"""The Status page: how the speaker is, the headline every page shows, the history (charts and CSV), and a
button's LED blinked so that staff can find it.

Dates and times are shown in one style (kiosk.staff.timefmt: "Fri 4 Dec, 16:45:03", 24-hour) and in the speaker's
own time zone: the server formats them (each event's `shown`, the charts' `day_labels`), and what the charts place
on a time axis comes as `local` seconds that the page reads as UTC, so a phone in another time zone shows the
speaker's times, never its own.
"""

from __future__ import annotations

import json
import time
from datetime import date, datetime
from typing import Any

from aiohttp import web

from kiosk.staff.common import BACKEND, render, render_html, whole_number
from kiosk.staff.timefmt import local_seconds, short_day, short_moment
from kiosk.web.api import ApiError, history_days

routes = web.RouteTableDef()


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/status")


@routes.get("/status")
async def status_page(request: web.Request, errors: dict | None = None, status: int = 200) -> web.Response:
    backend = request.app[BACKEND]
    info = _with_times(await backend.status())
    problems = [problem_parts(problem) for problem in info["problems"]]
    return render(
        "status.html",
        request,
        status=status,
        status_info=info,
        problems=problems,
        errors=errors or {},
        now=time.time(),
        presence=backend.cfg.presence.enabled,  # the chart of visitors who came close
    )


@routes.get("/status.json")
async def status_json(request: web.Request) -> web.Response:
    # The speaker's own clock, so that the page can say "pressed 2 s ago" whatever the phone's clock says.
    info = {**_with_times(await request.app[BACKEND].status()), "server_time": time.time()}
    return web.json_response(info, dumps=_dumps)


def _history_days(request: web.Request) -> int:
    try:
        return history_days(request.query)
    except ApiError as exc:  # a page, not a traceback: the address was typed or edited by hand
        html = render_html("message.html", request, title="That history cannot be shown", message=str(exc))
        raise web.HTTPBadRequest(text=html, content_type="text/html") from None


@routes.get("/status/history.json")
async def history_json(request: web.Request) -> web.Response:
    """What the status page charts: presses per day per line, by hour of day, response times; visitors who came
    close (`presence`: whether a motion sensor is configured)."""
    backend = request.app[BACKEND]
    summary = await backend.history_summary(_history_days(request))
    return web.json_response({**_chart_times(summary), "presence": backend.cfg.presence.enabled}, dumps=_dumps)


def _with_times(info: dict) -> dict:
    """The status with each event's moment as the page shows it (`shown`: "Fri 4 Dec, 16:45:03")."""
    today = date.today()
    events = [
        {**e, "shown": short_moment(datetime.fromtimestamp(e["time"]), today, seconds=True)} for e in info["events"]
    ]
    return {**info, "events": events}


def _chart_times(summary: dict) -> dict:
    """The history summary with what the charts show as dates and times: each day's label ("Fri 4 Dec"), and each
    response time's moment and now as the speaker's local seconds (`local`, `now_local`; see local_seconds)."""
    today = date.today()
    return {
        **summary,
        "day_labels": [short_day(date.fromisoformat(d), today) for d in summary["days"]],
        "response": [{**p, "local": local_seconds(p["time"])} for p in summary["response"]],
        "now_local": local_seconds(time.time()),
    }


@routes.get("/status/history.csv")
async def history_csv(request: web.Request) -> web.Response:
    """Every press and trigger of the last `days` days as a spreadsheet-ready download."""
    days = _history_days(request)
    body = await request.app[BACKEND].history_csv(days)
    disposition = f'attachment; filename="exhibit-speaker-history-{days}-days.csv"'
    return web.Response(text=body, content_type="text/csv", headers={"Content-Disposition": disposition})


@routes.post("/buttons/{pin}/identify")
async def identify_button(request: web.Request) -> web.Response:
    """Blink a button's LED so staff can tell which one it is."""
    backend, pin_text = request.app[BACKEND], request.match_info["pin"]
    pin = whole_number(pin_text, digits=2)
    if pin is None or not any(b.pin == pin for b in backend.cfg.buttons):
        raise web.HTTPNotFound(text="there is no such button")
    problem = backend.identify_button(pin)
    if problem:
        return await status_page(request, {f"identify.{pin}": problem}, 409)
    raise web.HTTPSeeOther("/status")


def short_headline(status: dict) -> str:
    """The backend's headline in a few words: the first problem without the technical detail after its colon
    (raw ALSA text has no place at the top of every page; the status page shows it), and how many more there are.
    headline.js shortens it the same way as it refreshes."""
    problems = status.get("problems") or []
    if not problems:
        return status["headline"]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"Needs attention: {problem_parts(problems[0])[0]}{more}"


def problem_parts(problem: str) -> tuple[str, str]:
    """("Speaker missing or failing", "cannot open ALSA device ...") from "Speaker missing or failing: cannot ..."."""
    short, _, detail = problem.partition(": ")
    return short.rstrip("."), detail


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
