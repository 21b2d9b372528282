"""What every staff page shares: the app keys, reading a posted form, the CSRF token check, rendering a template
and saving a change to the staff settings file (validated by the config file's own rules, written atomically,
applied without a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from kiosk.config import load_config, read_staff_settings, unencodable_at
from kiosk.errors import ConfigError
from kiosk.staff import account
from kiosk.staff.auth import LoginLimiter, PasswordChecker, PasswordFile, Session, Sessions
from kiosk.staff.backend import StaffBackend
from kiosk.web.hosts import HostNames
from kiosk.web.server import ConnectionLimits
from kiosk.web.templates import template_environment

log = logging.getLogger(__name__)

HERE = Path(__file__).parent

_templates = template_environment(HERE / "templates")
#: What a button that does not speak a line of its own does, as the Buttons lists say it.
_templates.globals["button_does"] = {
    "stop": "Stops whatever is playing.",
    "language": "Changes the visitor's language.",
    "volume_up": "Turns the volume up for the visitor (within the range set in the config).",
    "volume_down": "Turns the volume down for the visitor (within the range set in the config).",
    "replay": "Says the last line again.",
    "slower": "Says the last line again, more slowly (at the speed set in the config).",
}


BACKEND = web.AppKey("staff_backend", StaffBackend)
SESSION = web.RequestKey("session", Session)
FORM = web.RequestKey("form", Any)
HEADLINE = web.RequestKey("headline", str)
SESSIONS = web.AppKey("sessions", Sessions)
LIMITER = web.AppKey("limiter", LoginLimiter)
CHECKER = web.AppKey("checker", PasswordChecker)
HOSTS = web.AppKey("staff_hosts", HostNames)

TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")  # secrets.token_urlsafe(32) makes 43 such characters
BODY_TIMEOUT_S = ConnectionLimits().body_timeout_s


#: Rows (quiet hours, schedule entries) one form may carry: far more than any museum needs, and a bound on the work.
MAX_ROWS = 50


async def read_form(request: web.Request) -> Any:
    """The posted form; a malformed, oversized or slow body is the client's fault: 4xx, never a traceback.

    Only UTF-8 is read (aiohttp would decode any charset the client names, and some make strings that cannot be
    encoded again), and no field may hold such a string or a file.
    """
    if request.charset not in (None, "utf-8"):
        raise web.HTTPUnsupportedMediaType(text="send the form as UTF-8")
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            form = await request.post()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the form did not arrive in time") from None
    except web.HTTPException:
        raise  # 413 from aiohttp's own size limit
    except Exception as exc:  # aiohttp's multipart and form parsers raise many kinds on malformed input
        log.info("unreadable form from %s: %s", request.remote, type(exc).__name__)
        raise web.HTTPBadRequest(text="the form could not be read; reload the page") from None
    _refuse_odd_fields(form, files_allowed=request.path in _UPLOADS)
    return form


#: The one form that takes a file: restoring the staff settings.
_UPLOADS = {"/account/settings": "settings"}


def _refuse_odd_fields(form: Any, files_allowed: bool) -> None:
    for value in form.values():
        if not isinstance(value, str):
            if files_allowed:
                continue
            with contextlib.suppress(Exception):
                value.file.close()
            raise web.HTTPBadRequest(text="files cannot be sent to this form")
        if unencodable_at(value) is not None:
            raise web.HTTPBadRequest(text="the form holds characters that cannot be encoded; retype it")


def tokens_match(given: Any, expected: str | None) -> bool:
    """True when both are well-formed tokens and equal (an empty or odd one never matches)."""
    if not (isinstance(given, str) and expected and TOKEN.fullmatch(given) and TOKEN.fullmatch(expected)):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def password_file(backend: StaffBackend) -> PasswordFile:
    return PasswordFile(backend.cfg.staff.password_file)


async def save_changes(
    request: web.Request, changes: dict, done: str, page, error_field: str | None, values: dict | None = None
) -> web.StreamResponse:
    """Validate the staff settings with `changes` by the config file's rules; save atomically; apply; redirect.

    Invalid: the form again with each problem beside its field, and nothing saved.
    """
    backend = request.app[BACKEND]
    async with backend.settings_lock:  # read, change, write, reload: never interleaved with MQTT's or OSC's
        settings_path = backend.cfg.staff.settings_file
        settings = {**await asyncio.to_thread(read_staff_settings, settings_path), **changes}
        try:
            await asyncio.to_thread(load_config, backend.config_path, settings)
        except ConfigError as exc:
            return await page(request, _field_errors(exc.problems, error_field), values, 400)
        try:
            await asyncio.to_thread(account.write_settings, settings_path, settings)
        except ConfigError as exc:  # a read-only or full disk: the speaker's fault, not the form's
            return await page(request, {error_field or "form": exc.problems[0]}, values, 503)
        await backend.reload()
    raise web.HTTPSeeOther(done)


def _field_errors(problems: list[str], fallback: str | None) -> dict[str, str]:
    """Map "section.key: message" problems to form fields (openai.speed → speed, quiet_hours[0].end → ...)."""
    errors: dict[str, str] = {}
    for problem in problems:
        where, message = _where_and_message(problem)
        field = (
            where.removeprefix("openai.")
            .removeprefix("speech.")
            .removeprefix("audio.")
            .replace("quiet_hours[", "quiet.")
            .replace("schedule[", "schedule.")
            .replace("]", "")
        )
        errors.setdefault(field if "." in field or field in _FORM_FIELDS else fallback or "form", message)
    return errors


#: A config problem's place: "schedule[0].phrase", "openai.speed" (after an optional source such as a file's name).
_CONFIG_PATH = re.compile(r"[A-Za-z_][\w]*(\[\d+\])?(\.[A-Za-z_][\w]*(\[\d+\])?)*")


def _where_and_message(problem: str) -> tuple[str, str]:
    """("schedule[0].phrase", "no line 'x' in phrases (known keys: a, b)") from such a problem: the place is the first
    part that looks like one, so a message holding ": " of its own stays whole."""
    parts = problem.split(": ")
    for i, part in enumerate(parts[:-1]):
        if _CONFIG_PATH.fullmatch(part):
            return part, ": ".join(parts[i + 1 :])
    return "", problem


_FORM_FIELDS = {"model", "voice", "instructions", "speed", "engine", "volume", "api_key"}


def render(template: str, request: web.Request, status: int = 200, **context: Any) -> web.Response:
    return web.Response(text=render_html(template, request, **context), content_type="text/html", status=status)


def render_html(template: str, request: web.Request, **context: Any) -> str:
    session: Session | None = request.get(SESSION)
    return _templates.get_template(template).render(
        csrf=context.pop("csrf", session.csrf if session else ""),
        logged_in=session is not None,
        headline=request.get(HEADLINE, ""),
        path=request.path,
        static=lambda name: str(request.app.router["static"].url_for(filename=name)),
        **context,
    )


def whole_number(text: str, *, digits: int) -> int | None:
    """`text` as a whole number of at most `digits` ASCII digits (no sign, no '٣'), else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= digits else None
