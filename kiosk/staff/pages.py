"""The staff web page: status, exhibit lines and buttons, voice, volume and quiet hours.

Server-rendered Jinja2 templates with autoescaping (staff text is shown, never run), a little JavaScript for live
status and progress, nothing from a CDN. Every change is validated with the config file's own rules, saved
atomically to the staff settings file (the operator's kiosk.yaml and its comments are never rewritten) and
applied without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from kiosk.announcer import SPEECH_S_PER_CHAR
from kiosk.config import WEEKDAYS, Config, load_config, phrase_problem, read_staff_settings, unencodable_at
from kiosk.errors import ConfigError, KioskError
from kiosk.fileio import write_atomically
from kiosk.speaker import Rejected
from kiosk.speech import openai_engine
from kiosk.staff import account
from kiosk.staff.auth import CheckerBusy, LoginLimiter, PasswordChecker, PasswordFile, Session, Sessions
from kiosk.web.api import ApiError, history_days, send_wav, stream_wav
from kiosk.web.hosts import HostNames
from kiosk.web.server import ConnectionLimits

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "kiosk_session"
LOGIN_COOKIE = "kiosk_login"
KEY_MASK = "••••••••"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every value is HTML-escaped unless a template says otherwise (none does)
    undefined=jinja2.StrictUndefined,
)


class StaffBackend(Protocol):
    """What the staff page needs from the service."""

    cfg: Config
    config_path: Path

    async def status(self) -> dict: ...
    async def reload(self) -> bool: ...
    def play(self, *, phrase: str | None, text: str | None, origin: str, language: str | None = None) -> Any: ...
    async def listen(self, text: str, language: str | None = None) -> Any: ...
    def warm_progress(self) -> dict: ...
    def voice_report(self) -> dict: ...
    def local_voices(self) -> list[str]: ...
    async def sample(self, engine: str, voice: str) -> Any: ...
    def allow_trigger(self) -> float | None: ...
    def next_announcement(self) -> dict | None: ...
    def identify_button(self, pin: int) -> str | None: ...
    async def history_summary(self, days: int) -> dict: ...
    async def history_csv(self, days: int) -> str: ...
    async def draft_translations(self, phrase: str) -> dict[str, str]: ...
    def line_text(self, *, phrase: str | None, text: str | None, language: str | None = None) -> tuple: ...


BACKEND = web.AppKey("staff_backend", StaffBackend)
SESSION = web.RequestKey("session", Session)
FORM = web.RequestKey("form", Any)
HEADLINE = web.RequestKey("headline", str)
SESSIONS = web.AppKey("sessions", Sessions)
LIMITER = web.AppKey("limiter", LoginLimiter)
CHECKER = web.AppKey("checker", PasswordChecker)
HOSTS = web.AppKey("staff_hosts", HostNames)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_UPLOAD_BYTES = 64 * 1024
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")  # secrets.token_urlsafe(32) makes 43 such characters
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
BODY_TIMEOUT_S = ConnectionLimits().body_timeout_s


def make_staff_app(
    backend: StaffBackend, *, clock: Callable[[], float] = time.monotonic, hosts: HostNames | None = None
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[_security_headers, _guard])
    app[BACKEND] = backend
    app[SESSIONS] = Sessions(backend.cfg.staff.session_hours * 3600, clock)
    app[LIMITER] = LoginLimiter(clock=clock)
    app[CHECKER] = PasswordChecker(lambda: _passwords(backend))
    app[HOSTS] = hosts or HostNames()
    app.on_cleanup.append(_close_checker)
    r = app.router
    r.add_get("/", home)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/status", status_page)
    r.add_get("/status.json", status_json)
    r.add_get("/status/history.json", history_json)
    r.add_get("/status/history.csv", history_csv)
    r.add_get("/lines", lines_page)
    r.add_post("/lines/add", add_line)
    r.add_post("/lines/{id}/edit", edit_line)
    r.add_post("/lines/{id}/delete", delete_line)
    r.add_post("/lines/{id}/play", play_line)
    r.add_post("/lines/{id}/draft", draft_line)
    r.add_get("/lines/{id}/preview.wav", preview_line)
    r.add_post("/buttons", assign_buttons)
    r.add_post("/buttons/{pin}/identify", identify_button)
    r.add_get("/voice", voice_page)
    r.add_post("/voice", save_voice)
    r.add_get("/voice/progress.json", warm_progress)
    r.add_get("/voice/sample.wav", voice_sample)
    r.add_get("/volume", volume_page)
    r.add_post("/volume", save_volume)
    r.add_get("/schedule", schedule_page)
    r.add_post("/schedule", save_schedule)
    r.add_get("/account", account_page)
    r.add_post("/account/password", change_password)
    r.add_get("/account/settings.yaml", download_settings)
    r.add_post("/account/settings", upload_settings)
    r.add_static("/static", HERE / "static", name="static", append_version=True)
    return app


# -- access control


_PUBLIC = ("/login", "/static/")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """No password set → only the setup notice. No session → the login page. POSTs need origin and CSRF."""
    backend = request.app[BACKEND]
    if not request.app[HOSTS].allows_host(request.headers.get("Host")):
        raise web.HTTPMisdirectedRequest(
            text="this device does not answer to that host name (see hostnames in kiosk.yaml)"
        )
    if not _passwords(backend).is_set() and not request.path.startswith("/static/"):
        return _render("setup.html", request, status=503, password_file=str(backend.cfg.staff.password_file))
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
        _logged_out(request)
    request[SESSION] = session
    if request.method == "POST":
        form = await _read_form(request)
        if not _tokens_match(form.get("csrf"), session.csrf):
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


def short_headline(status: dict) -> str:
    """The backend's headline in a few words: the first problem without the technical detail after its colon
    (raw ALSA text has no place at the top of every page; the status page shows it), and how many more there are.
    app.js shortens it the same way as it refreshes."""
    problems = status.get("problems") or []
    if not problems:
        return status["headline"]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"Needs attention: {problem_parts(problems[0])[0]}{more}"


def problem_parts(problem: str) -> tuple[str, str]:
    """("Speaker missing or failing", "cannot open ALSA device ...") from "Speaker missing or failing: cannot ..."."""
    short, _, detail = problem.partition(": ")
    return short.rstrip("."), detail


_NEXT = re.compile(r"/[a-z][a-z0-9_/-]{0,80}")


def _logged_out(request: web.Request) -> NoReturn:
    """No live session. A page goes to the login page, which brings staff back to it afterwards. The page's own
    script (which says so in X-Kiosk-Fetch) gets a 401 naming the login page, so that it can keep what was typed
    (in the tab's sessionStorage) before it goes there; so do other data requests."""
    back = _safe_next(request.path if request.method == "GET" else _referer_path(request))
    login = "/login" if back == "/status" else f"/login?next={back}"  # _safe_next: nothing to escape
    if request.headers.get("X-Kiosk-Fetch") or (request.method == "GET" and request.path.endswith(".json")):
        body = json.dumps({"error": "your session has ended; log in again", "login": login})
        raise web.HTTPUnauthorized(text=body, content_type="application/json")
    raise web.HTTPSeeOther(login)


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


async def _read_form(request: web.Request) -> Any:
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


def _tokens_match(given: Any, expected: str | None) -> bool:
    """True when both are well-formed tokens and equal (an empty or odd one never matches)."""
    if not (isinstance(given, str) and expected and _TOKEN.fullmatch(given) and _TOKEN.fullmatch(expected)):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


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
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response


def _passwords(backend: StaffBackend) -> PasswordFile:
    return PasswordFile(backend.cfg.staff.password_file)


async def login_page(request: web.Request) -> web.Response:
    return _login_form(request)


def _login_form(
    request: web.Request, error: str | None = None, status: int = 200, next_path: Any = None
) -> web.Response:
    token = request.cookies.get(LOGIN_COOKIE, "")
    if not _TOKEN.fullmatch(token):  # only a token this page made is shown back in the page
        token = _new_token()
    back = _safe_next(next_path or request.query.get("next"))
    response = _render("login.html", request, status=status, csrf=token, error=error, next_path=back)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", max_age=3600)
    return response


async def login(request: web.Request) -> web.Response:
    form = await _read_form(request)
    if not _tokens_match(form.get("csrf"), request.cookies.get(LOGIN_COOKIE, "")):
        raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")
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


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE)
    raise response


