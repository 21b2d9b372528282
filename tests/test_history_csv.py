"""The history CSV as curators get it: words, not codes; the line's text; safe to open in a spreadsheet."""

import csv
import io
import re
from datetime import datetime

import aiohttp
import pytest
from conftest import Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_service import config, press, started, wait_idle

from kiosk.config import Config, parse_config
from kiosk.history import History, Outcome
from kiosk.history_csv import BOM, CSV_COLUMNS, FORMULA_STARTS, failure_words, outcomes_csv, safe_cell

NOW = 1_780_000_000.0
TIMEOUT = aiohttp.ClientTimeout(total=15)
HYPERLINK = '=HYPERLINK("http://evil.example/x","click")'
CFG = parse_config(
    "captions:\n  port: 0\n  title: Hall of Minerals\n"
    "languages: [en, de, ar]\n"
    "buttons:\n  - {pin: 17, name: Entrance case, phrase: welcome}\n  - {pin: 18, phrase: quartz}\n"
    "phrases:\n"
    "  welcome: {en: Welcome to the hall., de: Willkommen in der Halle., ar: أهلا بكم في القاعة}\n"
    "  quartz: Quartz is silicon dioxide.\n"
    f"  link: '{HYPERLINK}'\n"
    "  plus: '+1 for quartz'\n  minus: '-1 degrees'\n  at: '@x marks the spot'\n"
)
#: Failures as the engines and the sound system word them, with the addresses a curator must not see.
FAILURES = {
    "OpenAI: cannot connect (Cannot connect to host api.openai.com:443 ssl:default [Connect call failed "
    "('10.0.0.5', 443)])": "no network",
    "OpenAI: the stream was cut after 2048 bytes (cannot connect (ClientPayloadError: 10.0.0.5:443))": "voice cut off",
    "OpenAI: server answered 503 Service Unavailable: upstream 10.0.0.5:8080 down": "voice service failed",
    "OpenAI: server answered 429 Too Many Requests": "voice service busy",
    "OpenAI: the API key was refused (401)": "voice service refused the key",
    "OpenAI: the account has run out of credit (429 insufficient_quota)": "voice service out of credit",
    "OpenAI: no audio within 2 s": "voice too slow",
    "no speech engine available now (openai: back-off for 30 s; piper: not installed)": "no voice available",
    "piper: cannot load the voice /opt/voices/de.onnx: OSError: [Errno 2]": "local voice failed",
    "ALSA device 'hw:1,0' failed: [Errno 19] No such device": "sound system problem",
    "internal error: KeyError: 'x' at 0x7f00deadbeef": "software fault",
    "gave up: the line took longer than 90 s": "took too long",
    "something nobody foresaw on 192.168.1.2:22": "unknown problem",
}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def rows_of(exported: str) -> list[dict[str, str]]:
    assert exported.startswith(BOM)
    return list(csv.DictReader(io.StringIO(exported.removeprefix(BOM))))


@pytest.fixture
def exported(tmp_path):
    """Outcomes through a real SQLite history (those at the `untrusted` places recorded while the clock was not
    set), exported as CSV; each export from a database of its own."""

    async def export(outcomes: list[Outcome], cfg: Config = CFG, *, untrusted: frozenset[int] = frozenset()) -> str:
        history = History(tmp_path / f"h{len(list(tmp_path.iterdir()))}.sqlite3", keep_days=400, clock=Clock(NOW))
        await history.open()
        try:
            for i, outcome in enumerate(outcomes):
                history.clock_trusted = lambda i=i: i not in untrusted
                history.record(outcome)
            return await history.csv(days=1, cfg=cfg)
        finally:
            await history.close()

    return export


def row(origin, line, source, ms, outcome, error=None, language=None, at=NOW - 60):
    return Outcome(at, origin, line, source, ms, outcome, error, 20, language)


