"""The public captions server: /captions (live), /captions/events (server-sent events), /transcript.

Read-only and without a login, on a port of its own (`captions:`), so that a crowd of phones can never take a
connection from the trigger API or the staff page. Nothing here can start, stop or change anything.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from kiosk.captions import live, transcript
from kiosk.captions.keys import BACKEND as BACKEND
from kiosk.captions.keys import HOSTS as HOSTS
from kiosk.captions.keys import CaptionsBackend as CaptionsBackend
from kiosk.web.hosts import HostNames

HERE = Path(__file__).parent


def make_captions_app(backend: CaptionsBackend, hosts: HostNames | None = None) -> web.Application:
    app = web.Application(client_max_size=1024, middlewares=[_known_host])  # nothing here reads a body
    app[BACKEND] = backend
    app[HOSTS] = hosts or HostNames()
    app.add_routes(live.routes)
    app.add_routes(transcript.routes)
    return app


@web.middleware
async def _known_host(request: web.Request, handler) -> web.StreamResponse:
    """Only names this speaker answers to (DNS rebinding); and nothing here is changed by a request."""
    if not request.app[HOSTS].allows_host(request.headers.get("Host")):
        raise web.HTTPMisdirectedRequest(text="this speaker does not answer to that host name")
    return await handler(request)
