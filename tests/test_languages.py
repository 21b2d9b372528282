"""Multilingual exhibits: lines in several languages, the language button, fixed-language buttons, the API's
`language`, fallback to the default language, coverage per language, and translation drafts through the real SDK."""

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import Clock
from fake_openai import Behaviour
from test_service import press, started, until, wait_idle

from kiosk.config import OpenAIConfig, Secret, parse_config
from kiosk.errors import ConfigError, SpeechError
from kiosk.languages import LanguageChoice
from kiosk.speech.openai_engine import draft_translations

TIMEOUT = aiohttp.ClientTimeout(total=15)
LINES = """phrases:
  welcome:
    en: Welcome to the hall of minerals.
    de: Willkommen in der Halle der Mineralien.
    fr: Bienvenue dans la salle des minéraux.
  quartz:
    en: Quartz grows as six-sided prisms.
    de: Quarz wächst in sechsseitigen Prismen.
  exit: The exit is to your left.
"""
BUTTONS = """buttons:
  - {pin: 17, phrase: welcome, cooldown_ms: 0}
  - {pin: 18, phrase: quartz, cooldown_ms: 0, language: de}
  - {pin: 23, action: language, led: 24, cooldown_ms: 0, reset_s: 60}
"""


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def bilingual(server_url, cache_dir, extra=""):
    return parse_config(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"cache:\n  dir: {cache_dir}\nhistory:\n  file: {cache_dir}.history.sqlite3\n"
        "staff:\n  enabled: false\napi:\n  port: 0\n"
        "speech:\n  fallback: none\n"
        "languages:\n  - en\n  - {code: de, voice: onyx, instructions: Sprich ruhig.}\n  - fr\n"
        f"{BUTTONS}{LINES}{extra}"
    )


def spoken(server) -> list[str]:
    return [r.body["input"] for r in server.requests]


async def test_the_language_button_cycles_says_each_name_and_returns_to_the_default(server, tmp_path, pins, alsa_file):
    """A visitor's walk through the languages: each press of the language button says the next language's own name
    in that language's voice and flashes the LED once per position; the welcome button then speaks that language;
    left alone past reset_s, the next visitor starts in English again."""
    device, _ = alsa_file
    clock = Clock()
    service = await started(bilingual(server.url, tmp_path / "c"), device, pins, clock=clock)
    try:
        walk = []
        for expected in ("de", "fr", "en", "de"):
            last = await pressed(service, pins, 23)
            walk.append((last.language, last.text))
            assert last.language == expected and service.language_choice.current == expected
        print(f"\nlanguage button: {walk}", end="")
        assert walk == [("de", "Deutsch"), ("fr", "Français"), ("en", "English"), ("de", "Deutsch")]
        german = next(r for r in server.requests if r.body["input"] == "Deutsch")
        assert german.body["voice"] == "onyx" and german.body["instructions"] == "Sprich ruhig."
        english = next(r for r in server.requests if r.body["input"] == "English")
        assert english.body["voice"] == "coral"

        heard = await pressed(service, pins, 17)
        print(f"; welcome button: {heard.language} {heard.text!r}", end="")
        assert heard.language == "de" and heard.text == "Willkommen in der Halle der Mineralien."
        assert heard.trace.language == "de"

        clock.now += 61  # nobody pressed anything for longer than reset_s
        heard = await pressed(service, pins, 17)
        print(f"; 61 s later: {heard.language} {heard.text!r}", end="")
        assert heard.language == "en" and heard.text == "Welcome to the hall of minerals."
    finally:
        await service.stop()


async def pressed(service, pins, pin):
    """Press the button on `pin`; its request once it has been spoken."""
    before = len(service.speaker.history)
    press(pins, pin)
    await until(lambda: len(service.speaker.history) > before, timeout=10)
    await wait_idle(service)
    return list(service.speaker.history.values())[-1]


def test_the_language_button_flashes_its_position(pins):
    """gpiozero's MockFactory records the LED's states: the third language flashes three times."""
    from kiosk.buttons import Buttons
    from kiosk.config import ButtonConfig

    loop = asyncio.new_event_loop()
    try:
        config = ButtonConfig(pin=23, action="language", led=24)
        buttons = Buttons((config,), lambda b: None, loop=loop, pin_factory=pins)
        led = pins.pin(24)
        led.clear_states()
        assert buttons.flash(23, 3)  # the LED is found by its button's pin
        deadline = time.monotonic() + 5
        while sum(1 for state in led.states if state.state) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)  # longer than one flash: a fourth would show
        assert sum(1 for state in led.states if state.state) == 3
        assert not buttons.flash(99, 1)  # no button there
        buttons.close()
    finally:
        loop.close()


def test_a_choice_lapses_after_reset_s_without_a_press():
    clock = Clock()
    choice = LanguageChoice(["en", "de", "fr"], clock=clock)
    assert choice.current == "en"
    assert choice.cycle(30) == ("de", 2)
    clock.now += 20
    choice.touch(30)  # a press keeps the choice another 30 s
    clock.now += 25
    assert choice.current == "de"
    clock.now += 6
    assert choice.current == "en"
    assert choice.cycle(30) == ("de", 2)  # a lapsed choice starts again from the default
    assert LanguageChoice([]).current is None


