"""Setting the staff password with a setup code: on a speaker with no password yet (its first visit), and when the
password is forgotten. Staff hold the setup button; the speaker says a six-digit code (kiosk.setup_code); the code
and a new password, typed here, set the password and log staff in.

A wrong code counts toward the login lockout (LoginLimiter), as a wrong password does. A reset ends every session
that was open.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from kiosk.staff.auth import password_problem
from kiosk.staff.common import BACKEND, LIMITER, SESSIONS, password_file, render
from kiosk.staff.login import COOKIE, LOGIN_COOKIE, checked_form, form_token, with_form_token

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

_FIELDS = ("code", "new", "repeat")


@routes.get("/setup")
async def setup_page(request: web.Request) -> web.Response:
    return setup_form(request)


def setup_form(request: web.Request, errors: dict[str, str] | None = None, status: int = 200) -> web.Response:
    """The form for a setup code and a new password (with its own CSRF cookie, as the login form has)."""
    backend = request.app[BACKEND]
    token = form_token(request)
    first = not password_file(backend).is_set()
    response = render(
        "setup.html",
        request,
        status=status,
        csrf=token,
        errors=errors or {},
        first_visit=first,
        button=backend.setup_button_name(),
    )
    return with_form_token(response, token)


@routes.post("/setup")
async def set_with_code(request: web.Request) -> web.Response:
    form = await checked_form(request)
    code, new, repeat = (form.get(name) if isinstance(form.get(name), str) else "" for name in _FIELDS)
    problem = password_problem(new)
    if problem or new != repeat:
        return setup_form(request, {"new": problem} if problem else {"repeat": "the two new passwords differ"}, 400)
    limiter, address = request.app[LIMITER], request.remote or "?"
    wait = limiter.begin(address)  # a code is guessed as a password is: the same lockout
    if wait:
        message = f"Too many wrong codes or passwords. Try again in {int(wait // 60) + 1} minute(s)."
        return setup_form(request, {"code": message}, 429)
    if not request.app[BACKEND].use_setup_code(code):
        if limiter.failed(address):
            log.warning("staff setup: %s locked out for %.0f s after repeated wrong codes", address, limiter.lockout_s)
        else:
            log.info("staff setup: wrong or expired setup code from %s", address)
        return setup_form(request, {"code": "Wrong or expired code. Hold the button again for a new one."}, 401)
    limiter.succeeded(address)
    await asyncio.to_thread(password_file(request.app[BACKEND]).set, new)
    log.warning("staff password set with a setup code from %s; every other session has ended", address)
    return _logged_in(request)


def _logged_in(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    session = sessions.create()
    sessions.end_all_but(session.token)  # a reset: whoever was logged in with the old password is no longer
    response = web.HTTPSeeOther("/status")
    response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict", max_age=int(sessions.lifetime_s))
    response.del_cookie(LOGIN_COOKIE)
    raise response
