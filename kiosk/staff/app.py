"""The staff web page: status, exhibit lines and buttons, voice, volume, quiet hours, schedule and account.

Server-rendered Jinja2 templates with autoescaping (staff text is shown, never run), a little JavaScript for live
status and progress, nothing from a CDN. Every change is validated with the config file's own rules, saved
atomically to the staff settings file (the operator's kiosk.yaml and its comments are never rewritten) and
applied without a restart.

This module makes the app and guards it (host names, login, same origin, CSRF, security headers); each page is a
module of its own with its own `routes`, and what they share is in common.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from kiosk.staff import account_page, label, lines, login, schedule, setup, status_page, update, voice, volume
from kiosk.staff.auth import LoginLimiter, PasswordChecker, Sessions
from kiosk.staff.backend import StaffBackend
from kiosk.staff.common import (
    BACKEND,
    CHECKER,
    FORM,
    HEADLINE,
    HERE,
    HOSTS,
    LIMITER,
    SESSION,
    SESSIONS,
    password_file,
    read_form,
    tokens_match,
)
from kiosk.staff.login import COOKIE, logged_out
from kiosk.staff.session_store import SessionStore
from kiosk.staff.status_page import short_headline
from kiosk.web.hosts import HostNames

log = logging.getLogger(__name__)

#: Beside the password file: the sessions that outlive a restart of the service (kiosk.staff.session_store).
SESSIONS_FILE = "staff-sessions.json"

#: Every page of the staff app, each with its own `routes`.
PAGES = (login, setup, status_page, lines, voice, volume, schedule, account_page, update, label)


def make_staff_app(
    backend: StaffBackend, *, clock: Callable[[], float] = time.monotonic, hosts: HostNames | None = None
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[_security_headers, _guard])
    app[BACKEND] = backend
    staff = backend.cfg.staff
    store = SessionStore(staff.password_file.with_name(SESSIONS_FILE), lambda: backend.cfg.staff.password_file)
    app[SESSIONS] = Sessions(staff.session_hours * 3600, clock, store=store)
    app[LIMITER] = LoginLimiter(clock=clock)
    app[CHECKER] = PasswordChecker(lambda: password_file(backend))
    app[HOSTS] = hosts or HostNames()
    app.on_cleanup.append(_close_checker)
    for page in PAGES:
        app.add_routes(page.routes)
    app.router.add_static("/static", HERE / "static", name="static", append_version=True)
    return app


# -- access control


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_PUBLIC = ("/login", "/setup", "/static/")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No password set → the setup page (a setup code sets one). No session → login. POSTs need origin and CSRF."""
    backend = request.app[BACKEND]
    if not request.app[HOSTS].allows_host(request.headers.get("Host")):
        raise web.HTTPMisdirectedRequest(
            text="this device does not answer to that host name (see hostnames in kiosk.yaml)"
        )
    if not request.path.startswith(("/static/", "/setup")) and not password_file(backend).is_set():
        return setup.setup_form(request, status=503)
    if request.method == "POST" and not _same_origin(request):
        raise web.HTTPForbidden(text="cross-site request refused")
    if request.method == "POST" and request.content_type not in _FORM_TYPES:
        raise web.HTTPUnsupportedMediaType(text="send the page's form as it is")
    if request.path.startswith(_PUBLIC):
        return await handler(request)
    # A page polling in the background says so: only what staff do keeps a session from going idle.
    polling = request.headers.get("X-Kiosk-Poll") == "idle"
    session = request.app[SESSIONS].get(request.cookies.get(COOKIE), touch=not polling)
    if session is None:
        logged_out(request)
    request[SESSION] = session
    if request.method == "POST" and request.path in update.STREAMED:  # a release: read as it arrives, token first
        request[FORM] = await update.open_upload(request, session.csrf)
    elif request.method == "POST":
        form = await read_form(request)
        if not tokens_match(form.get("csrf"), session.csrf):
            raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")
        request[FORM] = form
    if not request.path.endswith(_DATA_SUFFIXES):  # every page says at the top whether all is well
        request[HEADLINE] = await _headline(backend)
    return await handler(request)


_DATA_SUFFIXES = (".json", ".csv", ".wav", ".yaml")


async def _headline(backend: StaffBackend) -> str:
    try:
        return short_headline(await backend.status())
    except Exception:  # a page opens whatever the report does; its script fills the headline in (or says why not)
        log.exception("the status for the headline could not be made")
        return ""


async def _close_checker(app: web.Application) -> None:
    app[CHECKER].close()


def _same_origin(request: web.Request) -> bool:
    """The browser's Origin (or Referer) must name this very host: a page elsewhere cannot post here."""
    expected = f"{request.scheme}://{request.host}"
    origin = request.headers.get("Origin")
    if origin is not None:
        return origin == expected
    referer = request.headers.get("Referer", "")
    return referer == expected or referer.startswith(expected + "/")


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    # Static files are checked again at each use (a cheap 304 by ETag), so that after an update no page meets a
    # script module kept from the release before.
    response.headers.setdefault("Cache-Control", "no-cache" if request.path.startswith("/static/") else "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response
