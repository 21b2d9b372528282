"""Press-to-sound and underruns, for kiosk and the usual ways of playing streamed speech, over seeded networks.

    .venv/bin/python bench/run.py            # quick: the short line, 2 trials (about 7 minutes with the real peers)
    .venv/bin/python bench/run.py --full     # both lines, more trials (hours: six approaches in turn, a 49 s line)
    .venv/bin/python bench/run.py --cpu-budget 100 25 12.5 --approaches product   # confined like a small Pi
    bench/peers.sh && .venv/bin/python bench/run.py --approaches product openai-localaudioplayer realtimetts
    .venv/bin/python bench/run.py --side-by-side    # all at once, device-side figures only (the real peers left out)

Starts its own PulseAudio null sink (a device that keeps time, so underruns are real) and the loopback
OpenAI-compatible test server, runs each approach in its own process, and writes results.json, results.md and
results.png to --out. In each round every approach speaks the same line over the same seeded network, one after
another, while the sink's monitor is recorded: each approach's first audio, underruns and length are then taken
where they are heard (bench/heard.py), not from what the approach says of itself. With --side-by-side they speak at
the same time, each through its own stream, and only the device-side figures are available.

The real peers (openai-localaudioplayer, realtimetts) run from bench/.peers-venv (made by bench/peers.sh) through
PortAudio to the same sink; they have no phrase cache, which the cached rows say.

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
from fake_openai import SAMPLE_RATE, ThreadedFakeOpenAI, pcm_for  # noqa: E402
from heard import heard  # noqa: E402
from profiles import CACHED, CACHED_FROM, LINES, PROFILES, audio_s  # noqa: E402
from pulse_sink import NullSink, SinkRecorder  # noqa: E402
from report import write_report  # noqa: E402
from timeline import gaps  # noqa: E402

PEERS = ("openai-localaudioplayer", "realtimetts")
APPROACHES = ("product", "download", "prebuffer", "no-preroll", *PEERS)
PEERS_PYTHON = ROOT / "bench" / ".peers-venv" / "bin" / "python"
TAIL_S = 0.3  # after an answer, for the line's last samples to reach the monitor
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
            [*contender_command(name), name, "--device", device],
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


def contender_command(name: str) -> list[str]:
    """The real peers run in their own venv, so their pins never meet the product's."""
    if name not in PEERS:
        return [sys.executable, str(ROOT / "bench" / "contender.py")]
    if not PEERS_PYTHON.exists():
        raise SystemExit(f"bench: {name} needs {PEERS_PYTHON.parent.parent}: run bench/peers.sh first")
    return [str(PEERS_PYTHON), str(ROOT / "bench" / "peers_contender.py")]


def profile_url(server: ThreadedFakeOpenAI, profile: str, seed: int) -> str:
    return f"{server.url}/profiles/{profile}/{seed}/v1"


def run_round(contenders: list[Contender], job: dict, one_at_a_time: bool, recorder=None) -> list[dict]:
    """Every contender speaks the job's line; all at once unless `one_at_a_time`. With a recorder (one at a time),
    each answer gains what the sink's monitor heard of that contender's line."""
    timeout_s = audio_s(job["text"]) * 2 + ANSWER_SLACK_S
    if one_at_a_time:
        answers = []
        for contender in contenders:
            contender.ask(job)
            answer = contender.answer(timeout_s)
            if recorder is not None and "pressed_wall" in answer:
                time.sleep(TAIL_S)
                answer.update(heard(recorder, answer["pressed_wall"], pcm_for(job["text"])))
            answers.append(answer)
        return answers
    for contender in contenders:
        contender.ask(job)
    return [contender.answer(timeout_s) for contender in contenders]