# -- pages


async def status_page(request: web.Request, errors: dict | None = None, status: int = 200) -> web.Response:
    info = await request.app[BACKEND].status()
    problems = [problem_parts(problem) for problem in info["problems"]]
    return _render(
        "status.html", request, status=status, status_info=info, problems=problems, errors=errors or {}, now=time.time()
    )


async def status_json(request: web.Request) -> web.Response:
    # The speaker's own clock, so that the page can say "pressed 2 s ago" whatever the phone's clock says.
    info = {**await request.app[BACKEND].status(), "server_time": time.time()}
    return web.json_response(info, dumps=_dumps)


def _history_days(request: web.Request) -> int:
    try:
        return history_days(request.query)
    except ApiError as exc:  # a page, not a traceback: the address was typed or edited by hand
        html = _html("message.html", request, title="That history cannot be shown", message=str(exc))
        raise web.HTTPBadRequest(text=html, content_type="text/html") from None


async def history_json(request: web.Request) -> web.Response:
    """What the status page charts: presses per day per line, by hour of day, response times."""
    summary = await request.app[BACKEND].history_summary(_history_days(request))
    return web.json_response(summary, dumps=_dumps)


async def history_csv(request: web.Request) -> web.Response:
    """Every press and trigger of the last `days` days as a spreadsheet-ready download."""
    days = _history_days(request)
    body = await request.app[BACKEND].history_csv(days)
    disposition = f'attachment; filename="exhibit-speaker-history-{days}-days.csv"'
    return web.Response(text=body, content_type="text/csv", headers={"Content-Disposition": disposition})


