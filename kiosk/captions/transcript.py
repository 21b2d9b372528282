"""The exhibit's transcript at /transcript: every line, word for word, in every language the exhibit offers.

For visitors who cannot hear the speaker or would rather read it all at their own pace, and for the museum to
print. Rendered from the live configuration at each request, so an edit on the staff page shows at the next
reload of the page. Each language is a section marked with its `lang` (and `dir` for a right-to-left one), so that
a screen reader pronounces it right; a line not translated yet is the default language's text, as the speaker says
it, marked with that language. Phrase ids are the staff's names for lines and are never shown.

No script at all, no query parameters read: the address carries nothing a hostile link could use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from kiosk.captions.keys import BACKEND
from kiosk.config import Config, right_to_left
from kiosk.web.templates import template_environment

HERE = Path(__file__).parent
STYLESHEET = HERE / "static" / "transcript.css"

routes = web.RouteTableDef()

_templates = template_environment(HERE / "templates")


#: No script, nothing from elsewhere, no framing, no forms: a page to read and print.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Line:
    text: str
    lang: str | None  # the line's own language where it differs from its section's (not translated yet)
    dir: str | None


@dataclass(frozen=True)
class Section:
    code: str | None  # None: the exhibit names no languages
    name: str
    dir: str
    lines: tuple[Line, ...]


def text_direction(code: str | None) -> str:
    return "rtl" if right_to_left(code) else "ltr"


def sections(cfg: Config) -> list[Section]:
    """One section per offered language (one unnamed section when there are none), each line in config order."""
    if not cfg.languages:
        lines = tuple(Line(text, None, None) for text in cfg.phrases.values())
        return [Section(None, "", "ltr", lines)]
    found = []
    for language in cfg.languages:
        lines = []
        for pid in cfg.phrases:
            text, said_in = cfg.text_for(pid, language.code)
            other = said_in if said_in != language.code else None
            lines.append(Line(text, other, text_direction(other) if other else None))
        found.append(Section(language.code, language.spoken_name, text_direction(language.code), tuple(lines)))
    return found


@routes.get("/transcript")  # HEAD too; any other method is 405
async def transcript(request: web.Request) -> web.Response:
    cfg = request.app[BACKEND].cfg
    html = _templates.get_template("transcript.html").render(
        title=cfg.captions.title.strip(),
        page_lang=cfg.default_language or "en",
        page_dir=text_direction(cfg.default_language),
        sections=sections(cfg),
    )
    headers = {**HEADERS, "Cache-Control": "no-store"}  # always the current lines
    return web.Response(text=html, content_type="text/html", headers=headers)


@routes.get("/transcript.css")
async def stylesheet(request: web.Request) -> web.FileResponse:
    # Checked again at each use (a cheap 304 by its ETag), so that after an update no page keeps the old one.
    return web.FileResponse(STYLESHEET, headers={**HEADERS, "Cache-Control": "no-cache"})
