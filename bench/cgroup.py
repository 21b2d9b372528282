"""A CPU budget like a small Pi's: a child group of the cgroup v1 `cpu` controller with a CFS quota.

    with CpuBudget(12.5) as budget:     # 12.5 % of one core
        budget.add(pid)                 # the process and every thread it has or makes from now on

The period is 10 ms, so the quota acts like a slower CPU rather than like long stalls: a process confined to
12.5 % runs at most 1.25 ms in every 10 ms. `CpuBudget.unavailable()` says why budgets cannot be set here (no cpu
controller mounted, no permission); a caller must then skip and say so, never pretend.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

PERIOD_US = 10_000


def cpu_controller(mounts: str | None = None) -> Path | None:
    """Where the cgroup v1 `cpu` controller is mounted (from /proc/mounts), or None."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
            return Path(fields[1])
    return None


def quota_us(pct: float) -> int:
    """The CFS quota for `pct` percent of one core per 10 ms period (at least the kernel's 1 ms minimum)."""
    if not 0 < pct <= 100 * (os.cpu_count() or 1):
        raise ValueError(f"a CPU budget is a percentage of one core above 0, not {pct}")
    return max(1000, round(pct * PERIOD_US / 100))


class CpuBudget:
    """A child cpu cgroup limited to `pct` % of one core; removed again on close (its processes return to the
    group they were in)."""

    def __init__(self, pct: float, *, root: Path | None = None, name: str | None = None):
        self.pct = pct
        self._quota = quota_us(pct)
        self._root = root if root is not None else cpu_controller()
        if self._root is None:
            raise PermissionError("no cgroup v1 cpu controller is mounted (see /proc/mounts)")
        self.path = self._root / (name or f"kiosk-bench-{os.getpid()}-{str(pct).replace('.', '_')}")
        self._members: list[int] = []

    @classmethod
    def unavailable(cls, root: Path | None = None) -> str | None:
        """Why no budget can be set here, or None when it can (checked by making and removing a group)."""
        try:
            with cls(100, root=root, name=f"kiosk-bench-probe-{os.getpid()}"):
                pass
        except (OSError, ValueError) as exc:
            return f"CPU budgets unavailable: {exc}"
        return None

    def __enter__(self) -> CpuBudget:
        self.path.mkdir()
        try:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(self._quota))
        except OSError:
            self.path.rmdir()
            raise
        return self

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))
        self._members.append(pid)

    def throttled_s(self) -> float:
        """Seconds the group's processes were held back by the quota so far."""
        with contextlib.suppress(OSError, ValueError, StopIteration):
            stat = (self.path / "cpu.stat").read_text().split()
            return int(stat[stat.index("throttled_time") + 1]) / 1e9
        return 0.0

    def close(self) -> None:
        if not self.path.exists():
            return
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # a process may have ended meanwhile
                    (self._root / "cgroup.procs").write_text(pid)
        for _ in range(50):  # the kernel frees a group only once its last task has left
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        self.path.rmdir()

    def __exit__(self, *exc) -> None:
        self.close()