async def identify_button(request: web.Request) -> web.Response:
    """Blink a button's LED so staff can tell which one it is."""
    backend, pin_text = request.app[BACKEND], request.match_info["pin"]
    pin = _whole_number(pin_text, digits=2)
    if pin is None or not any(b.pin == pin for b in backend.cfg.buttons):
        raise web.HTTPNotFound(text="there is no such button")
    problem = backend.identify_button(pin)
    if problem:
        return await status_page(request, {f"identify.{pin}": problem}, 409)
    raise web.HTTPSeeOther("/status")


#: Past this a visitor is unlikely to stay for the whole line: the Lines page says so.
LONG_LINE_S = 60


async def lines_page(
    request: web.Request,
    errors: dict | None = None,
    values: dict | None = None,
    status: int = 200,
    notices: dict | None = None,
) -> web.Response:
    """The lines, each with its translation fields when the exhibit offers languages. `values` holds what was
    typed (`<id>` for the line, `<id>.text.<code>` for a translation); `notices` a message beside a line."""
    backend = request.app[BACKEND]
    cfg = backend.cfg
    values = values or {}
    ready = set((await backend.status())["cache"].get("ready_ids", []))
    said_by: dict[str, list[str]] = {}
    for b in cfg.buttons:
        if b.phrase:
            said_by.setdefault(b.phrase, []).append(button_name(b))
    others = _translated_languages(cfg)
    lines = []
    for pid, text in cfg.phrases.items():
        saved = cfg.translations.get(pid, {})
        translations = []
        for lang in others:
            typed = values.get(f"{pid}.text.{lang.code}", saved.get(lang.code, ""))
            saved_text = saved.get(lang.code, "")
            translations.append(
                {
                    "code": lang.code,
                    "label": _language_label(lang),
                    "text": typed,
                    "saved": saved_text,
                    **_length(typed),
                }
            )
        line = {"id": pid, "text": text, "ready": pid in ready, "said_by": said_by.get(pid, []), **_length(text)}
        lines.append(line | {"translations": translations})
    default = cfg.languages[0] if others else None
    return _render(
        "lines.html",
        request,
        status=status,
        lines=lines,
        phrases=cfg.phrases,
        buttons=[{"pin": b.pin, "name": button_name(b), "action": b.action, "phrase": b.phrase} for b in cfg.buttons],
        ready=ready,
        errors=errors or {},
        values=values,
        notices=notices or {},
        languages=[{"code": lang.code, "label": _language_label(lang)} for lang in cfg.languages],
        default_label=_language_label(default) if default else None,
        default_name=default.spoken_name if default else None,
        new_length=_length(values.get("new.text", "")),
        s_per_char=SPEECH_S_PER_CHAR,
        long_s=LONG_LINE_S,
    )


