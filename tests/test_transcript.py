"""The exhibit's transcript (/transcript on the captions server) and the captions label with its QR code (/label on
the staff page), over real HTTP on loopback and in headless Chromium with axe-core.

The transcript: every line in every language in config order, escaped, each section marked with its language and
direction, current after a change on the staff page, indifferent to hostile query strings, with the security
headers. The label: behind the login, a QR code that decodes (zbarimg, when installed) to the captions address,
a plain message instead when phones cannot reach the captions, and only the label on paper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
import segno
from aiohttp import web
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory

from kiosk.captions.web import make_captions_app
from kiosk.config import load_config, parse_config
from kiosk.service import Service
from kiosk.staff.app import make_staff_app
from kiosk.staff.auth import PasswordFile
from kiosk.systemd import Notifier

PASSWORD = "correct horse battery"
TIMEOUT = aiohttp.ClientTimeout(total=15)
STEP_MS = 10_000  # bound on every browser wait
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SHOTS = Path(__file__).parent.parent / "artifacts" / "screenshots"
DOCS = Path(__file__).parent.parent / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1920, "height": 1080}

EXHIBIT = """
captions:
  title: Hall of <b>Minerals</b>
languages: [en, de, ar, he]
phrases:
  welcome:
    en: Welcome to the hall of minerals.
    de: Willkommen in der Halle der Minerale.
    ar: مرحبا بكم في قاعة المعادن.
    he: ברוכים הבאים לאולם המינרלים.
  quartz: {en: Quartz is the second most common mineral., de: Quarz ist das zweithäufigste Mineral.}
  garnet: {en: "Garnets <b>glow</b> & \\"shine\\" <script>alert(1)</script>", ar: العقيق يتوهج.}
"""


# -- serving an app on loopback


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    runner = web.AppRunner(app)
    await asyncio.wait_for(runner.setup(), timeout=5)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await asyncio.wait_for(site.start(), timeout=5)
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        await asyncio.wait_for(runner.cleanup(), timeout=10)


class Speaker:
    """The part of kiosk.app.App the captions pages and the label read: the live config, replaced on a reload."""

    def __init__(self, cfg):
        self.cfg = cfg

    async def status(self) -> dict:  # the staff pages' headline
        return {"headline": "All good", "problems": []}


@pytest.fixture
async def transcript():
    """transcript(yaml) → (base URL, speaker, http session) for a captions server over that config."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(text=EXHIBIT):
            speaker = Speaker(parse_config(text))
            base, _ = await stack.enter_async_context(serving(make_captions_app(speaker)))
            http = await stack.enter_async_context(aiohttp.ClientSession(base, timeout=TIMEOUT))
            return base, speaker, http

        yield start


async def get(http, path, **kwargs):
    async with http.get(path, allow_redirects=False, **kwargs) as r:
        return r.status, await r.text(), r.headers


class Page(HTMLParser):
    """The transcript as a reader meets it: each section's language, direction, heading and lines (with their own
    lang and dir), the language links, the h1 and every link."""

    def __init__(self, html: str):
        super().__init__()
        self.sections: list[dict] = []
        self.links: list[dict] = []
        self.h1 = ""
        self.html_attrs: dict = {}
        self._in: list[str] = []
        self._line: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.html_attrs = a
        if tag == "section":
            self.sections.append({**a, "name": "", "lines": []})
        if tag == "a":
            self.links.append({**a, "text": ""})
        if tag == "p" and "line" in (a.get("class") or "").split():
            self._line = {**a, "text": ""}
            self.sections[-1]["lines"].append(self._line)
        self._in.append(tag)

    def handle_endtag(self, tag):
        while self._in and self._in.pop() != tag:
            pass
        if tag == "p":
            self._line = None

    def handle_data(self, data):
        if not self._in:
            return
        if self._in[-1] == "h1":
            self.h1 += data.strip()
        elif self._in[-1] == "h2" and self.sections:
            self.sections[-1]["name"] += data.strip()
        elif self._in[-1] == "a" and self.links:
            self.links[-1]["text"] += data.strip()
        elif self._line is not None:
            self._line["text"] += data


# -- the transcript


