"""The live captions in headless Chromium, on the clocked PulseAudio null sink: a streamed line and then the same line
from the cache, compared word by word with when each word is heard in the sink's monitor (the harness is
bench/captions.py, which measures the same over more lines); axe-core at phone and 1080p sizes; screenshots.

How close the captions are is a benchmark figure (bench/captions.py, bench/README.md); here they must follow the
audio at all: every sentence drawn, every word marked in order, none a whole second off.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from test_staff_ux import SMALL_TARGETS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import captions as harness  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402
from pulse_sink import SinkRecorder  # noqa: E402

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SHOTS = ROOT / "artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"
SIZES = {"phone": {"width": 390, "height": 844}, "1080p": {"width": 1920, "height": 1080}}


@pytest.fixture
async def captioned(server, tmp_path, pulse_device, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    server.behaviour.voice = "words"
    server.behaviour.realtime_factor = 3.0
    service = harness.started_service(harness.config(server.url, tmp_path / "cache"), pulse_device, MockFactory())
    await service.start()
    yield service
    await service.stop()


async def test_captions_follow_a_streamed_and_a_cached_line_as_heard(captioned, browser):
    page = await browser.new_page(viewport=SIZES["1080p"])
    await page.add_init_script(harness.OBSERVER)
    await page.goto(f"http://127.0.0.1:{captioned.parts.captions_port}/captions")
    await page.wait_for_selector('#caption[data-state="idle"]', timeout=10_000)
    with SinkRecorder() as recorder:
        streamed = await harness.say_and_follow(captioned, page, recorder, 2)
        cached = await harness.say_and_follow(captioned, page, recorder, 2)
    assert (streamed["source"], cached["source"]) == ("openai", "cache")
    for said in (streamed, cached):
        assert "error" not in said, said
        assert said["words_marked"] == said["words"] and said["sentences_drawn"] == said["sentences"] == 2
        assert all(abs(e) < 1000 for e in said["word_errors_ms"] + said["sentence_errors_ms"]), said
    print(f"\nstreamed: {streamed}\ncached: {cached}")
    await page.close()


@pytest.mark.parametrize("size", SIZES)
async def test_captions_page_passes_axe_idle_and_speaking(captioned, browser, size):
    page = await browser.new_page(viewport=SIZES[size])
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"http://127.0.0.1:{captioned.parts.captions_port}/captions")
    await page.wait_for_selector('#caption[data-state="idle"]', timeout=10_000)
    await page.evaluate(AXE.read_text())  # from the test: the page's Content-Security-Policy stays as it is
    for state in ("idle", "speaking"):
        if state == "speaking":
            captioned.app.play(phrase=None, text=harness.LINES[0], origin="api")
            await page.wait_for_selector("#caption .now", timeout=10_000)
        result = await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
        assert [v["id"] for v in result["violations"]] == [], result["violations"]
        assert await page.evaluate(SMALL_TARGETS) == []
        await shot(page, f"captions-{state}-{size}")
    await page.click("#contrast")
    await page.click("#larger")
    result = await page.evaluate("axe.run(document, { resultTypes: ['violations'] })")
    assert [v["id"] for v in result["violations"]] == [], result["violations"]  # the light scheme too
    assert await page.evaluate("document.documentElement.classList.contains('light')")
    assert errors == []
    await page.close()


async def test_a_calm_notice_when_the_speaker_is_gone(captioned, browser):
    page = await browser.new_page(viewport=SIZES["phone"])
    await page.goto(f"http://127.0.0.1:{captioned.parts.captions_port}/captions")
    await page.wait_for_selector('#caption[data-state="idle"]', timeout=10_000)
    assert await page.is_hidden("#notice")
    await captioned.stop()
    await page.wait_for_selector("#notice:not([hidden])", timeout=10_000)
    assert "come back by themselves" in await page.text_content("#notice")
    await page.close()


async def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"))
    if os.environ.get("KIOSK_REFRESH_SCREENSHOTS") == "1" and name in (
        "captions-speaking-phone",
        "captions-idle-1080p",
    ):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / f"{name}.png", DOCS / f"{name}.png")