def _translated_languages(cfg: Config) -> tuple:
    """The languages a line may be translated into on the Lines page: every offered one but the default."""
    return cfg.languages[1:] if len(cfg.languages) > 1 else ()


def _language_label(lang: Any) -> str:
    return f"{lang.spoken_name} ({lang.code})"


def button_name(button: Any) -> str:
    return button.name or f"Button on GPIO {button.pin}"


def _length(text: str) -> dict:
    """A line's length in characters and roughly how long it takes to say (the page updates it as staff type)."""
    seconds = round(len(text) * SPEECH_S_PER_CHAR)
    minutes, rest = divmod(seconds, 60)
    spoken = f"{minutes} min {rest} s" if minutes else f"{max(seconds, 1)} s"
    return {"chars": len(text), "spoken": f"about {spoken}", "long": seconds > LONG_LINE_S}


async def add_line(request: web.Request) -> web.Response:
    form = request[FORM]
    pid, text = str(form.get("id", "")).strip(), str(form.get("text", "")).strip()
    phrases = dict(request.app[BACKEND].cfg.phrases)
    problem = phrase_problem(pid, text)
    if pid in phrases:
        problem = f"there is already a line '{pid}'"
    if problem:
        field = "text" if problem.startswith("text") else "id"
        return await lines_page(request, {f"new.{field}": problem}, {"new.id": pid, "new.text": text}, 400)
    phrases[pid] = text
    settings = request.app[BACKEND].cfg.phrase_settings(phrases)
    return await _save(request, {"phrases": settings}, "/lines", lines_page, f"new.{pid}")


async def edit_line(request: web.Request) -> web.Response:
    pid = request.match_info["id"]
    form, cfg = request[FORM], request.app[BACKEND].cfg
    if pid not in cfg.phrases:
        raise web.HTTPNotFound(text=f"no line '{pid}'")
    text = str(form.get("text", "")).strip()
    typed, odd = _typed_translations(cfg, form)
    values = {pid: text, **{f"{pid}.text.{code}": t for code, t in typed.items()}}
    if odd:
        return await lines_page(request, {f"{pid}.line": odd}, values, 400)
    errors = {}
    problem = phrase_problem(pid, text)
    if problem:
        errors[f"{pid}.text"] = problem
    for code, translation in typed.items():
        problem = phrase_problem(pid, translation) if translation else None  # empty: no translation
        if problem:
            errors[f"{pid}.text.{code}"] = problem
    if errors:
        return await lines_page(request, errors, values, 400)
    phrases = {**cfg.phrases, pid: text}
    kept = {code: t for code, t in cfg.translations.get(pid, {}).items() if code not in typed}  # a field left out
    line_translations = kept | {code: t for code, t in typed.items() if t}
    translations = {**cfg.translations, pid: line_translations}
    settings = cfg.phrase_settings(phrases, translations)
    return await _save(request, {"phrases": settings}, "/lines", lines_page, f"{pid}.text", values)


#: A language code as the Lines page names it in its fields (text.<code>); anything else is shown shortened.
_SHOWN_CODE_CHARS = 20


def _typed_translations(cfg: Config, form: Any) -> tuple[dict[str, str], str | None]:
    """The translations posted ({code: text}, "" for a field left empty; a field not sent is not in it), and why
    the form cannot be taken (a field for a language that is not offered), or None."""
    offered = [lang.code for lang in _translated_languages(cfg)]
    for name in form:
        code = name.removeprefix("text.") if name.startswith("text.") else None
        if code is not None and code not in offered:
            shown = code[:_SHOWN_CODE_CHARS] + ("…" if len(code) > _SHOWN_CODE_CHARS else "")
            offer = f"translations: {', '.join(offered)}" if offered else "it offers no languages to translate into"
            return {}, f"the form has a field for '{shown}', a language this exhibit does not offer ({offer}); reload"
    typed = {code: str(form[f"text.{code}"]).strip() for code in offered if f"text.{code}" in form}
    return typed, None


