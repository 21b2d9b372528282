"""Loudness of five lines from each engine as they reach the audio device, without and with matched loudness.

Each line is said twice through kiosk's announcer on ALSA's `file` plugin: the first time streamed from the
engine, the second time from the phrase cache. The loudness (ITU-R BS.1770, libebur128) and true peak are measured
from the bytes the device received. "Without" is `audio.loudness_lufs: null` (lines played as the engine made
them); "with" is the default target, -18 LUFS. The engines: the loopback test server (tests/fake_openai.py, a tone
per line peaking at 0.45 of full scale, through the real openai SDK) and the local Piper voice.
Writes bench/results/loudness.json.

    .venv/bin/python bench/loudness.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import Behaviour, ThreadedFakeOpenAI  # noqa: E402

from kiosk.alsa_output import AlsaOutput  # noqa: E402
from kiosk.build import open_announcer  # noqa: E402
from kiosk.config import parse_config  # noqa: E402
from kiosk.loudness import measure  # noqa: E402
from kiosk.pcm import AudioFormat  # noqa: E402

LINES = [
    "Welcome to the hall of minerals.",
    "This meteorite fell in Namibia about eighty thousand years ago, and it is older than the Earth itself.",
    "Please do not touch the glass.",
    "The skeleton in front of you belonged to a young mammoth, found in a gravel pit in nineteen sixty-four.",
    "Carved from a single block of white marble in 1821, this sleeping lion once guarded the gate of a banker's "
    "house in Lucerne.",
]
ENGINES = {"openai": 24000, "piper": 22050}
LOUD_TONE = 0.45  # the test server's tone peaks at 0.45 of full scale: about 7 LU louder than the target


async def one_engine(engine: str, target: float | None, server_url: str, scratch: Path) -> list[dict]:
    rate = ENGINES[engine]
    out = scratch / f"{engine}-{target}.raw"
    cfg = parse_config(
        f"audio:\n  loudness_lufs: {'null' if target is None else target}\n"
        f"speech:\n  engine: {engine}\n  fallback: none\nopenai:\n  base_url: {server_url}/v1\n"
        f"cache:\n  dir: {scratch / f'cache-{engine}-{target}'}\n"
    )

    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(f"file:FILE={out},FORMAT=raw", fmt, cfg.audio.period_ms, cfg.audio.buffer_periods)

    rows = []
    async with open_announcer(cfg, open_sink=open_sink) as announcer:
        for text in LINES:
            row = {"engine": engine, "target": target, "text": text}
            for hearing in ("streamed", "cached"):
                start = out.stat().st_size if out.exists() else 0
                trace = await asyncio.wait_for(announcer.say(text), 120)
                assert trace.error is None, trace.error
                level = measure(out.read_bytes()[start:], AudioFormat(rate, 1, 2))
                row[hearing] = {"lufs": level.lufs, "true_peak_db": level.true_peak_db, "source": trace.source}
            rows.append(row)
    return rows


async def run() -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kiosk-loudness-") as scratch, ThreadedFakeOpenAI() as server:
        server.behaviour = Behaviour(amplitude=LOUD_TONE)
        for target in (None, -18.0):
            for engine in ENGINES:
                rows += await one_engine(engine, target, server.url, Path(scratch))
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| engine | line | without: LUFS (dBTP) | with −18 LUFS, first hearing | with −18 LUFS, from the cache |",
        "|---|---|--:|--:|--:|",
    ]
    without = {(r["engine"], r["text"]): r for r in rows if r["target"] is None}
    for r in (r for r in rows if r["target"] is not None):
        before = without[(r["engine"], r["text"])]["cached"]
        short = r["text"] if len(r["text"]) <= 40 else r["text"][:37] + "..."
        lines.append(
            f"| {r['engine']} | {short} | {_level(before)} | {_level(r['streamed'])} | {_level(r['cached'])} |"
        )
    for target in (None, -18.0):
        for hearing in ("streamed", "cached"):
            values = [r[hearing]["lufs"] for r in rows if r["target"] == target]
            spread = max(values) - min(values)
            label = "without" if target is None else "with −18 LUFS"
            lines.append(
                f"\nSpread of all ten lines, {label}, {hearing}: {spread:.1f} LU "
                f"(median {statistics.median(values):.1f} LUFS)"
            )
    return "\n".join(lines)


def _level(measured: dict) -> str:
    return f"{measured['lufs']:.1f} ({measured['true_peak_db']:.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loudness.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    os.environ["OPENAI_API_KEY"] = "bench-key"
    rows = asyncio.run(run())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "wall_s": round(time.monotonic() - started)}, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