async def test_every_column_in_words_for_each_kind_of_request(exported):
    rows = rows_of(
        await exported(
            [
                row("button:17", "welcome", "cache", 12.4, "done", language="de"),
                row("staff", "quartz", "openai", 412.6, "done", language="en", at=NOW - 50),
                row("schedule", "welcome", "piper", 230.0, "stopped", language="ar", at=NOW - 40),
                row("mqtt", "quartz", None, None, "busy", at=NOW - 30),
                row("osc", "welcome", None, None, "quiet_hours", at=NOW - 20),
                row("api", None, "openai", 300.2, "done", language="en", at=NOW - 10),
                row("button:23", None, None, None, "closed", at=NOW - 5),
                row("presence", None, None, None, "approach", at=NOW - 4),
                row("somebody-new", "gone", "elsewhere", 1.0, "whatever", at=NOW - 3),
            ]
        )
    )
    assert tuple(rows[0]) == CSV_COLUMNS
    visitor, staff, schedule, mqtt, osc, api, unnamed, approach, unknown = rows
    when = datetime.fromisoformat(visitor["Date and time"])
    assert (
        when.tzinfo is not None
        and when.timestamp() == NOW - 60
        and when.utcoffset() == datetime.now().astimezone().utcoffset()
    )
    assert visitor == {
        **visitor,
        "Clock set": "yes",
        "Exhibit": "Hall of Minerals",
        "Button": "Entrance case",
        "Line": "welcome",
        "Text": "Willkommen in der Halle.",
        "Language": "Deutsch (de)",
        "Who": "visitor button",
        "Heard from": "offline copy",
        "Response (ms)": "12",
        "Outcome": "played",
    }
    assert (staff["Who"], staff["Button"], staff["Text"], staff["Heard from"], staff["Response (ms)"]) == (
        "staff test",
        "",
        "Quartz is silicon dioxide.",
        "online voice",
        "413",
    )
    assert staff["Language"] == "English (en)"
    assert (schedule["Who"], schedule["Heard from"], schedule["Outcome"]) == (
        "schedule",
        "local voice",
        "stopped before the end",
    )
    assert schedule["Text"] == "أهلا بكم في القاعة" and schedule["Language"] == "العربية (ar)"
    assert (mqtt["Who"], mqtt["Heard from"], mqtt["Response (ms)"], mqtt["Outcome"]) == (
        "show control (MQTT)",
        "not heard",
        "",
        "refused: busy speaking",
    )
    assert (osc["Who"], osc["Outcome"]) == ("show control (OSC)", "refused: quiet hours")
    assert (api["Who"], api["Line"], api["Text"]) == ("show control (web API)", "", "")  # free text is not kept
    assert (unnamed["Button"], unnamed["Who"], unnamed["Outcome"]) == (
        "GPIO 23",
        "visitor button",
        "refused: the exhibit is closed",
    )
    assert (approach["Who"], approach["Outcome"]) == ("motion sensor", "a visitor came close")
    assert (unknown["Who"], unknown["Heard from"], unknown["Outcome"], unknown["Text"]) == (
        "other",
        "other voice",
        "other",
        "",
    )


async def test_a_line_text_that_is_a_formula_is_neutralized(exported):
    lines = ["link", "plus", "minus", "at"]
    rows = rows_of(await exported([row("button:18", line, "cache", 5.0, "done") for line in lines]))
    assert [r["Text"] for r in rows] == [f"'{HYPERLINK}", "'+1 for quartz", "'-1 degrees", "'@x marks the spot"]
    tab_and_cr = Config(phrases={"tab": "\tx", "cr": "\rx", "spaced": "  =1+1", "wide": "\uff1dSUM(A1)"})
    rows = rows_of(await exported([row("staff", line, None, None, "busy") for line in tab_and_cr.phrases], tab_and_cr))
    texts = [r["Text"] for r in rows]
    assert texts == [" x", " x", "'  =1+1", "'\uff1dSUM(A1)"]
    for text in texts:
        assert text.lstrip()[0] not in FORMULA_STARTS
    assert safe_cell("\tx")[0] not in FORMULA_STARTS and safe_cell("\rx")[0] not in FORMULA_STARTS


