"""Underruns reconstructed from when audio reached the device, to cross-check the device's own EPIPE count.

Once started, the device plays one second of audio per second. Each write adds its frames to the queue; if a write
begins after everything before it has played out, the device ran dry for the difference. Nothing here reads
the device, so this and the EPIPE count are independent witnesses of the same gaps.
"""

from __future__ import annotations


def gaps(writes: list[tuple[float, int]], rate: int, tolerance_s: float = 0.0) -> list[float]:
    """Seconds the device ran dry before each late write, given (time the write began, frames) in order."""
    dry: list[float] = []
    runs_dry_at: float | None = None
    for began, frames in writes:
        if runs_dry_at is None:
            runs_dry_at = began
        elif began > runs_dry_at + tolerance_s:
            dry.append(began - runs_dry_at)
            runs_dry_at = began
        runs_dry_at += frames / rate
    return dry