async def test_a_fixed_language_button_and_the_fallback_to_the_default(server, tmp_path, pins, alsa_file):
    device, _ = alsa_file
    service = await started(bilingual(server.url, tmp_path / "c"), device, pins)
    try:
        heard = await pressed(service, pins, 18)  # fixed to German, whatever the visitor chose
        assert (heard.language, heard.text) == ("de", "Quarz wächst in sechsseitigen Prismen.")
        req = service.play(phrase="exit", text=None, origin="api", language="fr")  # no French: English
        await wait_idle(service)
        assert (req.language, req.text, req.state) == ("en", "The exit is to your left.", "done")
        outcomes = await service.history.outcomes(days=1)
        assert [(o.line, o.language) for o in outcomes] == [("quartz", "de"), ("exit", "en")]
    finally:
        await service.stop()


async def test_the_api_takes_a_language_and_its_entry_holds_that_text(server, tmp_path, pins, alsa_file):
    device, _ = alsa_file
    service = await started(bilingual(server.url, tmp_path / "c"), device, pins)
    base = f"http://127.0.0.1:{service.port}"
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.post(f"{base}/api/play", json={"phrase": "welcome", "language": "de"}) as r:
                assert r.status == 202 and (await r.json())["language"] == "de"
            await wait_idle(service)
            async with http.post(f"{base}/api/play", json={"phrase": "welcome", "language": "it"}) as r:
                assert r.status == 404 and "'it' is not an offered language (offered: en, de, fr)" in await r.text()
            async with http.post(f"{base}/api/play", json={"phrase": "welcome", "language": 7}) as r:
                assert r.status == 400 and "'language' must be a string" in await r.text()
            async with http.get(f"{base}/api/speech", params={"phrase": "quartz", "language": "de"}) as r:
                assert r.status == 200 and r.content_type == "audio/wav"
                await r.read()
            async with http.get(f"{base}/api/history", params={"days": 1}) as r:
                rows = await r.json()
        played = next(r for r in service.speaker.history.values() if r.origin == "api")
        assert (played.text, played.language, played.state) == ("Willkommen in der Halle der Mineralien.", "de", "done")
        german = [i for i in service.cache.list() if i.text == "Willkommen in der Halle der Mineralien."]
        assert len(german) == 1 and german[0].engine == "openai"
        assert [row["language"] for row in rows if row["line"] == "welcome"] == ["de"]
    finally:
        await service.stop()


async def test_every_translation_is_warmed_and_coverage_is_counted_per_language(server, tmp_path, pins, alsa_file):
    device, _ = alsa_file
    service = await started(bilingual(server.url, tmp_path / "c"), device, pins)
    try:
        await until(lambda: not service.warm["running"] and service.warm["total"] == 6, timeout=20)
        assert service.warm["done"] == 6  # 3 lines in English, 2 in German, 1 in French
        assert set(spoken(server)) >= {
            "Bienvenue dans la salle des minéraux.",
            "Quarz wächst in sechsseitigen Prismen.",
        }
        status = await service.status()
        coverage = {c["code"]: c for c in status["languages"]}
        assert {code: (c["ready"], c["total"], c["translated"]) for code, c in coverage.items()} == {
            "en": (3, 3, 3),
            "de": (3, 3, 2),
            "fr": (3, 3, 1),
        }
        # Every line is ready: no "needs the network" beside "3/3 ready offline" (the note is for what is not).
        assert coverage["de"]["note"] is None and not coverage["de"]["local_voice"]
        keys = [key for text, language in service.cfg.all_lines() for key in service.announcer.keys_for(text, language)]
        assert all(service.cache.is_pinned(key) for key in keys)  # every translation is pinned
    finally:
        await service.stop()


