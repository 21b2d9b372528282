"""Press-to-sound and underruns, for kiosk and the usual ways of playing streamed speech, over seeded networks.

    .venv/bin/python bench/run.py            # quick: the short line, 2 trials (under 2 minutes)
    .venv/bin/python bench/run.py --full     # both lines, more trials (about half an hour: the long line is 49 s)
    .venv/bin/python bench/run.py --cpu-budget 100 25 12.5 --approaches product   # confined like a small Pi

Starts its own PulseAudio null sink (a device that keeps time, so underruns are real) and the loopback
OpenAI-compatible test server, runs each approach in its own process, and writes results.json, results.md and
results.png to --out. In each round every approach speaks the same line over the same seeded network at the same
time, each through its own stream on the same device.

With --cpu-budget PCT... each contender process runs in a cgroup v1 cpu group limited to PCT % of one core
(bench/cgroup.py), one budget after another; where cgroups are unavailable the budgeted runs are skipped and the
report says so. A cached line is stopped --cached-stop-s seconds after the press (its start is the figure;
playing 48 s of it per trial would buy nothing), so it can have many more trials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The test suite's loopback server and clocked sink, reused rather than copied.
sys.path.insert(0, str(ROOT / "tests"))

from cgroup import CpuBudget  # noqa: E402
from fake_openai import SAMPLE_RATE, ThreadedFakeOpenAI  # noqa: E402
from profiles import CACHED, CACHED_FROM, LINES, PROFILES, audio_s  # noqa: E402
from pulse_sink import NullSink  # noqa: E402
from report import write_report  # noqa: E402
from timeline import gaps  # noqa: E402

APPROACHES = ("product", "download", "prebuffer", "no-preroll")
MODES = {
    "quick": {"lines": ["short"], "trials": {"brief": 2, "short": 2, "long": 1}, "cached_trials": 10},
    "full": {"lines": ["short", "long"], "trials": {"brief": 10, "short": 10, "long": 3}, "cached_trials": 40},
}
ANSWER_SLACK_S = 60.0  # beyond the line's own length, before a contender counts as hung


class Contender:
    """One approach in its own process, answering one JSON line per job."""

    def __init__(self, name: str, device: str, budget: CpuBudget | None = None):
        self.name = name
        env = dict(os.environ, OPENAI_API_KEY="bench-key")
        self._proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "contender.py"), name, "--device", device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        if budget is not None:
            # Before its first job: every thread it makes from here on is in the group too.
            budget.add(self._proc.pid)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._proc.stdout, selectors.EVENT_READ)

    def ask(self, job: dict) -> None:
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()

    def answer(self, timeout_s: float) -> dict:
        if not self._selector.select(timeout_s):
            raise TimeoutError(f"{self.name} gave no answer within {timeout_s:.0f} s")
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited with {self._proc.wait(5)}")
        return json.loads(line)

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)


def profile_url(server: ThreadedFakeOpenAI, profile: str, seed: int) -> str:
    return f"{server.url}/profiles/{profile}/{seed}/v1"


def run_round(contenders: list[Contender], job: dict, one_at_a_time: bool) -> list[dict]:
    """Every contender speaks the job's line; all at once unless `one_at_a_time`."""
    timeout_s = audio_s(job["text"]) * 2 + ANSWER_SLACK_S
    if one_at_a_time:
        answers = []
        for contender in contenders:
            contender.ask(job)
            answers.append(contender.answer(timeout_s))
        return answers
    for contender in contenders:
        contender.ask(job)
    return [contender.answer(timeout_s) for contender in contenders]


def trial_record(approach: str, line: str, profile: str, trial: int, answer: dict, budget: float | None = None) -> dict:
    record = {"approach": approach, "line": line, "profile": profile, "trial": trial, "budget": budget}
    if "error" in answer:
        return {**record, "error": answer["error"]}
    dry = gaps([tuple(w) for w in answer["writes"]], SAMPLE_RATE)
    return {
        **record,
        "first_audio_ms": answer["first_audio_ms"],
        "first_byte_ms": answer["first_byte_ms"],
        "epipe": answer["epipe"],
        "timeline_underruns": len(dry),
        "gap_ms": sum(dry) * 1000,
        "audio_s": answer["frames"] / SAMPLE_RATE,
        "cpu_s": answer["cpu_s"],
        "peak_rss_mb": answer["peak_rss_mb"],
        "source": answer.get("source"),
    }


def run(args: argparse.Namespace, meta: dict | None = None) -> list[dict]:
    """Every budget in turn (None: unconfined); budgets that cannot be set here are skipped and noted in meta."""
    meta = {} if meta is None else meta
    budgets: list[float | None] = args.cpu_budget or [None]
    unavailable = CpuBudget.unavailable() if args.cpu_budget else None
    if unavailable:
        meta["cpu_budget_unavailable"] = unavailable
        print(f"bench: {unavailable}; skipping the budgeted runs", file=sys.stderr, flush=True)
        budgets = [None]
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as scratch:
        scratch = Path(scratch)
        (scratch / "pulse").mkdir()
        with NullSink(scratch / "pulse") as device, ThreadedFakeOpenAI(profiles=PROFILES) as server:
            for budget in budgets:
                with CpuBudget(budget) if budget is not None else contextlib.nullcontext() as group:
                    records += run_budget(args, server, device, scratch / f"budget-{budget}", group)
    return records