async def test_every_line_in_every_language_in_config_order(transcript):
    _, speaker, http = await transcript()
    status, html, headers = await get(http, "/transcript")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = Page(html)
    cfg = speaker.cfg
    assert [s["lang"] for s in page.sections] == ["en", "de", "ar", "he"]
    assert [s["name"] for s in page.sections] == ["English", "Deutsch", "العربية", "עברית"]
    for section in page.sections:
        code = section["lang"]
        said = [cfg.text_for(pid, code)[0] for pid in cfg.phrases]  # as the speaker says each, config order
        assert [line["text"] for line in section["lines"]] == said, code
    for pid in cfg.phrases:  # the staff's ids are not the visitors' business
        assert not re.search(rf"\b{pid}\b", html), pid
    assert page.h1 == "Hall of <b>Minerals</b>"
    assert "<b>Minerals</b>" not in html and "Hall of &lt;b&gt;Minerals&lt;/b&gt;" in html


async def test_a_line_with_html_is_shown_as_text(transcript):
    _, _, http = await transcript()
    _, html, _ = await get(http, "/transcript")
    assert "<script>alert(1)</script>" not in html and "<b>glow</b>" not in html
    assert "Garnets &lt;b&gt;glow&lt;/b&gt; &amp; &#34;shine&#34; &lt;script&gt;alert(1)&lt;/script&gt;" in html
    english = Page(html).sections[0]["lines"]
    assert english[2]["text"] == 'Garnets <b>glow</b> & "shine" <script>alert(1)</script>'


async def test_sections_carry_their_language_and_direction(transcript):
    _, _, http = await transcript()
    _, html, _ = await get(http, "/transcript")
    page = Page(html)
    assert page.html_attrs == {"lang": "en", "dir": "ltr"}
    by_lang = {s["lang"]: s for s in page.sections}
    assert {code: s["dir"] for code, s in by_lang.items()} == {"en": "ltr", "de": "ltr", "ar": "rtl", "he": "rtl"}
    assert all(s["id"] == s["lang"] for s in page.sections)  # the switcher's anchors
    # A line not translated yet is the default language's text, as the speaker says it, and marked as such.
    he = by_lang["he"]["lines"]
    assert [(line.get("lang"), line.get("dir")) for line in he] == [(None, None), ("en", "ltr"), ("en", "ltr")]
    de = by_lang["de"]["lines"]
    assert [line.get("lang") for line in de] == [None, None, "en"]
    switcher = [link for link in page.links if link["href"].startswith("#")]
    assert [(lk["href"], lk["lang"], lk["dir"], lk["text"]) for lk in switcher] == [
        ("#en", "en", "ltr", "English"),
        ("#de", "de", "ltr", "Deutsch"),
        ("#ar", "ar", "rtl", "العربية"),
        ("#he", "he", "rtl", "עברית"),
    ]
    back = [link for link in page.links if link["href"] == "/captions"]
    assert [link["text"] for link in back] == ["Live captions"]


async def test_one_unnamed_language_and_no_title(transcript):
    _, _, http = await transcript("phrases:\n  welcome: Welcome.\n  quartz: Quartz is hard.\n")
    _, html, _ = await get(http, "/transcript")
    page = Page(html)
    assert page.h1 == "Transcript" and "<nav" not in html  # nothing to switch between
    assert [[line["text"] for line in s["lines"]] for s in page.sections] == [["Welcome.", "Quartz is hard."]]
    _, _, http2 = await transcript("phrases: {}\n")
    _, html, _ = await get(http2, "/transcript")
    assert "No lines yet." in html


async def test_a_default_language_written_right_to_left_turns_the_page(transcript):
    _, _, http = await transcript("captions:\n  title: قاعة المعادن\nlanguages: [ar, en]\nphrases:\n  a: مرحبا\n")
    _, html, _ = await get(http, "/transcript")
    page = Page(html)
    assert page.html_attrs == {"lang": "ar", "dir": "rtl"} and page.h1 == "قاعة المعادن"
    assert [(s["lang"], s["dir"]) for s in page.sections] == [("ar", "rtl"), ("en", "ltr")]
    assert page.sections[1]["lines"][0] == {"class": "line", "lang": "ar", "dir": "rtl", "text": "مرحبا"}


