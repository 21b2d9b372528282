"""The live captions: the page at /captions and the server-sent events at /captions/events that it follows.

The page is static; everything it shows comes from the events, each the whole current state (kiosk.captions.feed).
A page that stops reading is cut when a send has waited `SEND_TIMEOUT_S` (aiohttp-sse's send timeout, with the
socket's TCP_USER_TIMEOUT), and pages beyond the feed's limits get 429 before any stream is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from kiosk.captions.feed import CaptionFeed, Follower, TooManyFollowers
from kiosk.captions.keys import BACKEND

HERE = Path(__file__).parent
#: The page and what it loads: fixed names, so no path from a request ever reaches the file system.
FILES = {
    "/captions": ("captions.html", "text/html"),
    "/captions/captions.js": ("captions.js", "text/javascript"),
    "/captions/captions.css": ("captions.css", "text/css"),
    "/captions/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
SEND_TIMEOUT_S = 10.0
PING_S = 15.0  # a comment line this often keeps proxies and phones from closing a quiet stream
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

routes = web.RouteTableDef()


@routes.get("/")
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/captions")


async def page_file(request: web.Request) -> web.StreamResponse:
    name, content_type = FILES[request.path]
    body = await asyncio.to_thread((HERE / "static" / name).read_bytes)
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)


for _path in FILES:
    routes.get(_path)(page_file)


@routes.get("/captions/events")
async def events(request: web.Request) -> web.StreamResponse:
    feed: CaptionFeed = request.app[BACKEND].captions
    try:
        follower = feed.follow(request.remote or "?")
    except TooManyFollowers as exc:
        raise web.HTTPTooManyRequests(text=str(exc), headers={"Retry-After": "30", **HEADERS}) from None
    stream = EventSourceResponse(headers=HEADERS, send_timeout=SEND_TIMEOUT_S, ping_interval=PING_S)
    try:
        await stream.prepare(request)
        await _follow(stream, feed, follower)
    except (ConnectionError, TimeoutError, RuntimeError):  # the page went away or stopped reading
        pass
    finally:
        feed.unfollow(follower)
        if stream.prepared:
            stream.stop_streaming()
    return stream


async def _follow(stream, feed: CaptionFeed, follower: Follower) -> None:
    """Send the state at once and then at each change, until the page goes away."""
    while stream.is_connected():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PING_S):
                await follower.changed.wait()
        if feed.closed or follower.displaced:  # displaced: its place went to a newcomer (CaptionFeed.follow)
            return
        if not follower.changed.is_set():
            continue
        follower.changed.clear()
        await stream.send(json.dumps(feed.state(), ensure_ascii=False), event="caption", retry=2000)