def run_budget(args, server, device: str, scratch: Path, group: CpuBudget | None) -> list[dict]:
    mode = MODES[args.mode]
    lines = args.lines or mode["lines"]
    profiles = args.profiles or [*PROFILES, CACHED]
    scratch.mkdir()
    records: list[dict] = []
    contenders = [Contender(name, device, group) for name in args.approaches]
    try:
        warm_up = {"base_url": profile_url(server, "typical", 0), "text": LINES["short"]}
        run_round(contenders, warm_up, args.one_at_a_time)
        for line in lines:
            for profile in profiles:
                if profile == CACHED:
                    trials = args.cached_trials or args.trials or mode["cached_trials"]
                else:
                    trials = args.trials or mode["trials"][line]
                records += run_profile(contenders, server, scratch, line, profile, trials, args, group)
    finally:
        for contender in contenders:
            contender.close()
    return records


def run_profile(contenders, server, scratch: Path, line, profile, trials, args, group=None) -> list[dict]:
    records = []
    budget = group.pct if group is not None else None
    network, job = profile, {"text": LINES[line]}
    if profile == CACHED:
        contenders = [c for c in contenders if c.name == "product"]  # the others have no cache
        if not contenders:
            return []
        network, job["cache_dir"] = CACHED_FROM, str(scratch / f"cache-{line}")
        run_round(contenders, {**job, "base_url": profile_url(server, network, 0)}, args.one_at_a_time)  # now cached
        job["stop_after_s"] = args.cached_stop_s
    for trial in range(trials):
        job["base_url"] = profile_url(server, network, args.seed + trial)
        started, cpu_before = time.monotonic(), host_cpu()
        answers = run_round(contenders, job, args.one_at_a_time)
        steal = steal_pct(cpu_before, host_cpu())
        for contender, answer in zip(contenders, answers, strict=True):
            record = trial_record(contender.name, line, profile, trial, answer, budget)
            records.append({**record, "steal_pct": steal})
        progress = ", ".join(_brief(r) for r in records[-len(contenders) :])
        at = f"{budget:g} % CPU " if budget is not None else ""
        print(
            f"{at}{line:5} {profile:8} trial {trial + 1}/{trials} ({time.monotonic() - started:.1f} s): {progress}",
            flush=True,
        )
    return records


def host_cpu() -> list[int]:
    """The machine's CPU time counters (user nice system idle iowait irq softirq steal), in jiffies."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def steal_pct(before: list[int], after: list[int]) -> float:
    """Share of CPU time the hypervisor gave to others: on a virtual machine, the cause of most timing outliers."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return round(100 * spent[7] / max(1, sum(spent)), 1)


def _brief(record: dict) -> str:
    if "error" in record:
        return f"{record['approach']} ERROR {record['error']}"
    return f"{record['approach']} {record['first_audio_ms']:.0f} ms/{record['epipe']} xrun"


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", dest="mode", action="store_const", const="full", default="quick")
    parser.add_argument("--trials", type=int, help="trials per cell (default: by mode)")
    parser.add_argument("--lines", nargs="+", choices=list(LINES))
    parser.add_argument("--profiles", nargs="+", choices=[*PROFILES, CACHED])
    parser.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES))
    parser.add_argument("--seed", type=int, default=1, help="seed of the first trial; trial n uses seed+n")
    parser.add_argument("--one-at-a-time", action="store_true", help="approaches in turn, not side by side")
    parser.add_argument(
        "--cpu-budget",
        nargs="+",
        type=_budget,
        metavar="PCT",
        help="confine each contender to PCT %% of one core (cgroup v1 cpu quota), one run per budget",
    )
    parser.add_argument("--cached-trials", type=int, help="trials per cached cell (default: by mode)")
    parser.add_argument(
        "--cached-stop-s", type=float, default=2.0, help="stop a cached line this long after the press (default 2)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


def _budget(value: str) -> float:
    pct = float(value)
    if not 0 < pct <= 100:
        raise argparse.ArgumentTypeError(f"a CPU budget is a percentage of one core, above 0 and at most 100: {value}")
    return pct


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = NullSink.missing()
    if missing:
        print(f"bench: {missing}", file=sys.stderr)
        return 2
    started = time.monotonic()
    meta: dict = {}
    records = run(args, meta)
    command = "bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta.update(command=command.strip(), machine=machine(), wall_s=round(time.monotonic() - started))
    rounds = {(r["budget"], r["line"], r["profile"], r["trial"]): r["steal_pct"] for r in records}
    meta["steal_pct"] = list(rounds.values())
    write_report(args.out, records, meta)
    print((args.out / "results.md").read_text())
    errors = [r for r in records if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