async def test_current_after_a_change_on_the_staff_page(tmp_path, server, alsa_file, monkeypatch):
    """A line added on the staff page (saved, reloaded) is in the transcript at its next request."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = tmp_path / "kiosk.yaml"
    config.write_text(
        f"openai:\n  base_url: {server.url}/v1\nspeech:\n  fallback: none\n"
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\napi:\n  port: 0\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'pw'}\n"
        f"  settings_file: {tmp_path / 'staff.yaml'}\n"
        "captions:\n  bind: 127.0.0.1\n  port: 0\n"
        "languages: [en, de]\nphrases:\n  welcome: {en: Welcome., de: Willkommen.}\n"
    )
    service = Service(
        load_config(config),
        config_path=config,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=MockFactory(),
        notifier=Notifier({}),
    )
    await asyncio.wait_for(service.start(), timeout=10)
    try:
        PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
        staff_base = f"http://127.0.0.1:{service.staff_port}"
        jar = aiohttp.CookieJar(unsafe=True)
        async with (
            serving(make_captions_app(service.app)) as (captions_base, _),
            aiohttp.ClientSession(captions_base, timeout=TIMEOUT) as visitor,
            aiohttp.ClientSession(staff_base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": staff_base}) as staff,
        ):
            _, html, _ = await get(visitor, "/transcript")
            assert "Gold &amp; silver" not in html
            await log_in(staff)
            token = await csrf_of(staff, "/lines")
            async with staff.post(
                "/lines/add", data={"csrf": token, "id": "gold", "text": "Gold & silver."}, allow_redirects=False
            ) as r:
                assert r.status == 303, await r.text()
            _, html, _ = await get(visitor, "/transcript")
            sections = Page(html).sections
            assert [line["text"] for line in sections[0]["lines"]] == ["Welcome.", "Gold & silver."]
            assert [line["text"] for line in sections[1]["lines"]] == ["Willkommen.", "Gold & silver."]
            assert sections[1]["lines"][1]["lang"] == "en"
    finally:
        await asyncio.wait_for(service.stop(), timeout=10)


async def test_a_config_reload_shows_at_the_next_request(transcript):
    _, speaker, http = await transcript()
    speaker.cfg = dataclasses.replace(
        speaker.cfg, captions=dataclasses.replace(speaker.cfg.captions, title=""), phrases={"only": "Only this."}
    )
    _, html, _ = await get(http, "/transcript")
    page = Page(html)
    assert page.h1 == "Transcript" and [line["text"] for line in page.sections[0]["lines"]] == ["Only this."]


HOSTILE_QUERIES = (
    "lang=../../etc/passwd",
    "lang=%3Cscript%3Ealert(1)%3C/script%3E",
    "%ff%fe=%00%01",
    "a=" + "x" * 4000,
    "&&&===;;;",
    "lang[]=1&lang[]=2",
    "q=%E2%80%AE%F0%9F%92%A9",
    "%",
    "a=%zz",
    "callback=alert(1)&format=json",
)


async def test_hostile_query_strings_are_ignored(transcript):
    base, _, http = await transcript()
    _, plain, _ = await get(http, "/transcript")
    for query in HOSTILE_QUERIES:
        for method in ("GET", "HEAD"):
            url = aiohttp.client.URL(f"{base}/transcript?{query}", encoded=True)
            async with http.request(method, url, allow_redirects=False) as r:
                body = await r.text()
                assert r.status == 200, (method, query, r.status)
                if method == "GET":
                    assert body == plain, query  # the query changes nothing
    # What a client library would not send at all: raw bytes on the wire. A 4xx at worst, never a 5xx.
    host, port = base.removeprefix("http://").split(":")
    for target in (b"/transcript?\xff\xfe", b"/transcript?a=\x01\x7f", b"/transcript?" + b"%" * 3000, b"/transcript#x"):
        status = await raw_status(host, int(port), b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert 200 <= status < 500, (target[:40], status)


async def raw_status(host, port, request: bytes) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=5)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_only_get_and_head(transcript):
    _, _, http = await transcript()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        async with http.request(method, "/transcript", data="x") as r:
            assert r.status == 405, method
    async with http.head("/transcript") as r:
        assert r.status == 200 and await r.read() == b""


async def test_security_headers(transcript):
    _, _, http = await transcript()
    for path in ("/transcript", "/transcript.css"):
        status, _, headers = await get(http, path)
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "style-src 'self'" in csp
        assert "script-src" not in csp and "unsafe-inline" not in csp  # no script may run at all
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
    _, html, headers = await get(http, "/transcript")
    assert headers["Cache-Control"] == "no-store"
    assert "<script" not in html.replace("&lt;script", "") and " style=" not in html
    _, css, headers = await get(http, "/transcript.css")
    assert headers["Content-Type"].startswith("text/css") and "@media print" in css


# -- the captions label on the staff page


@pytest.fixture
async def staff():
    """staff(yaml, host=...) → (speaker, logged-in http session sending that Host header, base URL) for a staff app
    over a config with those `captions:` keys (indented) or other sections."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(text="", *, host=None, tmp=None, login=True):
            state = Path(tmp)
            cfg = parse_config(
                f"staff:\n  password_file: {state / 'pw'}\n  settings_file: {state / 'staff.yaml'}\n"
                "captions:\n  title: Hall of Minerals\n" + text
            )
            speaker = Speaker(cfg)
            PasswordFile(cfg.staff.password_file).set(PASSWORD)
            base, port = await stack.enter_async_context(serving(make_staff_app(speaker)))
            headers = {"Origin": base}
            if host:  # as if the browser had reached the speaker by that name: its Origin names it too
                headers = {"Host": host.format(port=port), "Origin": "http://" + host.format(port=port)}
            jar = aiohttp.CookieJar(unsafe=True)
            http = await stack.enter_async_context(
                aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers=headers)
            )
            if login:
                await log_in(http)
            return speaker, http, base

        yield start


