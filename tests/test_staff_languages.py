"""Translations on the staff page's Lines page over real HTTP with a real Service: a field per offered language,
validated beside the field and saved with the line; drafts from OpenAI's text model (the loopback fake) filled into
the empty fields, never saved by themselves."""

import asyncio
import contextlib
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
import yaml
from conftest import file_sink_opener
from fake_openai import Behaviour
from gpiozero.pins.mock import MockFactory

from kiosk.config import load_config
from kiosk.service import Service
from kiosk.staff.auth import PasswordFile
from kiosk.systemd import Notifier

PASSWORD = "correct horse battery"
TIMEOUT = aiohttp.ClientTimeout(total=15)
BILINGUAL = "languages: [en, de, fr]\nphrases:\n  welcome: {en: Welcome., de: Willkommen.}\n  quartz: Quartz is hard.\n"
MONOLINGUAL = "phrases:\n  welcome: Welcome.\n  quartz: Quartz is hard.\n"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
STEP_MS = 10_000  # bound on every browser wait


@pytest.fixture(autouse=True)
def no_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def write_config(tmp_path, server, *, lines=BILINGUAL, key=True):
    key_line = ""
    if key:
        (tmp_path / "key").write_text("sk-test-key\n")
        key_line = f"  api_key_file: {tmp_path / 'key'}\n"
    path = tmp_path / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server.url}/v1\n{key_line}"
        f"cache:\n  dir: {tmp_path / 'cache'}\n"
        f"history:\n  file: {tmp_path / 'cache'}.history.sqlite3\napi:\n  port: 0\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'state' / 'pw'}\n"
        f"  settings_file: {tmp_path / 'state' / 'staff.yaml'}\n"
        "buttons:\n  - pin: 17\n    phrase: welcome\n    cooldown_ms: 0\n" + lines
    )
    return path


@pytest.fixture
def start(tmp_path, server, alsa_file):
    """start(lines=..., key=...): a real Service from an operator config, its staff page logged into."""

    @contextlib.asynccontextmanager
    async def running(*, lines=BILINGUAL, key=True):
        operator = write_config(tmp_path, server, lines=lines, key=key)
        service = Service(
            load_config(operator),
            config_path=operator,
            open_sink=file_sink_opener(alsa_file[0]),
            pin_factory=MockFactory(),
            notifier=Notifier({}),
        )
        await asyncio.wait_for(service.start(), timeout=10)
        try:
            PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
            base = f"http://127.0.0.1:{service.staff_port}"
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http:
                token = await csrf_of(http, "/login")
                status, _, _ = await post(http, "/login", {"csrf": token, "password": PASSWORD})
                assert status == 303
                yield Staff(service, http, operator, await csrf_of(http))
        finally:
            await asyncio.wait_for(service.stop(), timeout=10)

    return running


class Staff:
    def __init__(self, service, http, operator, token):
        self.service, self.http, self.operator, self.token = service, http, operator, token

    async def post(self, path, fields):
        return await post(self.http, path, {"csrf": self.token, **fields})

    async def page(self):
        status, html, _ = await get(self.http, "/lines")
        assert status == 200
        return Page(html)

    def settings(self):
        path = self.service.cfg.staff.settings_file
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def on_disk(self):
        """The configuration as the speaker would load it now (the operator's file with the staff settings)."""
        return load_config(self.operator)


