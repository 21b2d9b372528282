"""The fleet chart (bench/fleet-instep.png) and the in-step results file, from bench/fleet.py's JSON outputs.

    .venv/bin/python bench/fleet_chart.py --main n20.json --more n2.json n5.json n10.json n20-clean.json \
        --fifty bench/fleet-fifty-latest.json

`--main` is the 20-speaker `--netns` run (its JSON becomes bench/fleet-instep-latest.json, with the `--more` runs'
summaries under `same_machine_fewer_speakers_and_no_impairment`); `--fifty` adds the fifty-speaker run's spread.
Left: the distribution of the spread for the main run, with and without a start time. Right: p50/p95 of the spread
against the number of speakers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
GOAL_MS = 10


def spreads(run: dict, with_start_time: bool) -> list[float]:
    return sorted(r["spread_ms"] for r in run["rounds"] if r["with_start_time"] == with_start_time and r["spread_ms"])


def impaired(run: dict) -> bool:
    return "loss 0%" not in run.get("netem_each_veth_end", "") and "impairment" in run


def draw(main: dict, more: list[dict], fifty: dict | None, out: Path) -> None:
    import matplotlib  # imported here: only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.3))
    for with_at, label in ((True, f"with a start time (lead {main['lead_s']} s)"), (False, "without")):
        values = spreads(main, with_at)
        left.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=label)
    left.axvline(GOAL_MS, color="grey", linestyle=":", linewidth=1)
    left.text(GOAL_MS * 1.05, 0.05, f"goal: p95 ≤ {GOAL_MS} ms", color="grey", fontsize=8)
    left.set(xscale="log", xlabel="spread of first audio, last − first speaker (ms, log)", ylabel="share of rounds")
    left.set_title(f"{main['speakers']} speakers, {main['with_start_time']['rounds']} rounds, impaired network")
    left.legend(loc="lower right", fontsize=8)

    runs = sorted([main, *[m for m in more if impaired(m)]], key=lambda r: r["speakers"])
    counts = [r["speakers"] for r in runs]
    for key, colour, label in (("with_start_time", "C0", "with a start time"), ("without_start_time", "C1", "without")):
        right.plot(counts, [r[key]["spread_p95_ms"] for r in runs], "o-", color=colour, label=f"{label}, p95")
        p50 = [r[key]["spread_p50_ms"] for r in runs]
        right.plot(counts, p50, "o--", color=colour, alpha=0.6, label=f"{label}, p50")
    clean = [m for m in more if not impaired(m)]
    for run in clean:
        right.plot([run["speakers"]], [run["with_start_time"]["spread_p95_ms"]], "s", color="C2")
    if clean:
        right.plot([], [], "s", color="C2", label="with a start time, p95, no impairment")
    if fifty:
        play = fifty["all_play"]
        right.plot([fifty["speakers"]], [play["with_start_time"]["spread_p95_ms"]], "D", color="C3")
        right.plot([fifty["speakers"]], [play["without_start_time"]["spread_p95_ms"]], "D", color="C3", alpha=0.5)
        right.plot([], [], "D", color="C3", label="p95 on one broker, loopback (with / without: light)")
    right.axhline(GOAL_MS, color="grey", linestyle=":", linewidth=1)
    right.set(yscale="log", xlabel="speakers (all on this machine's CPUs)", ylabel="spread (ms, log)")
    right.set_xticks(sorted({*counts, *([fifty["speakers"]] if fifty else [])}))
    right.set_title("spread against the number of speakers")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--main", type=Path, required=True)
    parser.add_argument("--more", type=Path, nargs="*", default=[])
    parser.add_argument("--fifty", type=Path)
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args()
    main_run = json.loads(args.main.read_text())
    more = [json.loads(path.read_text()) for path in args.more]
    main_run["same_machine_fewer_speakers_and_no_impairment"] = {
        path.stem: {k: v for k, v in run.items() if k != "rounds"} for path, run in zip(args.more, more, strict=True)
    }
    (args.out / "fleet-instep-latest.json").write_text(json.dumps(main_run, indent=1))
    fifty = json.loads(args.fifty.read_text()) if args.fifty else None
    draw(main_run, [*more], fifty, args.out / "fleet-instep.png")


if __name__ == "__main__":
    main()
