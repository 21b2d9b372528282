"""What the listener heard of one line: found in the null sink's monitor, so no approach reports on itself.

The loopback server speaks a steady tone (tests/fake_openai.py), so between its first and last sample the line has
no silence of its own: any silence longer than QUIET_S heard there is the device running dry. The same analysis
runs on the server's own PCM for the line, so the tone's fade-in and fade-out cancel out of every figure.
Only one approach may be playing while its window is read (the benchmark runs them one at a time for this).
"""

from __future__ import annotations

import itertools

import numpy as np

THRESHOLD = 500  # the tone peaks near 6 200; PortAudio's float path and resampling never bring a sample that low
QUIET_S = 0.02  # a 220 Hz tone is below the threshold for well under 1 ms around each zero crossing


def sound_runs(samples: np.ndarray, rate: int) -> list[tuple[int, int]]:
    """(start, end) sample indices of sound, silences shorter than QUIET_S bridged."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) >= THRESHOLD)
    if loud.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(loud) > QUIET_S * rate)
    starts = np.concatenate(([loud[0]], loud[breaks + 1]))
    ends = np.concatenate((loud[breaks], [loud[-1]])) + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def summary(samples: np.ndarray, rate: int) -> dict | None:
    """Where sound starts, how much of it there is, and the silences inside it (seconds), or None if silent."""
    runs = sound_runs(samples, rate)
    if not runs:
        return None
    gaps = [(b[0] - a[1]) / rate for a, b in itertools.pairwise(runs)]
    return {
        "start": runs[0][0],
        "audio_s": sum(end - start for start, end in runs) / rate,
        "gaps_s": gaps,
    }


def heard(recorder, pressed_wall: float, source_pcm: bytes) -> dict:
    """Sink-side figures for a line pressed at `pressed_wall` (wall clock): everything recorded since then."""
    rate = recorder.rate
    first = _sample_at(recorder, pressed_wall)
    end = len(recorder.pcm) // 2
    # A copy of the window: the recorder's thread keeps appending to its buffer.
    window = np.frombuffer(bytes(recorder.pcm[first * 2 : end * 2]), dtype="<i2")
    source = summary(np.frombuffer(source_pcm, dtype="<i2"), rate)
    found = summary(window, rate)
    if found is None or source is None:
        return {"sink_first_audio_ms": None, "sink_audio_s": 0.0, "sink_underruns": None, "sink_gap_ms": None}
    # Measured the same way as what was heard, so the tone's fades cancel out of the comparison.
    lead_s = source["start"] / rate  # the tone's own fade-in, before it crosses the threshold
    played = recorder.played_at(first + found["start"]) - lead_s
    return {
        "sink_first_audio_ms": (played - pressed_wall) * 1000,
        "sink_audio_s": found["audio_s"],
        "line_s": source["audio_s"],
        "sink_underruns": len(found["gaps_s"]),
        "sink_gap_ms": sum(found["gaps_s"]) * 1000,
    }


def _sample_at(recorder, wall: float) -> int:
    """Index of the first sample played at or after `wall` (a little before, never after: see played_at)."""
    reads = recorder._reads  # (wall time of a read, samples received by then)
    after = next(((at, total) for at, total in reads if at >= wall), None)
    if after is None:
        return len(recorder.pcm) // 2
    at, total = after
    return max(0, total - round((at - wall) * recorder.rate) - 1)