async def delete_line(request: web.Request) -> web.Response:
    pid = request.match_info["id"]
    cfg = request.app[BACKEND].cfg
    if pid not in cfg.phrases:
        raise web.HTTPNotFound(text=f"no line '{pid}'")
    users = [button_name(b) for b in cfg.buttons if b.phrase == pid]
    users += [f"the {a.time} announcement" for a in cfg.schedule if a.phrase == pid]
    users += ["attract mode" for phrase in cfg.attract.phrases if phrase == pid][:1]
    users += ["the closed line" for phrase in [cfg.closed_phrase] if phrase == pid]
    if users:
        who = ", ".join(users)
        return await lines_page(
            request, {f"{pid}.text": f"{who} still says this line; give it another line first"}, status=400
        )
    phrases = cfg.phrase_settings({k: v for k, v in cfg.phrases.items() if k != pid})
    return await _save(request, {"phrases": phrases}, "/lines", lines_page, f"{pid}.text")


async def play_line(request: web.Request) -> web.Response:
    pid = request.match_info["id"]
    if pid not in request.app[BACKEND].cfg.phrases:
        raise web.HTTPNotFound(text=f"no line '{pid}'")
    language = str(request[FORM].get("language", "")).strip() or None
    try:
        request.app[BACKEND].play(phrase=pid, text=None, origin="staff", language=language)
    except Rejected as exc:
        status = 400 if exc.reason == "unknown_language" else 409
        return await lines_page(request, {f"{pid}.text": f"not played: {exc}"}, status=status)
    raise web.HTTPSeeOther("/lines")


#: How long the page's own script waits for an answer (SEND_TIMEOUT_MS in app.js, 20 s): drafts asked for by it
#: end a little before, so that it shows why; a plain form (no script) waits as long as OpenAI's own timeouts.
SCRIPT_DRAFT_TIMEOUT_S = 18.0


async def draft_line(request: web.Request) -> web.Response:
    """Drafts of a line's translations from OpenAI, filled into the fields left empty (what staff typed is kept),
    for staff to review and save: nothing is saved here."""
    pid = request.match_info["id"]
    backend, form = request.app[BACKEND], request[FORM]
    cfg = backend.cfg
    if pid not in cfg.phrases:
        raise web.HTTPNotFound(text=f"no line '{pid}'")
    text = str(form.get("text", cfg.phrases[pid])).strip()
    typed, odd = _typed_translations(cfg, form)
    values = {pid: text, **{f"{pid}.text.{code}": t for code, t in typed.items()}}
    if odd:
        return await lines_page(request, {f"{pid}.line": odd}, values, 400)
    timeout = SCRIPT_DRAFT_TIMEOUT_S if request.headers.get("X-Kiosk-Fetch") else None
    try:
        async with asyncio.timeout(timeout):
            drafts = await backend.draft_translations(pid)
    except KioskError as exc:
        return await lines_page(request, {f"{pid}.draft": f"No drafts: {exc}"}, values, 409)
    except TimeoutError:
        problem = "No drafts: OpenAI did not answer in time; try again, or type the translations"
        return await lines_page(request, {f"{pid}.draft": problem}, values, 409)
    except Exception:  # a page, never a traceback; the log has the details
        log.exception("drafting translations of %r failed", pid)
        return await lines_page(request, {f"{pid}.draft": "No drafts: something went wrong (see the log)"}, values, 409)
    saved = cfg.translations.get(pid, {})
    filled, kept, missing = [], [], []
    for lang in _translated_languages(cfg):
        key = f"{pid}.text.{lang.code}"
        if values.get(key, saved.get(lang.code, "")):
            kept.append(lang.spoken_name)  # what staff typed (or what is saved) is never replaced
        elif drafts.get(lang.code):
            values[key] = drafts[lang.code]
            filled.append(lang.spoken_name)
        else:
            missing.append(lang.spoken_name)
    notice = _draft_notice(filled, kept, missing, text_changed=text != cfg.phrases[pid])
    return await lines_page(request, values=values, notices={pid: notice})


def _draft_notice(filled: list[str], kept: list[str], missing: list[str], *, text_changed: bool) -> str:
    parts = []
    if filled:
        parts.append(f"Drafts from OpenAI filled in for {', '.join(filled)}: review them, then Save.")
    else:
        parts.append("No draft was filled in.")
    if kept:
        parts.append(f"What was already in {', '.join(kept)} is kept.")
    if missing:
        parts.append(f"OpenAI gave no draft for {', '.join(missing)}.")
    if text_changed:
        parts.append("The drafts are of the saved text, not of your change to it.")
    parts.append("Nothing is published until you save.")
    return " ".join(parts)


