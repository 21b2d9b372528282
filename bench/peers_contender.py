"""The real peers, each driven the way its own README does, as a benchmark contender (runs in bench/.peers-venv).

    bench/.peers-venv/bin/python bench/peers_contender.py openai-localaudioplayer --device pulse

Speaks the same protocol as bench/contender.py: one JSON job per line on stdin ({"base_url", "text", ...}), one
JSON answer per job. A peer plays through PortAudio, so nothing here sees the device's writes or underruns; the
answer carries the press time (wall clock) and the benchmark finds the audio where it is heard, in the sink's
monitor. CPU seconds and peak RSS are this process's own, from the press to the end of the line.

- openai-localaudioplayer: the openai SDK's `LocalAudioPlayer` (numpy + sounddevice), as in the SDK's examples:
  `async with client.audio.speech.with_streaming_response.create(...) as response: await LocalAudioPlayer()
  .play(response)`.
- realtimetts: RealtimeTTS's `TextToAudioStream(OpenAIEngine(...))`, `feed(text)` then `play()` (PyAudio).
  Its OpenAI engine asks for mp3 by default, which would need ffmpeg to decode; it also offers "pcm", which the
  loopback server speaks, so that is what is asked for. (It then opens its PyAudio stream at 22 050 Hz although
  OpenAI's PCM is 24 000 Hz: every line plays about 9 % slow and low. Measured as it is.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from usage import Usage  # bench/usage.py: this script's own directory is on sys.path

MODEL, VOICE = "gpt-4o-mini-tts", "coral"  # as bench/contender.py asks for


def _answer(usage: Usage, pressed_wall: float) -> dict:
    # Nothing device-side is known: the benchmark fills first audio, gaps and length in from the sink.
    return {
        **usage.result(),
        "pressed_wall": pressed_wall,
        "first_audio_ms": None,
        "first_byte_ms": None,
        "writes": [],
        "frames": None,
        "epipe": None,
        "source": None,
    }


# --- openai.helpers.LocalAudioPlayer ---


async def localaudioplayer(job: dict, device: str) -> dict:
    import openai
    import sounddevice as sd
    from openai.helpers import LocalAudioPlayer

    sd.default.device = device  # the null sink behind ALSA's `pulse` plugin; the player opens the default stream
    # The client is ready before the press, as kiosk's is.
    async with openai.AsyncOpenAI(base_url=job["base_url"], max_retries=0, timeout=120) as client:
        usage, pressed_wall = Usage(), time.time()
        async with client.audio.speech.with_streaming_response.create(
            model=MODEL, voice=VOICE, input=job["text"], response_format="pcm"
        ) as response:
            await LocalAudioPlayer().play(response)
        return _answer(usage, pressed_wall)


# --- RealtimeTTS ---


def realtimetts(job: dict, device: str) -> dict:
    from RealtimeTTS import OpenAIEngine, TextToAudioStream

    # The engine builds its OpenAI client when it is made, from the environment: made per job (before the press)
    # so that each job's network profile is the one spoken to.
    os.environ["OPENAI_BASE_URL"] = job["base_url"]
    engine = OpenAIEngine(model=MODEL, voice=VOICE, response_format="pcm")
    # Its default sentence splitter needs NLTK's punkt_tab, downloaded from GitHub on first use: impossible on an
    # offline speaker (and here). The built-in rule-based splitter is the option it offers for that.
    stream = TextToAudioStream(engine, output_device_index=_pyaudio_index(device), tokenizer="rule-based")
    try:
        usage, pressed_wall = Usage(), time.time()
        stream.feed(job["text"])
        stream.play()  # blocks until the line has been played
        return _answer(usage, pressed_wall)
    finally:
        engine.shutdown()


def _pyaudio_index(name: str) -> int:
    import pyaudio

    audio = pyaudio.PyAudio()
    try:
        names = [audio.get_device_info_by_index(i)["name"] for i in range(audio.get_device_count())]
    finally:
        audio.terminate()
    if name not in names:
        raise RuntimeError(f"PortAudio has no device {name!r}; it knows {', '.join(names) or 'none'}")
    return names.index(name)


PEERS = {
    "openai-localaudioplayer": lambda job, device: asyncio.run(localaudioplayer(job, device)),
    "realtimetts": realtimetts,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("approach", choices=list(PEERS))
    parser.add_argument("--device", default="pulse")
    args = parser.parse_args(argv)
    # Answers get stdout to themselves: the libraries print (RealtimeTTS, PortAudio's ALSA messages) to fd 1.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            answer = PEERS[args.approach](job, args.device)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENAI_API_KEY", "bench-key")
    sys.exit(main())