def trial_record(approach: str, line: str, profile: str, trial: int, answer: dict, budget: float | None = None) -> dict:
    record = {"approach": approach, "line": line, "profile": profile, "trial": trial, "budget": budget}
    if "error" in answer:
        return {**record, "error": answer["error"]}
    sink_first = answer.get("sink_first_audio_ms")
    if "sink_first_audio_ms" in answer and sink_first is None:
        return {**record, "error": "nothing was heard at the sink"}
    device_side = answer["epipe"] is not None  # the real peers play through PortAudio: no writes to see
    dry = gaps([tuple(w) for w in answer["writes"]], SAMPLE_RATE) if device_side else []
    return {
        **record,
        # Where it was heard when the sink was recorded; otherwise what the approach's writes say.
        "first_audio_ms": answer["first_audio_ms"] if sink_first is None else sink_first,
        "device_first_audio_ms": answer["first_audio_ms"],
        "first_byte_ms": answer["first_byte_ms"],
        "epipe": answer["epipe"],
        "timeline_underruns": len(dry) if device_side else None,
        "gap_ms": sum(dry) * 1000 if device_side else None,
        "audio_s": answer["frames"] / SAMPLE_RATE if device_side else answer.get("sink_audio_s"),
        "sink_underruns": answer.get("sink_underruns"),
        "sink_gap_ms": answer.get("sink_gap_ms"),
        "sink_audio_s": answer.get("sink_audio_s"),
        "line_s": answer.get("line_s"),
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
            # The monitor is only a fair witness when one approach plays at a time.
            listening = SinkRecorder() if args.one_at_a_time else contextlib.nullcontext()
            with listening as recorder:
                for budget in budgets:
                    with CpuBudget(budget) if budget is not None else contextlib.nullcontext() as group:
                        records += run_budget(args, server, device, scratch / f"budget-{budget}", group, recorder)
    return records


def run_budget(args, server, device: str, scratch: Path, group: CpuBudget | None, recorder=None) -> list[dict]:
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
                records += run_profile(contenders, server, scratch, line, profile, trials, args, group, recorder)
    finally:
        for contender in contenders:
            contender.close()
    return records


def run_profile(contenders, server, scratch: Path, line, profile, trials, args, group=None, recorder=None) -> list:
    records = []
    budget = group.pct if group is not None else None
    network, job = profile, {"text": LINES[line]}
    if profile == CACHED:
        records += [
            {"approach": c.name, "line": line, "profile": profile, "trial": 0, "budget": budget, "absent": "no cache"}
            for c in contenders
            if c.name != "product"
        ]
        contenders = [c for c in contenders if c.name == "product"]  # the others have no cache
        if not contenders:
            return records
        network, job["cache_dir"] = CACHED_FROM, str(scratch / f"cache-{line}")
        run_round(contenders, {**job, "base_url": profile_url(server, network, 0)}, args.one_at_a_time)  # now cached
        job["stop_after_s"] = args.cached_stop_s
    for trial in range(trials):
        job["base_url"] = profile_url(server, network, args.seed + trial)
        started, cpu_before = time.monotonic(), host_cpu()
        answers = run_round(contenders, job, args.one_at_a_time, recorder)
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
    underruns = record["sink_underruns"] if record.get("sink_underruns") is not None else record["epipe"]
    return f"{record['approach']} {record['first_audio_ms']:.0f} ms/{underruns} xrun"


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
    parser.add_argument(
        "--approaches", nargs="+", choices=APPROACHES, help="default: all (the real peers once bench/peers.sh has run)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the first trial; trial n uses seed+n")
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        default=True,
        help="approaches in turn, each heard at the sink (the default)",
    )
    parser.add_argument(
        "--side-by-side",
        dest="one_at_a_time",
        action="store_false",
        help="approaches at the same time, each on its own stream: device-side figures only, no real peers",
    )
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


def default_approaches(one_at_a_time: bool) -> list[str]:
    """Every approach this machine can run: the real peers need their venv and a sink that is listened to."""
    ours = [a for a in APPROACHES if a not in PEERS]
    if not one_at_a_time:
        return ours
    if not PEERS_PYTHON.exists():
        print("bench: the real peers are left out: bench/peers.sh makes their venv", file=sys.stderr, flush=True)
        return ours
    return list(APPROACHES)


def _budget(value: str) -> float:
    pct = float(value)
    if not 0 < pct <= 100:
        raise argparse.ArgumentTypeError(f"a CPU budget is a percentage of one core, above 0 and at most 100: {value}")
    return pct


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.approaches = args.approaches or default_approaches(args.one_at_a_time)
    if not args.one_at_a_time and set(args.approaches) & set(PEERS):
        print("bench: the real peers are only measured at the sink, one approach at a time", file=sys.stderr)
        return 2
    missing = NullSink.missing()
    if missing:
        print(f"bench: {missing}", file=sys.stderr)
        return 2
    started = time.monotonic()
    meta: dict = {}
    records = run(args, meta)
    command = "bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta.update(command=command.strip(), machine=machine(), wall_s=round(time.monotonic() - started))
    rounds = {(r["budget"], r["line"], r["profile"], r["trial"]): r["steal_pct"] for r in records if "steal_pct" in r}
    meta["steal_pct"] = list(rounds.values())
    write_report(args.out, records, meta)
    print((args.out / "results.md").read_text())
    errors = [r for r in records if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