async def preview_line(request: web.Request) -> web.StreamResponse:
    """The line as WAV, streamed as it is synthesized when it is not cached yet."""
    pid = request.match_info["id"]
    backend = request.app[BACKEND]
    if pid not in backend.cfg.phrases:
        raise web.HTTPNotFound(text=f"no line '{pid}'")
    try:
        text, language = backend.line_text(phrase=pid, text=None, language=request.query.get("language") or None)
    except Rejected as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return await stream_wav(request, backend, text, language)


async def assign_buttons(request: web.Request) -> web.Response:
    form, cfg = request[FORM], request.app[BACKEND].cfg
    assignment, errors = {}, {}
    for button in cfg.buttons:
        if button.action == "stop":
            continue
        choice = str(form.get(f"button.{button.pin}", button.phrase or ""))
        if choice not in cfg.phrases:
            errors[f"button.{button.pin}"] = "choose one of the lines"
        assignment[str(button.pin)] = choice
    if errors:
        return await lines_page(request, errors, status=400)
    return await _save(request, {"button_phrases": assignment}, "/lines", lines_page, "buttons")


async def voice_page(
    request: web.Request, errors: dict | None = None, values: dict | None = None, status: int = 200
) -> web.Response:
    backend = request.app[BACKEND]
    cfg = backend.cfg
    key_file = cfg.openai.api_key_file
    return _render(
        "voice.html",
        request,
        status=status,
        openai=cfg.openai,
        engine=cfg.speech.engine,
        local_voice=cfg.piper.voice,
        now=backend.voice_report(),
        choices=_voice_choices(backend),
        errors=errors or {},
        values=values or {},
        key_set=bool(key_file and key_file.exists()),
        key_from_env=bool(os.environ.get("OPENAI_API_KEY")),
        key_file=key_file,
        key_mask=KEY_MASK,
        progress=backend.warm_progress(),
    )


def _voice_choices(backend: StaffBackend) -> dict[str, list[str]]:
    """What the Voice page offers: OpenAI's models and voices, the local voices installed, and whatever kiosk.yaml
    names besides (an OpenAI-compatible server may have other voices)."""
    cfg = backend.cfg
    return {
        "engine": ["auto", "openai", "piper"],
        "model": list(dict.fromkeys([*openai_engine.MODELS, cfg.openai.model])),
        "voice": list(dict.fromkeys([*openai_engine.VOICES, cfg.openai.voice])),
        "local_voice": backend.local_voices(),
    }


_KEY = re.compile(r"[A-Za-z0-9_-]{8,300}")


async def save_voice(request: web.Request) -> web.Response:
    form, backend = request[FORM], request.app[BACKEND]
    cfg = backend.cfg
    current = {"engine": cfg.speech.engine, "model": cfg.openai.model, "voice": cfg.openai.voice}
    current["local_voice"] = cfg.piper.voice
    values = {name: str(form.get(name, current[name])).strip() for name in current}  # a field left out: unchanged
    values |= {"instructions": str(form.get("instructions", "")).strip(), "speed": str(form.get("speed", "")).strip()}
    choices = _voice_choices(backend)
    errors = {
        name: "choose one of the listed options"
        for name in ("engine", "model", "voice")
        if values[name] not in choices[name]
    }
    if choices["local_voice"] and values["local_voice"] not in choices["local_voice"]:
        errors["local_voice"] = "choose one of the listed voices"
    speed = _finite_number(values["speed"])
    if speed is None:
        errors["speed"] = "must be a number from 0.25 to 4"
    new_key = str(form.get("api_key", "")).strip()
    if new_key == KEY_MASK:
        new_key = ""  # the mask sent back changes nothing
    if new_key and cfg.openai.api_key_file is None:
        errors["api_key"] = "set openai.api_key_file in kiosk.yaml to let the key be changed here"
    elif new_key and not _KEY.fullmatch(new_key):
        errors["api_key"] = "an OpenAI key is letters, digits, '-' and '_' (paste it again)"
    if errors:
        return await voice_page(request, errors, values, 400)
    openai = {
        "model": values["model"],
        "voice": values["voice"],
        "instructions": values["instructions"],
        "speed": speed,
    }
    changes = {"openai": openai, "speech": {"engine": values["engine"]}}
    if choices["local_voice"]:
        changes["piper"] = {"voice": values["local_voice"]}
    try:
        return await _save(request, changes, "/voice", voice_page, None, values)
    except web.HTTPSeeOther:  # saved: now the key, if a new one was typed
        if new_key:
            await asyncio.to_thread(_write_key, cfg.openai.api_key_file, new_key)
            await backend.reload()  # used from the next line on
        raise


