"""Software gain for 16-bit PCM, fast without numpy: what the player (kiosk.player) applies to every period."""

from __future__ import annotations

import functools

from kiosk.errors import AudioError

# Gain without a Python loop over the samples (numpy is not a dependency of the core, and audioop is deprecated and
# gone in Python 3.13). Each 16-bit sample s is widened, with C-speed byte slicing, into a 64-bit lane holding
# s + 2^15; the lanes are read as one big integer, multiplied by the gain in 1/65536 steps, and an offset is added to
# every lane at once, so that each lane holds s*k + 2^47 + 2^15: always positive and below 2^64 for gains up to
# MAX_GAIN (no carry into the next lane). Bits 16-31 of each lane are then round(s*k / 2^16) as a two's complement
# 16-bit sample. A gain above 1 is kept from taking any sample over -1 dBFS: a period whose loudest sample would go
# over is given just the gain that reaches it instead (turned down for those 40 ms rather than clipped; only a
# streamed line's learned loudness gain does that, kiosk.loudness). About 10x faster than a loop over the samples.
_FLIP_SIGN = bytes(b ^ 0x80 for b in range(256))
_GAIN_STEPS = 1 << 16
#: The highest gain `scale` applies (+24 dB: the most a line is raised to match loudness).
MAX_GAIN = 16.0
#: No sample is raised above this (-1 dBFS).
_BOOST_CEILING = round(32767 * 10 ** (-1 / 20))


def scale(pcm: bytes, gain: float, sample_width: int) -> bytes:
    """Signed 16-bit little-endian samples multiplied by `gain` (0 to MAX_GAIN), rounded; raised no further than
    -1 dBFS, never clipped."""
    if sample_width != 2:
        raise AudioError(f"software gain supports 16-bit audio, not {8 * sample_width}-bit")
    n = len(pcm) // 2
    k = round(min(MAX_GAIN, max(0.0, gain)) * _GAIN_STEPS)
    if k > _GAIN_STEPS and n:
        k = min(k, _loudest_fitting_k(pcm[: 2 * n]))
    lanes = bytearray(8 * n)
    lanes[0::8] = pcm[0 : 2 * n : 2]
    lanes[1::8] = pcm[1 : 2 * n : 2].translate(_FLIP_SIGN)
    total = int.from_bytes(lanes, "little") * k + _lane_offset(n, k)
    wide = total.to_bytes(8 * n, "little")
    out = bytearray(2 * n)
    out[0::2] = wide[2::8]
    out[1::2] = wide[3::8]
    return bytes(out)


def _loudest_fitting_k(pcm: bytes) -> int:
    """The largest gain step at which no sample of `pcm` goes over -1 dBFS after rounding."""
    samples = memoryview(pcm).cast("h")  # s16le: the byte order of every machine this runs on
    peak = max(max(samples), -min(samples))
    return max(_GAIN_STEPS, (_BOOST_CEILING * _GAIN_STEPS - (1 << 15)) // peak) if peak else 1 << 62


@functools.lru_cache(maxsize=16)
def _lane_offset(n: int, k: int) -> int:
    """2^47 + 2^15 - k * 2^15 in each of `n` 64-bit lanes (periods have one size, so this is computed once)."""
    lane = (1 << 47) + (1 << 15) - (k << 15)
    return int.from_bytes(lane.to_bytes(8, "little") * n, "little")