async def csrf_of(http, path):
    _, html, _ = await get(http, path)
    return html.split('name="csrf" value="')[1].split('"')[0]


async def log_in(http):
    token = await csrf_of(http, "/login")
    async with http.post("/login", data={"csrf": token, "password": PASSWORD}, allow_redirects=False) as r:
        assert r.status == 303


def svg_of(html: str) -> str:
    found = re.findall(r"<svg\b.*?</svg>", html, flags=re.S)
    assert len(found) == 1, found
    return found[0]


def dark_modules(svg: str) -> set[tuple[int, int]]:
    """The dark modules (row, column) segno's path draws: `M x y`/`m dx dy` moves, `h n` a run of n modules on the
    row whose middle is y (the stroke is one module wide)."""
    d = re.search(r'<path[^>]*\sstroke="#000"[^>]*\sd="([^"]+)"', svg).group(1)
    x = y = 0.0
    dark = set()
    for op, a, b in re.findall(r"([Mmh])(-?[\d.]+)(?:\s(-?[\d.]+))?", d):
        if op == "M":
            x, y = float(a), float(b)
        elif op == "m":
            x, y = x + float(a), y + float(b)
        else:
            dark.update((int(y), int(x) + i) for i in range(int(a)))
            x += float(a)
    return dark


def expected_modules(url: str, border: int = 4) -> set[tuple[int, int]]:
    matrix = segno.make(url, error="m", micro=False).matrix
    return {(r + border, c + border) for r, row in enumerate(matrix) for c, bit in enumerate(row) if bit}


