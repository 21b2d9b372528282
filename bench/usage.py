"""CPU seconds and peak memory of a benchmark contender process, from the standard library alone: both
bench/contender.py (kiosk's venv) and bench/peers_contender.py (the peers' venv, without kiosk) use it."""

from __future__ import annotations

import resource
from pathlib import Path


class Usage:
    """CPU seconds and peak resident memory from one moment on (the kernel's high-water mark is reset)."""

    def __init__(self, reset_peak: bool = True) -> None:
        if reset_peak:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        self._cpu = _cpu_s()

    def result(self) -> dict:
        status = Path("/proc/self/status").read_text()
        peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return {"cpu_s": _cpu_s() - self._cpu, "peak_rss_mb": peak_kb / 1024}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
