"""One way of speaking a line, run as its own process so its CPU time and memory are its own.

    python bench/contender.py APPROACH --device pulse

Reads one JSON job per line on stdin ({"base_url", "text", "cache_dir", optionally "stop_after_s"}), presses
"the button" and answers one JSON line per job: the press time on the wall clock (so the benchmark can find the
line in the sink's monitor), when the first audio reached the device, every write the device accepted, the
underruns it reported, CPU seconds and peak RSS. Every approach writes through the same `AlsaOutput` with the
product's device settings, so only the buffering policy differs:

- product:     kiosk itself with its default settings (announcer, phrase cache, adaptive pre-roll, writer thread)
- download:    fetch the whole response, then play it (what most tutorials do; the real LocalAudioPlayer is measured
               too: bench/peers_contender.py)
- prebuffer:   stream, but hold 150 KB before starting (a common forum recipe)
- no-preroll:  stream, and write each chunk the moment it arrives
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
from usage import Usage  # bench/usage.py: this script's own directory is on sys.path

from kiosk.alsa_output import AlsaOutput
from kiosk.build import open_announcer
from kiosk.config import parse_config
from kiosk.pcm import OPENAI_PCM, FrameAligner

PREBUFFER_BYTES = 150 * 1024
PERIOD_MS, BUFFER_PERIODS = 40, 4  # the product's defaults, for every approach
MODEL, VOICE = "gpt-4o-mini-tts", "coral"


class RecordingSink:
    """An AlsaOutput that notes when each write began, how many frames it carried and the underruns it met."""

    def __init__(self, device: str):
        self._out = AlsaOutput(device, OPENAI_PCM, PERIOD_MS, BUFFER_PERIODS)
        self.fmt = self._out.fmt
        self.period_frames = self._out.period_frames
        self.buffer_frames = self._out.buffer_frames
        self.writes: list[tuple[float, int]] = []
        self.underruns = 0

    def write(self, frames: bytes) -> int:
        began = time.monotonic()
        underruns = self._out.write(frames)
        self.writes.append((began, len(frames) // self.fmt.frame_bytes))
        self.underruns += underruns
        return underruns

    def wait_played(self, stop) -> None:
        self._out.wait_played(stop)

    def drop(self) -> None:
        self._out.drop()

    def close(self) -> None:
        self._out.close()


# --- the product ---


async def product(job: dict, device: str) -> dict:
    cfg = parse_config(
        json.dumps(
            {
                "audio": {"device": device},
                "speech": {"engine": "openai", "fallback": "none"},
                "openai": {"base_url": job["base_url"]},
                "cache": {"dir": job["cache_dir"]},
            }
        )
    )
    sinks: list[RecordingSink] = []

    def open_sink(fmt):
        sinks.append(RecordingSink(device))
        return sinks[-1]

    async with open_announcer(cfg, open_sink=open_sink) as announcer:
        sink = sinks[-1]
        sink.writes.clear()  # opening the device writes nothing, but be sure the log starts at the press
        await _settle()
        usage, pressed, pressed_wall = Usage(reset_peak=False), time.monotonic(), time.time()
        saying = asyncio.ensure_future(announcer.say(job["text"]))
        if job.get("stop_after_s") is not None:
            await _stop_after(announcer, saying, job["stop_after_s"])
        trace = await saying
        result = usage.result()
    if trace.error:
        raise RuntimeError(trace.error)
    first_byte_at = None if trace.first_byte_ms is None else pressed + trace.first_byte_ms / 1000
    report = _device_report(sink, pressed, first_byte_at)
    return {**result, **report, "source": trace.source, "pressed_wall": pressed_wall}


async def _settle() -> None:
    """Make the press come to an idle speaker, as a visitor's does: the worker thread the service keeps for cache
    reads exists already (a fresh event loop per job would otherwise start one at the press), and resetting the
    peak-memory counter (kernel time) is done with, two 10 ms CPU-budget periods before the press."""
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0)
    Path("/proc/self/clear_refs").write_text("5")
    await asyncio.sleep(0.02)


async def _stop_after(announcer, saying: asyncio.Future, seconds: float) -> None:
    """Stop the line `seconds` after the press (a cached line's start is the figure). Nothing polls meanwhile: at a
    small CPU budget a poll every few milliseconds would eat the quota the press needs."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(saying), seconds)
    announcer.stop()


# --- the usual approaches ---


def chunks(client: openai.OpenAI, text: str, arrivals: list[float]):
    """The response body as it arrives; the time of each chunk is appended to `arrivals`."""
    speech = client.audio.speech.with_streaming_response.create(
        model=MODEL, voice=VOICE, input=text, response_format="pcm"
    )
    with speech as response:
        for chunk in response.iter_bytes():
            arrivals.append(time.monotonic())
            yield chunk


def download(client: openai.OpenAI, text: str, sink: RecordingSink, arrivals: list[float]) -> None:
    _write_all(sink, b"".join(chunks(client, text, arrivals)))  # what response.content does


def streamed(client: openai.OpenAI, text: str, sink: RecordingSink, arrivals: list[float], hold_bytes: int) -> None:
    aligner, pending, started = FrameAligner(OPENAI_PCM.frame_bytes), bytearray(), False
    for chunk in chunks(client, text, arrivals):
        pending += aligner.push(chunk)
        started = started or len(pending) >= hold_bytes
        if started:
            sink.write(bytes(pending))
            pending.clear()
    _write_all(sink, bytes(pending))


def _write_all(sink: RecordingSink, audio: bytes) -> None:
    step = sink.period_frames * OPENAI_PCM.frame_bytes
    for start in range(0, len(audio), step):
        sink.write(audio[start : start + step])


def baseline(play, job: dict, device: str) -> dict:
    """The device and the client are ready before the press, as they are in the product."""
    sink, arrivals = RecordingSink(device), []
    try:
        with openai.OpenAI(base_url=job["base_url"], max_retries=0, timeout=120) as client:
            usage, pressed, pressed_wall = Usage(), time.monotonic(), time.time()
            play(client, job["text"], sink, arrivals)
            sink.wait_played(threading.Event())  # never set: play to the end
            result = usage.result()
    finally:
        sink.close()
    report = _device_report(sink, pressed, arrivals[0] if arrivals else None)
    return {**result, **report, "pressed_wall": pressed_wall}


APPROACHES = {
    "download": download,
    "prebuffer": lambda *args: streamed(*args, hold_bytes=PREBUFFER_BYTES),
    "no-preroll": lambda *args: streamed(*args, hold_bytes=1),
}


def _device_report(sink: RecordingSink, pressed: float, first_byte_at: float | None) -> dict:
    writes = [(began - pressed, frames) for began, frames in sink.writes if frames]
    return {
        "first_byte_ms": None if first_byte_at is None else (first_byte_at - pressed) * 1000,
        "first_audio_ms": writes[0][0] * 1000 if writes else None,
        "writes": writes,
        "frames": sum(frames for _, frames in writes),
        "epipe": sink.underruns,
    }


def run_job(approach: str, job: dict, device: str) -> dict:
    if approach == "product":
        return asyncio.run(product(job, device))
    return baseline(APPROACHES[approach], job, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("approach", choices=["product", *APPROACHES])
    parser.add_argument("--device", default="pulse")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as scratch:
        for line in sys.stdin:
            job = json.loads(line)
            job.setdefault("cache_dir", tempfile.mkdtemp(dir=scratch))
            try:
                answer = run_job(args.approach, job, args.device)
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENAI_API_KEY", "bench-key")
    sys.exit(main())
