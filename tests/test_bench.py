"""The benchmark: its underrun timeline on made-up writes, and one real round on the clocked null sink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from cgroup import CpuBudget, cpu_controller, quota_us  # noqa: E402
from report import cells, markdown, percentile  # noqa: E402
from timeline import gaps  # noqa: E402

RATE = 1000  # frames per second: 1 frame = 1 ms, to keep the arithmetic readable


def test_writes_that_keep_ahead_leave_no_gap():
    # 100 ms of audio every 80 ms: always ahead
    assert gaps([(0.08 * i, 100) for i in range(20)], RATE) == []


def test_a_late_write_is_a_gap_as_long_as_it_was_late():
    writes = [(0.0, 100), (0.05, 100), (0.5, 100), (0.55, 100)]
    assert gaps(writes, RATE) == pytest.approx([0.3])  # 200 ms queued, ran dry at 0.2, next write at 0.5


def test_the_clock_restarts_after_a_gap():
    writes = [(0.0, 100), (0.3, 100), (0.45, 100)]
    assert gaps(writes, RATE) == pytest.approx([0.2, 0.05])


def test_percentile_is_nearest_rank():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == 5.0
    assert percentile([7.0], 95) == 7.0


def test_bench_round_on_a_bursty_network(pulse_device, tmp_path):
    """One trial of kiosk and of no-pre-roll through the real pipeline: a line with a 400 ms hole after the first
    chunk. The device's EPIPE count and the write timeline must agree, and only no-pre-roll may run dry."""
    out = tmp_path / "results"
    args = ["--profiles", "bursty", "--approaches", "product", "no-preroll", "--trials", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *args], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    cells = {cell["approach"]: cell for cell in results["cells"]}
    assert cells["product"]["underruns"] == 0 and cells["product"]["gap_ms"] == 0
    assert cells["no-preroll"]["underruns"] >= 1
    assert cells["no-preroll"]["timeline_underruns"] == cells["no-preroll"]["underruns"]
    assert cells["no-preroll"]["gap_ms"] > 200  # about 400 ms hole minus the 85 ms that played
    assert cells["product"]["first_p50_ms"] > cells["no-preroll"]["first_p50_ms"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| short | bursty | kiosk (adaptive pre-roll) | 1 |" in (out / "results.md").read_text()


# The CPU budget: a cgroup v1 cpu group with a CFS quota.


MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_the_cpu_controller_is_found_in_proc_mounts():
    assert cpu_controller(MOUNTS) == Path("/sys/fs/cgroup/cpu")
    assert cpu_controller("cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n") == Path(
        "/sys/fs/cgroup/cpu,cpuacct"
    )
    assert cpu_controller("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n") is None  # v2 only: no v1 cpu controller


def test_quota_is_the_share_of_a_10_ms_period():
    assert quota_us(100) == 10_000 and quota_us(25) == 2_500 and quota_us(12.5) == 1_250
    assert quota_us(5) == 1_000  # the kernel's minimum quota is 1 ms
    with pytest.raises(ValueError):
        quota_us(0)


def test_a_budget_confines_a_process_and_is_removed_after():
    reason = CpuBudget.unavailable()
    if reason:
        pytest.skip(reason)
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"]
    )
    try:
        with CpuBudget(12.5) as budget:
            assert (budget.path / "cpu.cfs_period_us").read_text().strip() == "10000"
            assert (budget.path / "cpu.cfs_quota_us").read_text().strip() == "1250"
            budget.add(busy.pid)
            assert budget.path.name in Path(f"/proc/{busy.pid}/cgroup").read_text()
            before = _cpu_s(busy.pid)
            time.sleep(1.0)
            used = _cpu_s(busy.pid) - before
            assert used < 0.3, f"a busy loop at 12.5 % used {used:.2f} s of CPU in 1 s"
            assert budget.throttled_s() > 0
        assert not budget.path.exists()
        assert budget.path.name not in Path(f"/proc/{busy.pid}/cgroup").read_text()
    finally:
        busy.kill()
        busy.wait(timeout=5)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_without_cgroups_a_budget_is_refused_and_the_report_says_so(tmp_path):
    assert CpuBudget.unavailable(root=tmp_path / "no-such-controller")
    meta = {
        "command": "bench/run.py --cpu-budget 12.5",
        "wall_s": 1,
        "machine": {"cpu": "x", "cpus": 1, "kernel": "k", "python": "3", "date": "d"},
        "cpu_budget_unavailable": "CPU budgets unavailable: permission denied",
    }
    text = markdown([], meta)
    assert "No CPU budget was applied" in text and "permission denied" in text


def test_budgeted_cells_are_reported_per_budget():
    records = [
        {
            "approach": "product",
            "line": "brief",
            "profile": "cached",
            "trial": t,
            "budget": b,
            "first_audio_ms": ms,
            "first_byte_ms": None,
            "epipe": 0,
            "timeline_underruns": 0,
            "gap_ms": 0,
            "audio_s": 1.9,
            "cpu_s": 0.01,
            "peak_rss_mb": 60,
        }
        for b, ms in ((None, 1.5), (12.5, 4.0))
        for t in range(3)
    ]
    meta = {"command": "c", "wall_s": 1, "machine": {"cpu": "x", "cpus": 1, "kernel": "k", "python": "3", "date": "d"}}
    text = markdown(cells(records), meta)
    assert "| none | brief | cached | kiosk (adaptive pre-roll) | 3 | 1.5 | 1.5 |" in text
    assert "| 12.5 % | brief | cached | kiosk (adaptive pre-roll) | 3 | 4.0 | 4.0 |" in text
