"""The benchmark: its underrun timeline on made-up writes, and one real round on the clocked null sink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from report import percentile  # noqa: E402
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