def test_history_from_before_languages_gains_the_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE requests (time REAL NOT NULL, origin TEXT NOT NULL, line TEXT, source TEXT, "
            "response_ms REAL, outcome TEXT NOT NULL, error TEXT, text_chars INTEGER)"
        )
        db.execute("INSERT INTO requests VALUES (1e9, 'api', 'welcome', 'cache', 1.0, 'done', NULL, 30)")
    from kiosk.history import History

    async def read():
        history = History(path, keep_days=3650)
        await history.open()
        try:
            return await history.outcomes(days=100_000)
        finally:
            await history.close()

    rows = asyncio.run(read())
    assert [(r.line, r.language) for r in rows] == [("welcome", None)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("phrases: {w: {en: a}}", "phrases.w: a map of translations needs languages: (the first is the default)"),
        ("languages: [en, de]\nphrases: {w: {de: a}}", "phrases.w: needs the line in en, the default language"),
        (
            "languages: [en, de]\nphrases: {w: {en: a, it: b}}",
            "phrases.w.it: not an offered language (languages: en, de)",
        ),
        ("languages: [en, de]\nphrases: {w: {en: a, de: [b]}}", "phrases.w.de: text must be a string, not a list"),
        ("languages: [en, de]\nphrases: {w: {en: a, de: ''}}", "phrases.w.de: text is empty"),
        ("languages: [en, de]\nphrases: {w: [en, a]}", "phrases.w: text must be a string, not a list"),
        ("languages: [EN]", "languages[0].code: 'EN' is not a language code such as en, de or pt-br"),
        ("languages: [en, en]", "languages[1].code: en is offered twice"),
        ("languages: [{name: Deutsch}]", "languages[0].code: must be set"),
        (
            "translations: {w: {de: a}}",
            "translations: unknown key (give a line's translations as a map under phrases:)",
        ),
        ("buttons: [{pin: 3, action: language}]", "buttons[0].action: a language button needs two or more languages"),
        ("languages: [en]\nphrases: {w: x}\nbuttons: [{pin: 3, phrase: w, language: de}]", "buttons[0].language: de"),
    ],
)
def test_config_errors_for_languages_say_where_and_why(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


async def test_drafts_come_through_the_real_sdk(server):
    cfg = OpenAIConfig(base_url=f"{server.url}/v1", text_model="gpt-4o-mini")
    drafts = await draft_translations(cfg, Secret("sk-test-not-secret"), "Quartz is hard.", {"de": "Deutsch"})
    assert drafts == {"de": "[de] Quartz is hard."}
    asked = server.chat_requests[-1].body
    assert asked["model"] == "gpt-4o-mini" and asked["response_format"] == {"type": "json_object"}
    assert json.loads(asked["messages"][-1]["content"]) == {"text": "Quartz is hard.", "languages": {"de": "Deutsch"}}


@pytest.mark.parametrize(
    ("behaviour", "key", "words"),
    [
        (Behaviour(), None, "drafts need an OpenAI API key"),
        (Behaviour(api_key="other"), "sk-test-not-secret", "API key was refused (401)"),
        (Behaviour(status=500, fail_times=99), "sk-test-not-secret", "server answered 500"),
        (Behaviour(chat_reply="not json"), "sk-test-not-secret", "held no translations"),
        (Behaviour(chat_reply='{"it": "Ciao"}'), "sk-test-not-secret", "held no translations"),
    ],
)
async def test_drafts_fail_clearly(server, behaviour, key, words):
    server.behaviour = behaviour
    cfg = OpenAIConfig(base_url=f"{server.url}/v1", connect_timeout_s=1, request_timeout_s=5)
    with pytest.raises(SpeechError) as caught:
        await draft_translations(cfg, Secret(key) if key else None, "Quartz is hard.", {"de": "Deutsch"})
    assert words in str(caught.value) and "sk-test" not in str(caught.value)


async def test_drafts_with_nothing_listening_fail_clearly(unused_tcp_port):
    cfg = OpenAIConfig(base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", connect_timeout_s=1, request_timeout_s=5)
    with pytest.raises(SpeechError) as caught:
        await draft_translations(cfg, Secret("sk-test-not-secret"), "Quartz is hard.", {"de": "Deutsch"})
    assert "cannot connect" in str(caught.value)


def test_kiosk_say_and_cache_warm_take_languages(server_thread, tmp_path):
    """`kiosk cache warm` on a bilingual config reports coverage per language; `kiosk say --language`."""
    config = tmp_path / "kiosk.yaml"
    config.write_text(
        f"openai:\n  base_url: {server_thread.url}/v1\ncache:\n  dir: {tmp_path / 'cache'}\n"
        "speech:\n  fallback: none\nlanguages: [en, de, fr]\n" + LINES
    )
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-test-not-secret", "HOME": str(tmp_path)}

    def kiosk(*args):
        command = [sys.executable, "-m", "kiosk", *args, "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    warm = kiosk("cache", "warm")
    assert warm.returncode == 0, warm.stderr
    assert "per language: en 3/3, de 3/3 (1 untranslated), fr 3/3 (2 untranslated)" in warm.stdout
    wav = tmp_path / "de.wav"
    said = kiosk("say", "--phrase", "quartz", "--language", "de", "--trace", "--wav", str(wav))
    assert said.returncode == 0, said.stderr
    trace = json.loads(said.stdout)
    assert trace["language"] == "de" and trace["source"] == "cache" and wav.stat().st_size > 44
    refused = kiosk("say", "--phrase", "quartz", "--language", "it")
    assert refused.returncode != 0 and "--language it is not offered (offered: en, de, fr)" in refused.stderr


@pytest.fixture
def server_thread():
    from fake_openai import ThreadedFakeOpenAI

    with ThreadedFakeOpenAI() as fake:
        yield fake


def test_the_example_config_is_bilingual():
    from kiosk.config import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "config" / "kiosk.yaml")
    assert len(cfg.languages) >= 2 and cfg.translations