def _finite_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


async def voice_sample(request: web.Request) -> web.StreamResponse:
    """A short sample of a voice, streamed as it is made (not cached)."""
    backend = request.app[BACKEND]
    engine, voice = request.query.get("engine", ""), request.query.get("voice", "")
    choices = _voice_choices(backend)
    allowed = choices["voice"] if engine == "openai" else choices["local_voice"] if engine == "piper" else []
    if voice not in allowed:
        raise web.HTTPBadRequest(text="choose one of the listed voices")
    if backend.allow_trigger() is not None:
        raise web.HTTPTooManyRequests(text="too many samples at once; try again in a moment")
    try:
        sample = await backend.sample(engine, voice)
    except KioskError as exc:
        raise web.HTTPServiceUnavailable(text=f"cannot play a sample now: {exc}") from None
    try:
        return await send_wav(request, sample.fmt, sample)
    finally:
        await sample.aclose()


def _write_key(path: Path, key: str) -> None:
    write_atomically(path, key.encode() + b"\n", mode=0o600)


async def warm_progress(request: web.Request) -> web.Response:
    return web.json_response(request.app[BACKEND].warm_progress())


async def volume_page(
    request: web.Request, errors: dict | None = None, values: dict | None = None, status: int = 200
) -> web.Response:
    cfg = request.app[BACKEND].cfg
    values = values or {}
    rows = values.get("quiet_rows")
    if rows is None:
        rows = [{**dataclasses.asdict(q), "overnight": q.overnight} for q in cfg.quiet_hours]
    return _render(
        "volume.html",
        request,
        status=status,
        volume=cfg.audio.volume,
        rows=[*rows, {"start": "", "end": "", "volume": 0, "days": (), "overnight": False, "new": True}],
        weekdays=WEEKDAYS,
        errors=errors or {},
        values=values,
    )


#: Rows of quiet hours one form may carry: far more than any museum needs, and a bound on the work.
_MAX_QUIET_ROWS = 50


async def save_volume(request: web.Request) -> web.Response:
    form = request[FORM]
    volume_text = str(form.get("volume", "")).strip()
    rows = _quiet_rows(form)
    values = {"volume": volume_text, "quiet_rows": rows}
    if _whole_number(volume_text, digits=3) is None:
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
    return await _save(request, changes, "/volume", volume_page, None, values)