def zbar_decode(svg: str, tmp_path: Path) -> str:
    """What a real QR reader reads from the SVG as the browser gets it: rendered to PNG by librsvg, decoded by zbar."""
    missing = [tool for tool in ("rsvg-convert", "zbarimg") if not shutil.which(tool)]
    if missing:
        message = f"{', '.join(missing)} not installed (apt install librsvg2-bin zbar-tools)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    source, png = tmp_path / "label.svg", tmp_path / "label.png"
    source.write_text(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))
    subprocess.run(["rsvg-convert", "-w", "400", "-o", str(png), str(source)], check=True, timeout=30)
    done = subprocess.run(
        ["zbarimg", "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(png)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_the_label_needs_a_login(staff, tmp_path):
    _, http, _ = await staff(tmp=tmp_path, login=False)
    status, html, headers = await get(http, "/label")
    assert status == 303 and headers["Location"] == "/login?next=/label" and "<svg" not in html


async def test_the_label_is_linked_from_the_account_page(staff, tmp_path):
    _, http, _ = await staff(tmp=tmp_path)
    _, html, _ = await get(http, "/account")
    assert 'href="/label"' in html


@pytest.mark.parametrize(
    ("host", "extra", "url"),
    [
        ("192.0.2.10:{port}", "", "http://192.0.2.10:8081/captions"),
        ("[2001:db8::5]:{port}", "  port: 9090\n", "http://[2001:db8::5]:9090/captions"),
        ("192.0.2.10:{port}", "hostnames: [hall3.museum.lan]\n", "http://hall3.museum.lan:8081/captions"),
        ("192.0.2.10:{port}", "  bind: 192.0.2.77\n", "http://192.0.2.77:8081/captions"),
    ],
)
async def test_the_qr_code_opens_the_captions(staff, tmp_path, host, extra, url):
    """The address phones use: the configured name, else the captions' own address, else the one this browser used."""
    _, http, _ = await staff(extra, host=host, tmp=tmp_path)
    status, html, headers = await get(http, "/label")
    assert status == 200, html
    assert "Hall of Minerals" in html and "Read what the speaker says on your phone" in html
    origin, _, page = url.rpartition("/")
    assert f'<p class="label-url">{origin}<wbr>/{page}</p>' in html
    svg = svg_of(html)
    assert dark_modules(svg) == expected_modules(url)
    assert zbar_decode(svg, tmp_path) == url
    # The staff pages' CSP holds: the SVG carries no style attribute, no script, no event handler.
    assert not re.search(r"\sstyle=|<script|\son\w+=", svg)
    assert "style-src 'self'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("  enabled: false\n", "the captions are turned off"),
        ("  bind: 127.0.0.1\n", "shown only on the speaker itself"),
        ("  bind: '::1'\n", "shown only on the speaker itself"),
        ("  bind: localhost\n", "shown only on the speaker itself"),
        ("  port: 0\n", "chosen anew each time the speaker starts"),
    ],
)
async def test_no_code_when_phones_cannot_reach_the_captions(staff, tmp_path, extra, says):
    _, http, _ = await staff(extra, host="192.0.2.10:{port}", tmp=tmp_path)
    status, html, _ = await get(http, "/label")
    assert status == 200 and "<svg" not in html and "Print the label" not in html
    assert says in html and "kiosk.yaml" in html and "restart the speaker" in html


async def test_no_code_for_a_page_opened_on_the_speaker_itself(staff, tmp_path):
    for host in (None, "localhost:{port}", "[::1]:{port}", "kiosk.localhost:{port}"):
        _, http, _ = await staff(host=host, tmp=tmp_path)
        status, html, _ = await get(http, "/label")
        assert status == 200 and "<svg" not in html and "opened on the speaker itself" in html, host
    _, http, _ = await staff("hostnames: [hall3.museum.lan]\n", tmp=tmp_path)  # a configured name needs no guess
    _, html, _ = await get(http, "/label")
    assert "http://hall3.museum.lan:8081/captions" in html


async def test_a_foreign_host_name_gets_no_label(staff, tmp_path):
    _, http, _ = await staff(host="evil.example:{port}", tmp=tmp_path, login=False)
    status, html, _ = await get(http, "/label")
    assert status == 421 and "<svg" not in html


# -- in a real browser: axe-core, phone and desktop sizes, print


@pytest.fixture
async def page_at(browser):
    contexts = []

    async def open_page(size):
        context = await browser.new_context(viewport=size, device_scale_factor=1)
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(STEP_MS)
        page.test_errors = []
        page.on("pageerror", lambda exc: page.test_errors.append(str(exc)))
        page.on("console", lambda msg: console_problem(msg) and page.test_errors.append(msg.text))
        page.on(
            "response",
            lambda r: (
                r.status >= 400
                and not r.url.endswith("/favicon.ico")
                and page.test_errors.append(f"{r.status} {r.url}")
            ),
        )
        return page

    yield open_page
    for context in contexts:
        await context.close()