async def test_a_failure_is_a_few_words_without_addresses_or_exception_names(exported):
    rows = rows_of(await exported([row("button:17", "welcome", None, None, "failed", error) for error in FAILURES]))
    assert [r["Outcome"] for r in rows] == [f"failed: {words}" for words in FAILURES.values()]
    for r in rows:
        outcome = r["Outcome"]
        assert not re.search(r"\d|ssl:|error|exception|/|'|\(", outcome, re.IGNORECASE), outcome
    assert failure_words(None) == "no reason given"


async def test_rows_written_while_the_clock_was_not_set_are_marked(exported):
    rows = rows_of(
        await exported(
            [row("button:17", "welcome", "cache", 3.0, "done", at=NOW - 60 + i) for i in range(3)],
            untrusted=frozenset({1}),
        )
    )
    assert [r["Clock set"] for r in rows] == ["yes", "no", "yes"]


async def test_the_download_over_http_names_the_buttons_and_says_the_text(server, tmp_path, alsa_file, pins):
    buttons = "buttons:\n  - {pin: 17, name: Entrance case, phrase: welcome, cooldown_ms: 0}\n"
    extra = "captions:\n  port: 0\n  title: Hall of Minerals\n"
    service = await started(config(server.url, tmp_path / "c", buttons, extra), alsa_file[0], pins)
    try:
        press(pins, 17)
        await wait_idle(service)
        service.app.play(phrase="quartz", text=None, origin="staff")
        await wait_idle(service)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}", timeout=TIMEOUT) as http:
            async with http.post("/api/play", json={"phrase": "welcome"}) as r:
                assert r.status == 202
            await wait_idle(service)
            async with http.get("/api/history.csv?days=1") as r:
                assert r.status == 200 and r.content_type == "text/csv" and r.charset == "utf-8"
                body = await r.read()
        assert body.startswith(b"\xef\xbb\xbfDate and time,Clock set,Exhibit,Button,Line,Text,")
        rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
        said = [(r["Exhibit"], r["Button"], r["Line"], r["Who"], r["Outcome"]) for r in rows]
        assert said == [
            ("Hall of Minerals", "Entrance case", "welcome", "visitor button", "played"),
            ("Hall of Minerals", "", "quartz", "staff test", "played"),
            ("Hall of Minerals", "", "welcome", "show control (web API)", "played"),
        ]
        assert rows[0]["Text"] == service.cfg.phrases["welcome"] and rows[0]["Heard from"] == "online voice"
        assert rows[2]["Heard from"] == "offline copy" and rows[2]["Response (ms)"].isdigit()
    finally:
        await service.stop()


# -- whatever the text, the export is safe and whole

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # lone surrogates included


def _safe(cell: str) -> bool:
    stripped = cell.lstrip()
    return not stripped or stripped[0] not in FORMULA_STARTS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=ANY_TEXT, line=ANY_TEXT, origin=ANY_TEXT, source=ANY_TEXT, outcome=ANY_TEXT, error=ANY_TEXT, lang=ANY_TEXT)
def test_any_text_exports_safely_and_parses_back(text, line, origin, source, outcome, error, lang):
    cfg = Config(phrases={line: text}, translations={line: {lang: text}})
    rows = [
        Outcome(NOW, origin, line, source, 1.5, outcome, error, 1, lang),
        Outcome(NOW, f"button:{origin}", line, None, None, "failed", error, 1, lang, clock_trusted=False),
    ]
    exported = outcomes_csv(rows, cfg)
    exported.encode("utf-8")  # a lone surrogate never reaches the download
    parsed = list(csv.reader(io.StringIO(exported.removeprefix(BOM), newline="")))
    assert len(parsed) == 3 and all(len(r) == len(CSV_COLUMNS) for r in parsed)
    assert all(_safe(cell) for r in parsed[1:] for cell in r)
    assert parsed[1][CSV_COLUMNS.index("Text")] == safe_cell(text)


@given(ANY_TEXT)
def test_a_safe_cell_never_starts_a_formula_and_keeps_unicode(value):
    cell = safe_cell(value)
    assert _safe(cell) and not re.search(r"[\x00-\x1f\x7f-\x9f]", cell)
    cell.encode("utf-8")
    if value.isprintable() and value == value.strip() and value[:1] not in FORMULA_STARTS:
        assert cell == value
