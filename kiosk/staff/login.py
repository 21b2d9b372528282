"""Logging in and out of the staff page: the login form with its own CSRF cookie, the lockout after wrong
passwords, and the way back to the page staff were on."""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any, NoReturn
from urllib.parse import urlsplit

from aiohttp import web

from kiosk.staff.auth import CheckerBusy
from kiosk.staff.common import CHECKER, LIMITER, SESSIONS, TOKEN, read_form, render, tokens_match

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

COOKIE = "kiosk_session"
LOGIN_COOKIE = "kiosk_login"

_NEXT = re.compile(r"/[a-z][a-z0-9_/-]{0,80}")


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    return _login_form(request)


def _login_form(
    request: web.Request, error: str | None = None, status: int = 200, next_path: Any = None
) -> web.Response:
    token = form_token(request)
    back = _safe_next(next_path or request.query.get("next"))
    response = render("login.html", request, status=status, csrf=token, error=error, next_path=back)
    return with_form_token(response, token)


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    form = await checked_form(request)
    limiter, address = request.app[LIMITER], request.remote or "?"
    wait = limiter.begin(address)  # counted before the (slow) check, so parallel guesses cannot slip past
    if wait:
        message = f"Too many failed attempts. Try again in {int(wait // 60) + 1} minute(s)."
        return _login_form(request, message, 429, form.get("next"))
    password = form.get("password")
    try:
        right = isinstance(password, str) and await request.app[CHECKER].check(password)
    except CheckerBusy:
        limiter.abandoned(address)
        return _login_form(request, "Too many logins at once. Try again in a minute.", 429, form.get("next"))
    if not right:
        if limiter.failed(address):
            log.warning(
                "staff login: %s locked out for %.0f s after repeated wrong passwords", address, limiter.lockout_s
            )
        else:
            log.info("staff login: wrong password from %s", address)
        return _login_form(request, "Wrong password.", 401, form.get("next"))
    limiter.succeeded(address)
    log.info("staff login from %s", address)
    session = request.app[SESSIONS].create()
    response = web.HTTPSeeOther(_safe_next(form.get("next")))  # back to the page staff were on
    response.set_cookie(
        COOKIE, session.token, httponly=True, samesite="Strict", max_age=int(request.app[SESSIONS].lifetime_s)
    )
    response.del_cookie(LOGIN_COOKIE)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE)
    raise response


def logged_out(request: web.Request) -> NoReturn:
    """No live session. A page goes to the login page, which brings staff back to it afterwards. The page's own
    script (which says so in X-Kiosk-Fetch) gets a 401 naming the login page, so that it can keep what was typed
    (in the tab's sessionStorage) before it goes there; so do other data requests."""
    back = _safe_next(request.path if request.method == "GET" else _referer_path(request))
    login_path = "/login" if back == "/status" else f"/login?next={back}"  # _safe_next: nothing to escape
    if request.headers.get("X-Kiosk-Fetch") or (request.method == "GET" and request.path.endswith(".json")):
        body = json.dumps({"error": "your session has ended; log in again", "login": login_path})
        raise web.HTTPUnauthorized(text=body, content_type="application/json")
    raise web.HTTPSeeOther(login_path)


def _referer_path(request: web.Request) -> str:
    """The path of the page a form was posted from (only when that page is on this very host)."""
    referer = request.headers.get("Referer", "")
    origin = f"{request.scheme}://{request.host}"
    return urlsplit(referer).path if referer.startswith(origin + "/") else ""


def _safe_next(path: Any) -> str:
    """A page of this site to return to after login; anything else (another site, odd characters) is Status."""
    if isinstance(path, str) and _NEXT.fullmatch(path) and "//" not in path and path not in ("/login", "/logout"):
        return path
    return "/status"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def form_token(request: web.Request) -> str:
    """The CSRF token of a form shown before login (login, setup code): the one this page set in its cookie, else a
    new one (only a token this page made is ever shown back in the page)."""
    token = request.cookies.get(LOGIN_COOKIE, "")
    return token if TOKEN.fullmatch(token) else new_token()


async def checked_form(request: web.Request) -> dict:
    """A form sent before login (login, setup code), its token checked against the cookie `with_form_token` set."""
    form = await read_form(request)
    if not tokens_match(form.get("csrf"), request.cookies.get(LOGIN_COOKIE, "")):
        raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")
    return form


def with_form_token(response: web.Response, token: str) -> web.Response:
    """`response` carrying `token` in the cookie its form's CSRF check compares with."""
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", max_age=3600)
    return response