async def get(http, path):
    async with http.get(path, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def post(http, path, data):
    async with http.post(path, data=data, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def csrf_of(http, path="/lines"):
    _, html, _ = await get(http, path)
    return html.split('name="csrf" value="')[1].split('"')[0]


class Page(HTMLParser):
    """The elements of a page by id (tag, attributes, text), and the labels' text by the field they name."""

    VOID = frozenset({"input", "meta", "link", "br", "img", "hr", "source"})

    def __init__(self, html):
        super().__init__()
        self.html = html
        self.by_id: dict[str, tuple[str, dict, str]] = {}
        self.labels: dict[str, str] = {}
        self.buttons: list[dict] = []
        self._open: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "button":
            self.buttons.append(a)
        if tag in self.VOID:
            return
        key = f"label:{a['for']}" if tag == "label" and "for" in a else a.get("id")
        if key:
            if tag == "label":
                self.labels[a["for"]] = ""
            else:
                self.by_id[key] = (tag, a, "")
        self._open.append((tag, key))

    def handle_data(self, data):
        for _, key in self._open:
            if key is None:
                continue
            if key.startswith("label:"):
                self.labels[key[6:]] += data
            else:
                tag, a, text = self.by_id[key]
                self.by_id[key] = (tag, a, text + data)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def text(self, id_):
        return self.by_id[id_][2]

    def attrs(self, id_):
        return self.by_id[id_][1]

    def described_by(self, id_):
        return self.attrs(id_).get("aria-describedby", "").split()


async def test_each_line_has_a_field_per_language_with_its_translation(start):
    async with start() as staff:
        page = await staff.page()
        for pid, english, german in (("welcome", "Welcome.", "Willkommen."), ("quartz", "Quartz is hard.", "")):
            assert page.text(f"text-{pid}") == english and page.attrs(f"text-{pid}")["name"] == "text"
            assert " ".join(page.labels[f"text-{pid}"].split()) == f"{pid}: English (en)"
            for code, name, value in (("de", "Deutsch", german), ("fr", "Français", "")):
                field = f"text-{pid}-{code}"
                tag, attrs, text = page.by_id[field]
                assert tag == "textarea" and attrs["name"] == f"text.{code}" and text == value
                assert page.labels[field].endswith(f"{name} ({code})")  # "<id>: " before it is for screen readers
                hint = page.text(f"hint-{pid}-{code}")
                assert f"visitors who choose {name} ({code}) hear this line in English" in hint
                assert f"hint-{pid}-{code}" in page.described_by(field) and "aria-invalid" not in attrs
            drafts = [b for b in page.buttons if b.get("formaction") == f"/lines/{pid}/draft"]
            assert len(drafts) == 1 and drafts[0]["type"] == "submit"


async def test_without_languages_the_page_has_no_translation_fields(start):
    async with start(lines=MONOLINGUAL) as staff:
        page = await staff.page()
        assert 'name="text.' not in page.html and "Draft translations" not in page.html
        assert "/draft" not in page.html and "hear this line in" not in page.html
        assert page.labels["text-welcome"] == "welcome"  # the line's name labels its one field, as before
        status, html, _ = await staff.post("/lines/welcome/edit", {"text": "Hello.", "text.de": "Hallo."})
        assert status == 400 and "does not offer" in html and staff.settings() is None
        status, html, _ = await staff.post("/lines/welcome/draft", {"text": "Welcome."})
        assert status == 409 and "offer two or more languages" in Page(html).text("draft-error-welcome")


async def test_saving_a_translation_persists_and_clearing_one_removes_it(start):
    async with start() as staff:
        form = {"text": "Quartz is hard.", "text.de": "", "text.fr": "Le quartz est dur."}
        status, _, headers = await staff.post("/lines/quartz/edit", form)
        assert status == 303 and headers["Location"] == "/lines"
        expected = {"welcome": {"de": "Willkommen."}, "quartz": {"fr": "Le quartz est dur."}}
        assert staff.on_disk().translations == expected and staff.service.cfg.translations == expected
        assert staff.settings()["phrases"]["quartz"] == {"en": "Quartz is hard.", "fr": "Le quartz est dur."}
        assert (await staff.page()).text("text-quartz-fr") == "Le quartz est dur."

        form = {"text": "Welcome.", "text.de": "  ", "text.fr": ""}  # blank: no German any more
        assert (await staff.post("/lines/welcome/edit", form))[0] == 303
        on_disk = staff.on_disk()
        assert on_disk.translations.get("welcome", {}) == {} and on_disk.text_for("welcome", "de") == ("Welcome.", "en")
        assert staff.settings()["phrases"]["welcome"] == "Welcome."
        assert on_disk.translations["quartz"] == {"fr": "Le quartz est dur."}  # the other line is untouched


async def test_a_bad_translation_is_refused_beside_its_field(start):
    async with start() as staff:
        operator_text = staff.operator.read_text()
        form = {"text": "Welcome back.", "text.de": "Will\x07kommen.", "text.fr": "Bienvenue."}
        status, html, _ = await staff.post("/lines/welcome/edit", form)
        assert status == 400 and staff.settings() is None and operator_text == staff.operator.read_text()
        page = Page(html)
        error = page.text("error-welcome-de")
        assert "control character" in error and page.attrs("error-welcome-de")["role"] == "alert"
        assert page.attrs("text-welcome-de")["aria-invalid"] == "true"
        assert "error-welcome-de" in page.described_by("text-welcome-de")
        assert "aria-invalid" not in page.attrs("text-welcome-fr") and "error-welcome" not in page.by_id
        # what was typed is still there to correct
        assert page.text("text-welcome") == "Welcome back." and page.text("text-welcome-fr") == "Bienvenue."
        assert page.text("text-welcome-de") == "Will\x07kommen."
        assert staff.service.cfg.translations == {"welcome": {"de": "Willkommen."}}


async def test_a_field_for_a_language_not_offered_is_refused(start):
    async with start() as staff:
        for field in ("text.xx", "text.en", "text.", "text.<b>" + "x" * 300):
            status, html, _ = await staff.post("/lines/welcome/edit", {"text": "Welcome.", field: "Hallo."})
            assert status == 400, field
            message = Page(html).text("line-error-welcome")
            assert "a language this exhibit does not offer (translations: de, fr)" in message, field
            assert "<b>" not in html and len(message) < 200
        assert staff.settings() is None and staff.service.cfg.translations == {"welcome": {"de": "Willkommen."}}


async def test_editing_the_english_text_keeps_the_translations(start):
    async with start() as staff:
        assert (await staff.post("/lines/welcome/edit", {"text": "Welcome to the hall."}))[0] == 303
        on_disk = staff.on_disk()
        assert on_disk.phrases["welcome"] == "Welcome to the hall."
        assert on_disk.translations["welcome"] == {"de": "Willkommen."}  # a field not sent is left as it is
        form = {"text": "Welcome to the hall of minerals.", "text.de": "Willkommen.", "text.fr": ""}
        assert (await staff.post("/lines/welcome/edit", form))[0] == 303  # the whole form, German unchanged
        assert staff.on_disk().translations == {"welcome": {"de": "Willkommen."}}
        assert staff.service.cfg.text_for("welcome", "de") == ("Willkommen.", "de")


async def test_adding_and_deleting_a_line_keeps_the_translations(start):
    async with start() as staff:
        form = {"text": "Quartz is hard.", "text.fr": "Le quartz est dur."}
        assert (await staff.post("/lines/quartz/edit", form))[0] == 303
        expected = {"welcome": {"de": "Willkommen."}, "quartz": {"fr": "Le quartz est dur."}}
        assert (await staff.post("/lines/add", {"id": "gold", "text": "Gold is soft."}))[0] == 303
        on_disk = staff.on_disk()
        assert on_disk.phrases["gold"] == "Gold is soft." and on_disk.translations == expected
        assert (await staff.post("/lines/gold/edit", {"text": "Gold is soft.", "text.de": "Gold ist weich."}))[0] == 303
        assert (await staff.post("/lines/gold/delete", {}))[0] == 303
        on_disk = staff.on_disk()
        assert "gold" not in on_disk.phrases and on_disk.translations == expected
        assert staff.service.cfg.translations == expected


async def test_drafts_fill_the_empty_fields_and_save_nothing(start, server):
    async with start() as staff:
        operator_text = staff.operator.read_text()
        form = {"text": "Quartz is hard.", "text.de": "", "text.fr": ""}
        status, html, _ = await staff.post("/lines/quartz/draft", form)
        assert status == 200
        page = Page(html)
        assert page.text("text-quartz-de") == "[de] Quartz is hard."
        assert page.text("text-quartz-fr") == "[fr] Quartz is hard."
        notice = page.attrs("draft-note-quartz")
        assert notice["role"] == "status"
        assert "Drafts from OpenAI" in page.text("draft-note-quartz") and "then Save" in page.text("draft-note-quartz")
        assert "Nothing is published until you save" in page.text("draft-note-quartz")
        assert "draft-note-welcome" not in page.by_id and page.text("text-welcome-fr") == ""  # only that line
        assert len(server.chat_requests) == 1
        assert staff.settings() is None and staff.operator.read_text() == operator_text
        assert staff.on_disk().translations == {"welcome": {"de": "Willkommen."}}

        # what staff typed is kept; only the empty field gets a draft
        form = {"text": "Quartz is hard.", "text.de": "Quarz ist hart.", "text.fr": ""}
        page = Page((await staff.post("/lines/quartz/draft", form))[1])
        assert page.text("text-quartz-de") == "Quarz ist hart."
        assert page.text("text-quartz-fr") == "[fr] Quartz is hard."
        assert "What was already in Deutsch is kept" in page.text("draft-note-quartz")

        # a saved translation is kept too, and a change to the English text not yet saved is not lost
        form = {"text": "Welcome, everyone.", "text.de": "Willkommen.", "text.fr": ""}
        page = Page((await staff.post("/lines/welcome/draft", form))[1])
        assert page.text("text-welcome") == "Welcome, everyone." and page.text("text-welcome-de") == "Willkommen."
        assert page.text("text-welcome-fr") == "[fr] Welcome."  # drafted from the saved text, as the notice says
        assert "not of your change" in page.text("draft-note-welcome")
        assert staff.settings() is None and staff.on_disk().translations == {"welcome": {"de": "Willkommen."}}

        # the drafts are saved only when staff save them
        form = {"text": "Quartz is hard.", "text.de": "Quarz ist hart.", "text.fr": "[fr] Quartz is hard."}
        assert (await staff.post("/lines/quartz/edit", form))[0] == 303
        assert staff.on_disk().translations["quartz"] == {"de": "Quarz ist hart.", "fr": "[fr] Quartz is hard."}
        assert (await staff.post("/lines/nope/draft", {"text": "x"}))[0] == 404


async def test_a_failed_draft_is_explained_beside_the_line(start, server):
    async with start() as staff:
        server.behaviour = Behaviour(status=500)
        form = {"text": "Quartz is hard.", "text.de": "Quarz ist hart.", "text.fr": ""}
        status, html, _ = await staff.post("/lines/quartz/draft", form)
        assert status == 409
        page = Page(html)
        error = page.text("draft-error-quartz")
        assert error.startswith("No drafts:") and page.attrs("draft-error-quartz")["role"] == "alert"
        assert "Traceback" not in html and "sk-test-key" not in html
        draft_button = next(b for b in page.buttons if b.get("formaction") == "/lines/quartz/draft")
        assert draft_button["aria-describedby"] == "draft-error-quartz"
        assert page.text("text-quartz-de") == "Quarz ist hart." and page.text("text-quartz-fr") == ""  # kept
        assert staff.settings() is None


async def test_drafts_without_a_key_say_so(start, server):
    async with start(key=False) as staff:
        status, html, _ = await staff.post("/lines/welcome/draft", {"text": "Welcome.", "text.fr": ""})
        assert status == 409 and "API key" in Page(html).text("draft-error-welcome")
        assert server.chat_requests == [] and staff.settings() is None


async def test_drafts_through_the_page_script_keep_what_was_typed_and_pass_axe(start, server, browser):
    """In a real headless Chromium: the form answers in place, the typed German stays, the French draft arrives,
    Save saves it; a failed draft is said beside the line; axe-core finds nothing on the page in any of these."""
    async with start() as staff:
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        page.set_default_timeout(STEP_MS)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        base = f"http://127.0.0.1:{staff.service.staff_port}"
        await page.goto(f"{base}/lines")
        await page.fill("#password", PASSWORD)
        await page.click("form[action='/login'] button[type=submit]")
        await page.wait_for_url(f"{base}/lines")
        assert await axe_violations(page) == []

        await page.fill("#text-quartz-de", "Quarz ist hart.")
        await page.click("#line-quartz button[formaction='/lines/quartz/draft']")
        await page.locator("#draft-note-quartz").wait_for()
        assert page.url == f"{base}/lines"  # answered in place
        assert await page.input_value("#text-quartz-de") == "Quarz ist hart."
        assert await page.input_value("#text-quartz-fr") == "[fr] Quartz is hard."
        await page.locator("#line-quartz .unsaved", has_text="Not saved yet").wait_for()  # the drafts too
        assert await axe_violations(page) == [] and staff.settings() is None

        await page.click("#line-quartz button[data-done='Saved']")
        await page.locator("#line-quartz .form-msg[data-kind=done]").wait_for()
        assert await page.locator("#line-quartz .unsaved").count() == 0
        assert staff.on_disk().translations["quartz"] == {"de": "Quarz ist hart.", "fr": "[fr] Quartz is hard."}

        server.behaviour = Behaviour(status=500)
        await page.click("#line-welcome button[formaction='/lines/welcome/draft']")
        await page.locator("#draft-error-welcome").wait_for()
        focused = await page.evaluate("document.activeElement.getAttribute('aria-describedby')")
        assert focused == "draft-error-welcome"  # the Draft button, which the error describes
        assert await axe_violations(page) == [] and errors == []


async def axe_violations(page):
    await page.evaluate(AXE.read_text())  # from the test, not the page: its Content-Security-Policy stays as it is
    result = await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in result["violations"]]


async def test_staff_play_and_listen_in_a_chosen_language(start):
    async with start() as staff:
        status, _, _ = await staff.post("/lines/welcome/play", {"language": "de"})
        assert status == 303
        await asyncio.wait_for(staff.service.speaker.idle(), 20)
        played = list(staff.service.speaker.history.values())[-1]
        assert (played.origin, played.language, played.text) == ("staff", "de", "Willkommen.")
        status, html, _ = await staff.post("/lines/welcome/play", {"language": "it"})
        assert status == 400 and "is not an offered language" in html
        async with staff.http.get("/lines/quartz/preview.wav", params={"language": "fr"}) as heard:
            assert heard.status == 200 and heard.content_type == "audio/wav"  # no French text: heard in English
            await heard.read()
        async with staff.http.get("/lines/quartz/preview.wav", params={"language": "xx"}) as refused:
            assert refused.status == 404
        assert 'name="language"' in (await staff.page()).html