def console_problem(msg) -> bool:
    """An error or warning the page logs (a Content-Security-Policy refusal among them); a failed load is told by
    its response instead, with its address (a browser asks for /favicon.ico by itself)."""
    return msg.type in ("error", "warning") and not msg.text.startswith("Failed to load resource")


async def axe_violations(page) -> list[str]:
    await page.evaluate(AXE.read_text())  # from the test, not the page: its Content-Security-Policy stays as it is
    result = await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in result["violations"]]


# Every link and button is at least 44×44 px.
SMALL_TARGETS = """() => [...document.querySelectorAll('a, button')]
  .filter((el) => el.getClientRects().length)
  .map((el) => [el, el.getBoundingClientRect()])
  .filter(([, r]) => r.height < 43.5 || r.width < 43.5)
  .map(([el, r]) => `${el.tagName.toLowerCase()} "${el.textContent.trim().slice(0, 20)}" ${r.width}x${r.height}`)"""

VISIBLE = "(sel) => [...document.querySelectorAll(sel)].filter((el) => el.getClientRects().length).length"


async def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    if os.environ.get("KIOSK_REFRESH_SCREENSHOTS") == "1" and name in ("transcript-phone", "label-phone"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / f"{name}.png", DOCS / f"{name}.png")


async def test_transcript_in_a_browser_passes_axe_and_prints(transcript, page_at):
    base, _, _ = await transcript()
    for size_name, size in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await page_at(size)
        await page.goto(f"{base}/transcript")
        await page.evaluate("document.fonts.ready")
        assert await axe_violations(page) == []
        assert await page.evaluate(SMALL_TARGETS) == []
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
        assert await page.evaluate("getComputedStyle(document.body).fontSize") in ("20px", "24px")
        await shot(page, f"transcript-{size_name}")
        await page.click("nav >> text=עברית")
        assert page.url.endswith("#he")
        assert not page.test_errors, page.test_errors  # among them any Content-Security-Policy refusal

        await page.emulate_media(media="print")
        assert await page.evaluate(VISIBLE, "nav, .back") == 0  # no controls on paper
        colours = await page.evaluate(
            "[getComputedStyle(document.body).color, getComputedStyle(document.body).backgroundColor]"
        )
        assert colours == ["rgb(0, 0, 0)", "rgb(255, 255, 255)"]
        breaks = await page.evaluate(
            "[...document.querySelectorAll('section')].map((s) => getComputedStyle(s).breakBefore)"
        )
        assert breaks == ["auto", "page", "page", "page"]  # each language from a page of its own
        await page.emulate_media(media="screen", color_scheme="dark")
        assert await axe_violations(page) == []  # contrast holds in the dark scheme too


async def test_label_in_a_browser_passes_axe_prints_only_the_label(staff, tmp_path, page_at):
    _, _, base = await staff("hostnames: [hall3.museum.lan]\n", tmp=tmp_path)  # the browser's Host is 127.0.0.1
    for size_name, size in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await page_at(size)
        await page.goto(f"{base}/label")
        assert page.url == f"{base}/login?next=/label"
        await page.fill("#password", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/label")
        await page.locator("#print-label:visible").wait_for()  # the script shows the Print button
        assert await axe_violations(page) == []
        assert await page.evaluate(SMALL_TARGETS) == []
        assert await page.locator(".label-url").inner_text() == "http://hall3.museum.lan:8081/captions"
        await shot(page, f"label-{size_name}")
        await page.evaluate("window.print = () => { document.body.dataset.printed = 'yes'; }")
        await page.click("#print-label")
        assert await page.get_attribute("body", "data-printed") == "yes"

        await page.emulate_media(media="print")
        assert await page.evaluate(VISIBLE, ".label") == 1
        assert await page.evaluate(VISIBLE, "body > header, .headline, main > h1, #print-label, .no-print") == 0
        qr_cm = await page.evaluate("document.querySelector('.qr-box svg').getBoundingClientRect().width / 96 * 2.54")
        assert 5.5 < qr_cm < 6.5
        errors = [e for e in page.test_errors if "status.json" not in e]
        assert not errors, errors
