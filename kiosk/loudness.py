"""Matched loudness: every line brought to one target integrated loudness (ITU-R BS.1770), peaks under a ceiling.

Measuring is done by `pyebur128` (libebur128, the reference implementation of EBU R 128 / BS.1770, with true peak by
oversampling), imported only here. A line is levelled once, when it is committed to the phrase cache: raised or
lowered to the target and, where that would take its peaks over -1 dBTP, passed through a look-ahead peak limiter
(speech often peaks 18-20 dB above its loudness, more than a -18 LUFS target leaves room for). The cache stores the
levelled audio, so a cached line plays with no processing at all.

A line heard for the first time is still streaming while it plays, so it cannot be measured first: it gets the gain
learned from its engine's recent lines (the median of their loudness as the engine made them), which keeps a
failover from one engine to another from jumping in level. Any 40 ms period that gain would clip is turned down
for that period instead (kiosk.player.scale); the cached copy is levelled properly.

numpy does the limiter's arithmetic. It is imported when the first line is levelled: a speaker whose lines are all
cached never loads it (about 15 MB).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import pyebur128

from kiosk.pcm import AudioFormat

#: True peak ceiling: no line is levelled past it (EBU R 128 asks for -1 dBTP).
CEILING_DBTP = -1.0
#: No line is raised by more than this: a near-silent line stays quiet rather than becoming loud noise.
MAX_BOOST_DB = 24.0
#: How many recent lines of an engine its learned gain comes from.
REMEMBERED_LINES = 10
#: The limiter reaches full reduction this long before a peak and lets go over as long after it.
LIMITER_WINDOW_S = 0.010
#: Levelling stops once the line is this close to its target.
TOLERANCE_LU = 0.1
#: A line this close to the target (and under the ceiling) is kept exactly as the engine made it, and a gain this
#: small is not applied: half a LU cannot be heard, and the audio is then stored and played bit for bit.
KEEP_LU = 0.5
_PASSES = 6


@dataclass(frozen=True)
class Loudness:
    lufs: float | None  # integrated loudness; None when the line is too short or too quiet to measure (< 0.4 s)
    true_peak_db: float  # dBTP; -inf for digital silence


@dataclass(frozen=True)
class Levelled:
    """What a cache entry's header records about its loudness."""

    loudness: Loudness  # of the audio as stored
    engine_lufs: float | None  # of the audio as the engine made it: what an engine's learned gain comes from
    target_lufs: float | None  # the target it was levelled to; None: stored as the engine made it

    def as_json(self) -> dict:
        return {
            "lufs": _rounded(self.loudness.lufs),
            "true_peak_db": _rounded(self.loudness.true_peak_db),
            "engine_lufs": _rounded(self.engine_lufs),
            "target_lufs": self.target_lufs,
        }

    @classmethod
    def from_json(cls, data: object) -> Levelled | None:
        """The record in a cache header, or None when it is missing or malformed."""
        if not isinstance(data, dict):
            return None
        values = [data.get(name) for name in ("lufs", "true_peak_db", "engine_lufs", "target_lufs")]
        if not all(value is None or _finite(value) for value in values):
            return None
        lufs, peak, engine_lufs, target = (None if v is None else float(v) for v in values)
        return cls(Loudness(lufs, -math.inf if peak is None else peak), engine_lufs, target)