def _whole_number(text: str, *, digits: int) -> int | None:
    """`text` as a whole number of at most `digits` ASCII digits (no sign, no '٣'), else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= digits else None


def _quiet_rows(form: Any) -> list[dict]:
    """The quiet periods posted, in order, without blank or removed rows (numbered afresh, so that a problem
    the config finds in quiet_hours[i] is shown beside row i)."""
    rows = []
    for i in range(_MAX_QUIET_ROWS):
        start, end = (str(form.get(f"quiet.{i}.{key}", "")).strip() for key in ("start", "end"))
        if (not start and not end) or form.get(f"quiet.{i}.remove"):
            continue
        volume_text = str(form.get(f"quiet.{i}.volume", "0")).strip() or "0"
        volume = _whole_number(volume_text, digits=3)
        volume = volume_text if volume is None else volume
        days = [day for day in WEEKDAYS if day in form.getall(f"quiet.{i}.days", [])]
        rows.append(
            {"start": start, "end": end, "volume": volume, "days": days, "overnight": bool(end and end < start)}
        )
    return rows


# -- schedule


async def schedule_page(
    request: web.Request, errors: dict | None = None, values: dict | None = None, status: int = 200
) -> web.Response:
    backend = request.app[BACKEND]
    cfg = backend.cfg
    values = values or {}
    rows = values.get("rows")
    if rows is None:
        rows = [dataclasses.asdict(entry) for entry in cfg.schedule]
    return _render(
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


async def save_schedule(request: web.Request) -> web.Response:
    form = request[FORM]
    rows = []
    for i in range(_MAX_QUIET_ROWS):
        time_text, phrase = (str(form.get(f"schedule.{i}.{key}", "")).strip() for key in ("time", "phrase"))
        if (not time_text and not phrase) or form.get(f"schedule.{i}.remove"):
            continue
        days = [day for day in WEEKDAYS if day in form.getall(f"schedule.{i}.days", [])]
        rows.append({"time": time_text, "phrase": phrase, "days": days})
    entries = [{k: v for k, v in row.items() if v or k != "days"} for row in rows]
    values = {"rows": rows}
    return await _save(request, {"schedule": entries}, "/schedule", schedule_page, None, values)


# -- account and settings


async def account_page(
    request: web.Request, errors: dict | None = None, notice: str | None = None, status: int = 200
) -> web.Response:
    return _render("account.html", request, status=status, errors=errors or {}, notice=notice, values={})


async def change_password(request: web.Request) -> web.Response:
    form = request[FORM]
    current, new, repeat = (str(form.get(name, "")) for name in ("current", "new", "repeat"))
    passwords = _passwords(request.app[BACKEND])
    limiter, address = request.app[LIMITER], request.remote or "?"
    if limiter.begin(address):  # the current password is a guess like any other
        return await account_page(
            request, {"current": "too many wrong passwords; try again in a few minutes"}, status=429
        )
    errors = await asyncio.to_thread(account.password_change_errors, passwords, current, new, repeat)
    if "current" in errors:
        limiter.failed(address)
        log.info("staff password change: wrong current password from %s", address)
        return await account_page(request, errors, status=400)
    limiter.succeeded(address)
    if errors:
        return await account_page(request, errors, status=400)
    try:
        await asyncio.to_thread(passwords.set, new)
    except ConfigError as exc:
        return await account_page(request, {"new": exc.problems[0]}, status=503)
    request.app[SESSIONS].end_all_but(request[SESSION].token)  # whoever knew the old password is logged out
    log.warning("staff password changed from %s", address)
    return await account_page(request, notice="Password changed.")


async def download_settings(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(account.settings_file_bytes, request.app[BACKEND].cfg.staff.settings_file)
    stamp = time.strftime("%Y-%m-%d")
    headers = {"Content-Disposition": f'attachment; filename="kiosk-staff-settings-{stamp}.yaml"'}
    return web.Response(body=body, content_type="application/x-yaml", headers=headers)


async def upload_settings(request: web.Request) -> web.Response:
    upload = request[FORM].get("settings")
    if upload is None or isinstance(upload, str):
        return await account_page(request, {"settings": "choose a settings file to restore"}, status=400)
    try:
        data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    finally:
        upload.file.close()
    backend = request.app[BACKEND]
    try:
        await asyncio.to_thread(account.restore_settings, backend.config_path, backend.cfg.staff.settings_file, data)
    except ConfigError as exc:
        return await account_page(request, {"settings": "; ".join(exc.problems[:5])}, status=400)
    await backend.reload()
    return await account_page(request, notice="Settings restored; the previous ones are kept as a .bak file.")


# -- saving


async def _save(
    request: web.Request, changes: dict, done: str, page, error_field: str | None, values: dict | None = None
) -> web.StreamResponse:
    """Validate the staff settings with `changes` by the config file's rules; save atomically; apply; redirect.

    Invalid: the form again with each problem beside its field, and nothing saved.
    """
    backend = request.app[BACKEND]
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
        where, _, message = problem.rpartition(": ")
        where = where.split(": ")[-1]
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


_FORM_FIELDS = {"model", "voice", "instructions", "speed", "engine", "volume", "api_key"}


# -- rendering


def _render(template: str, request: web.Request, status: int = 200, **context: Any) -> web.Response:
    return web.Response(text=_html(template, request, **context), content_type="text/html", status=status)


def _html(template: str, request: web.Request, **context: Any) -> str:
    session: Session | None = request.get(SESSION)
    return _templates.get_template(template).render(
        csrf=context.pop("csrf", session.csrf if session else ""),
        logged_in=session is not None,
        headline=request.get(HEADLINE, ""),
        path=request.path,
        static=lambda name: str(request.app.router["static"].url_for(filename=name)),
        **context,
    )


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/status")


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
