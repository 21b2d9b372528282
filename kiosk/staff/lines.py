"""The Lines page: the exhibit lines and their translations (add, edit, delete, play, preview, drafts from OpenAI)
and which line each button says."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from kiosk.config import Config, phrase_problem
from kiosk.errors import KioskError
from kiosk.plain_words import fault_words
from kiosk.speaker import Rejected
from kiosk.staff.common import BACKEND, FORM, render, save_changes
from kiosk.trace import SPEECH_S_PER_CHAR
from kiosk.web.api import stream_wav

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


#: Past this a visitor is unlikely to stay for the whole line: the Lines page says so.
LONG_LINE_S = 60


@routes.get("/lines")
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
    ready = set(await asyncio.to_thread(backend.ready_lines))  # reads the cache directory: not on the loop
    said_by: dict[str, list[str]] = {}
    for b in cfg.buttons:
        if plays_a_line(b):
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
    return render(
        "lines.html",
        request,
        status=status,
        lines=lines,
        phrases=cfg.phrases,
        buttons=[
            {"pin": b.pin, "name": button_name(b), "action": b.action, "phrase": b.phrase if plays_a_line(b) else None}
            for b in cfg.buttons
        ],
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


def plays_a_line(button: Any) -> bool:
    """Whether a button says a line of its own (action: speak). A language, stop, volume, replay or slower button
    does not, even when a line is stored on it (the staff settings of an older version could put one there): it is
    never shown as saying it, nor given one here."""
    return button.action == "speak" and bool(button.phrase)


def _length(text: str) -> dict:
    """A line's length in characters and roughly how long it takes to say (the page updates it as staff type)."""
    seconds = round(len(text) * SPEECH_S_PER_CHAR)
    minutes, rest = divmod(seconds, 60)
    spoken = f"{minutes} min {rest} s" if minutes else f"{max(seconds, 1)} s"
    return {"chars": len(text), "spoken": f"about {spoken}", "long": seconds > LONG_LINE_S}


@routes.post("/lines/add")
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
    return await save_changes(request, {"phrases": settings}, "/lines", lines_page, f"new.{pid}")


@routes.post("/lines/{id}/edit")
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
    return await save_changes(request, {"phrases": settings}, "/lines", lines_page, f"{pid}.text", values)


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


@routes.post("/lines/{id}/delete")
async def delete_line(request: web.Request) -> web.Response:
    pid = request.match_info["id"]
    cfg = request.app[BACKEND].cfg
    if pid not in cfg.phrases:
        raise web.HTTPNotFound(text=f"no line '{pid}'")
    users = [button_name(b) for b in cfg.buttons if plays_a_line(b) and b.phrase == pid]
    users += [f"the {a.time} announcement" for a in cfg.schedule if a.phrase == pid]
    users += ["attract mode" for phrase in cfg.attract.phrases if phrase == pid][:1]
    users += ["the closed line" for phrase in [cfg.closed_phrase] if phrase == pid]
    if users:
        who = ", ".join(users)
        return await lines_page(
            request, {f"{pid}.text": f"{who} still says this line; give it another line first"}, status=400
        )
    phrases = cfg.phrase_settings({k: v for k, v in cfg.phrases.items() if k != pid})
    return await save_changes(request, {"phrases": phrases}, "/lines", lines_page, f"{pid}.text")


@routes.post("/lines/{id}/play")
async def play_line(request: web.Request) -> web.Response:
    pid = request.match_info["id"]
    if pid not in request.app[BACKEND].cfg.phrases:
        raise web.HTTPNotFound(text=f"no line '{pid}'")
    language = str(request[FORM].get("language", "")).strip() or None
    try:
        played = request.app[BACKEND].play(phrase=pid, text=None, origin="staff", language=language)
    except Rejected as exc:
        status = 400 if exc.reason == "unknown_language" else 409
        return await lines_page(request, {f"{pid}.text": f"not played: {exc}"}, status=status)
    failure = await _failure_soon(played)
    if failure:
        return await lines_page(request, {f"{pid}.text": f"Not played: {failure}."}, status=409)
    raise web.HTTPSeeOther("/lines")


#: How long "Play on the speaker" waits before it says the line is playing: a line that cannot be spoken (no
#: network, a refused key) fails well within it, and the page then says so instead.
PLAY_ANSWER_S = 6.0


async def _failure_soon(played: Any) -> str | None:
    """Why the line failed, in staff words, if it fails within PLAY_ANSWER_S; None while it plays or once done."""
    deadline = asyncio.get_running_loop().time() + PLAY_ANSWER_S
    while played.state in ("queued", "playing") and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    if played.state == "dropped":
        return "another line took its place"
    if played.state == "failed":
        return fault_words(played.trace.error if played.trace else None)
    return None


#: How long the page's own script waits for an answer (SEND_TIMEOUT_MS in send.js, 20 s): drafts asked for by it
#: end a little before, so that it shows why; a plain form (no script) waits as long as OpenAI's own timeouts.
SCRIPT_DRAFT_TIMEOUT_S = 18.0


@routes.post("/lines/{id}/draft")
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


@routes.get("/lines/{id}/preview.wav")
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


@routes.post("/buttons")
async def assign_buttons(request: web.Request) -> web.Response:
    """Which line each button that plays one says. A line for any other button (language, stop, volume, replay,
    slower) is refused and nothing is saved: the form never offers it, so such a post is not the page's."""
    form, cfg = request[FORM], request.app[BACKEND].cfg
    assignment, errors = {}, {}
    by_pin = {str(b.pin): b for b in cfg.buttons}
    for name in form:
        pin = name.removeprefix("button.") if name.startswith("button.") else None
        if pin is None:
            continue
        button = by_pin.get(pin)
        if button is None:
            shown = pin[:_SHOWN_CODE_CHARS] + ("…" if len(pin) > _SHOWN_CODE_CHARS else "")
            errors["buttons"] = f"there is no button on GPIO {shown}; reload the page"
        elif button.action != "speak":
            kind = button.action.replace("_", " ")
            errors[f"button.{pin}"] = (
                f"{button_name(button)} is a {kind} button: it plays no line of its own, so it cannot be given one"
            )
    if errors:
        return await lines_page(request, errors, status=400)
    for button in cfg.buttons:
        if button.action != "speak":  # only a speak button says a line of its own
            continue
        choice = str(form.get(f"button.{button.pin}", button.phrase or ""))
        if choice not in cfg.phrases:
            errors[f"button.{button.pin}"] = "choose one of the lines"
        assignment[str(button.pin)] = choice
    if errors:
        return await lines_page(request, errors, status=400)
    return await save_changes(request, {"button_phrases": assignment}, "/lines", lines_page, "buttons")