def measure(pcm: bytes, fmt: AudioFormat) -> Loudness:
    """Integrated loudness and true peak of signed 16-bit PCM (a few milliseconds for a minute of speech)."""
    if fmt.sample_width != 2:
        raise ValueError(f"loudness is measured on 16-bit audio, not {8 * fmt.sample_width}-bit")
    frames = len(pcm) // fmt.frame_bytes
    mode = pyebur128.MeasurementMode.MODE_I | pyebur128.MeasurementMode.MODE_TRUE_PEAK
    state = pyebur128.R128State(fmt.channels, fmt.rate, mode)
    samples = memoryview(pcm)[: frames * fmt.frame_bytes].cast("h")
    step = fmt.rate // 4 * fmt.channels
    for start in range(0, len(samples), step):  # a quarter second at a time: the audio writer gets the GIL between
        block = samples[start : start + step]
        state.add_frames(block, len(block) // fmt.channels)
    lufs = pyebur128.get_loudness_global(state)
    peak = max(pyebur128.get_true_peak(state, channel) for channel in range(fmt.channels))
    return Loudness(
        lufs=lufs if math.isfinite(lufs) else None,
        true_peak_db=20 * math.log10(peak) if peak > 0 else -math.inf,
    )


def level(pcm: bytes, fmt: AudioFormat, target_lufs: float) -> tuple[bytes, Levelled]:
    """`pcm` brought to `target_lufs` (within TOLERANCE_LU where the boost limit allows) with its true peak at or
    under CEILING_DBTP. A line too short or too quiet to measure is kept as it is."""
    made = measure(pcm, fmt)
    if made.lufs is None:
        return pcm, Levelled(made, None, target_lufs)
    if abs(target_lufs - made.lufs) <= KEEP_LU and made.true_peak_db <= CEILING_DBTP:
        return pcm, Levelled(made, made.lufs, target_lufs)
    import numpy as np  # here, not at the top: see the module docstring

    source = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
    gain_db = min(target_lufs - made.lufs, MAX_BOOST_DB)
    ceiling_db = CEILING_DBTP - 0.3  # sample peaks under the ceiling, with room for the peaks between samples
    out, result = pcm, made
    for _ in range(_PASSES):
        out = _limited(source, gain_db, ceiling_db, round(LIMITER_WINDOW_S * fmt.rate), np)
        result = measure(out, fmt)
        if result.true_peak_db > CEILING_DBTP:
            ceiling_db -= result.true_peak_db - CEILING_DBTP + 0.05
            continue
        short = target_lufs - (result.lufs if result.lufs is not None else made.lufs + gain_db)
        if abs(short) <= TOLERANCE_LU or gain_db >= MAX_BOOST_DB:
            break
        gain_db = min(gain_db + short, MAX_BOOST_DB)  # the limiter took loudness with the peaks: make it up
    return out, Levelled(result, made.lufs, target_lufs)


def _limited(source, gain_db: float, ceiling_db: float, window: int, np) -> bytes:
    """`source` (float samples) times the gain, with every sample held under the ceiling by a smooth gain curve:
    the needed reduction is spread by a sliding minimum over ±window, then smoothed by a moving average over a
    window, so the curve is never above what any sample within it needs and never steps."""
    ceiling = 32767 * 10 ** (ceiling_db / 20)
    scaled = source * np.float32(10 ** (gain_db / 20))
    with np.errstate(divide="ignore"):
        needed = np.minimum(1.0, ceiling / np.abs(scaled)).astype(np.float32)
    envelope = _sliding_min(needed, window, np)
    curve = _moving_average(envelope, window, np)
    out = np.clip(np.rint(scaled * curve), -32768, 32767).astype("<i2")
    return out.tobytes()


def _sliding_min(values, reach: int, np):
    """The minimum of values[i - reach .. i + reach] at each i (by doubling: log2(reach) passes)."""
    out = values.copy()
    span = 1
    while span <= reach:
        step = min(span, reach + 1 - span)  # never reach further than asked
        shifted = np.concatenate([out[step:], np.ones(step, out.dtype)])
        back = np.concatenate([np.ones(step, out.dtype), out[:-step]])
        out = np.minimum(out, np.minimum(shifted, back))
        span += step
    return out


def _moving_average(values, width: int, np):
    """The mean of values[i - width//2 .. i + width//2] at each i, the ends padded with 1 (no reduction)."""
    half = width // 2
    padded = np.concatenate([np.ones(half, np.float64), values.astype(np.float64), np.ones(half, np.float64)])
    sums = np.concatenate([[0.0], np.cumsum(padded)])
    return ((sums[2 * half + 1 :] - sums[: -2 * half - 1]) / (2 * half + 1)).astype(np.float32)


class Leveller:
    """The target, and per engine the gain learned from its recent lines, for lines not levelled yet."""

    def __init__(self, target_lufs: float):
        self.target_lufs = target_lufs
        self._recent: dict[str, deque[float]] = {}

    def learned_db(self, engine: str) -> float:
        """The gain that would bring a typical recent line of `engine` to the target; 0 dB before its first line."""
        recent = self._recent.get(engine)
        if not recent:
            return 0.0
        return _audible(min(self.target_lufs - statistics.median(recent), MAX_BOOST_DB))

    def gain_db(self, levelled: Levelled | None, engine: str) -> float:
        """The gain a cached line still needs: none once levelled to this target; for one levelled to another
        target (or not at all) the difference, kept under the ceiling, until it is levelled again."""
        if levelled is None or levelled.loudness.lufs is None:
            return 0.0 if levelled is not None else self.learned_db(engine)
        if levelled.target_lufs == self.target_lufs:
            return 0.0
        wanted = self.target_lufs - levelled.loudness.lufs
        return _audible(min(wanted, CEILING_DBTP - levelled.loudness.true_peak_db, MAX_BOOST_DB))

    def learn(self, engine: str, levelled: Levelled | None) -> None:
        if levelled is not None and levelled.engine_lufs is not None:
            self._recent.setdefault(engine, deque(maxlen=REMEMBERED_LINES)).append(levelled.engine_lufs)

    def learn_all(self, lines: Iterable[tuple[str, Levelled | None]]) -> None:
        for engine, levelled in lines:
            self.learn(engine, levelled)


def _audible(gain_db: float) -> float:
    return 0.0 if abs(gain_db) <= KEEP_LU else gain_db


def linear(gain_db: float) -> float:
    return 10 ** (gain_db / 20)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 2)
