"""Per-cell figures from the trial records, as a Markdown table and a PNG chart."""

from __future__ import annotations

import json
import math
from pathlib import Path

APPROACH_LABELS = {
    "product": "kiosk (adaptive pre-roll)",
    "download": "download, then play",
    "prebuffer": "150 KB pre-buffer",
    "no-preroll": "no pre-roll",
    "openai-localaudioplayer": "openai LocalAudioPlayer (real)",
    "realtimetts": "RealtimeTTS OpenAIEngine (real)",
    "floor": "physical floor (1st byte + 1 period)",
}
PERIOD_MS = 40  # the ALSA period every in-process approach uses (bench/contender.py)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def floor_records(records: list[dict]) -> list[dict]:
    """Per round, the earliest any player could sound: the first audio byte (earliest seen by any approach in that
    round: the network is seeded, so each saw the same delay) plus one ALSA period to fill before the device starts."""
    rounds: dict[tuple, list[float]] = {}
    for r in records:
        if r.get("first_byte_ms") is not None and r.get("source") != "cache":
            rounds.setdefault((r.get("budget"), r["line"], r["profile"], r["trial"]), []).append(r["first_byte_ms"])
    return [
        {
            "approach": "floor",
            "budget": budget,
            "line": line,
            "profile": profile,
            "trial": trial,
            "first_audio_ms": min(firsts) + PERIOD_MS,
        }
        for (budget, line, profile, trial), firsts in rounds.items()
    ]


def cells(records: list[dict]) -> list[dict]:
    """One summary per (CPU budget, line, profile, approach), in the order first seen; the floor follows."""
    groups: dict[tuple, list[dict]] = {}
    for record in [*records, *floor_records(records)]:
        key = (record.get("budget"), record["line"], record["profile"], record["approach"])
        groups.setdefault(key, []).append(record)
    return [_summarize(key, group) for key, group in groups.items()]


def _summarize(key: tuple, group: list[dict]) -> dict:
    budget, line, profile, approach = key
    absent = next((r["absent"] for r in group if "absent" in r), None)
    good = [r for r in group if "error" not in r and "absent" not in r]
    cell = {
        "budget": budget,
        "line": line,
        "profile": profile,
        "approach": approach,
        "trials": len(good) if absent else len(group),
        "errors": len(group) - len(good) if not absent else 0,
    }
    if absent:
        return {**cell, "absent": absent}
    if not good:
        return cell
    firsts = [r["first_audio_ms"] for r in good]
    after_byte = [r["first_audio_ms"] - r["first_byte_ms"] for r in good if r.get("first_byte_ms") is not None]
    audio = sum(r.get("audio_s") or 0 for r in good)
    cpu = _mean(good, "cpu_s")
    return {
        **cell,
        "first_p50_ms": percentile(firsts, 50),
        "first_p95_ms": percentile(firsts, 95),
        "after_first_byte_p50_ms": percentile(after_byte, 50) if after_byte else None,
        # Device-side (None where the approach's writes cannot be seen: the real peers, the floor).
        "underruns": _mean(good, "epipe"),
        "timeline_underruns": _mean(good, "timeline_underruns"),
        "gap_ms": _mean(good, "gap_ms"),
        # Heard at the sink (None with --side-by-side).
        "sink_underruns": _mean(good, "sink_underruns"),
        "sink_gap_ms": _mean(good, "sink_gap_ms"),
        "sink_audio_s": _mean(good, "sink_audio_s"),
        "line_s": _mean(good, "line_s"),
        "cpu_per_audio_s": cpu * len(good) / audio if cpu is not None and audio else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in good) if "peak_rss_mb" in good[0] else None,
    }


def _mean(records: list[dict], key: str) -> float | None:
    """The mean of `key`, or None if any record lacks it (a figure that approach cannot give)."""
    values = [r.get(key) for r in records]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


def markdown(summary: list[dict], meta: dict) -> str:
    m = meta["machine"]
    out = [
        f"Command: `{meta['command']}` ({meta['wall_s']} s). Machine: {m['cpu']}, {m['cpus']} CPUs, Linux "
        f"{m['kernel']}, Python {m['python']}; {m['date']}.",
        f"Host CPU steal (time the hypervisor gave to other machines) per round: median {_steal(meta, 50)} %, "
        f"worst {_steal(meta, 100)} %.",
        *_budget_note(summary, meta),
        "",
        "Absolute times on a shared virtual machine are noisy; the ratios between approaches, measured in the same "
        "rounds over the same seeded networks, are the claim. Press→audio is when the line's first sample was heard "
        "in the sink's monitor (when the sink was recorded; with --side-by-side, the first write the device "
        "accepted). Underruns are per line: heard at the sink (silences inside the line) and, in brackets, the "
        "device's EPIPE count / the count reconstructed from the write timeline, where the writes can be seen. Gap "
        "is the total silence inside the line. Heard s is how much of the line was heard, beside the line's own "
        "length (a cached line is stopped early on purpose). CPU is process CPU seconds per second of audio; RSS is "
        "the peak resident memory of the process that spoke. – : a figure the approach cannot give.",
        "",
        "| CPU budget | line | network | approach | trials | press→audio p50 ms | p95 ms | after 1st byte p50 ms "
        "| underruns/line | gap ms/line | heard s (line s) | CPU s/s | peak RSS MB |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    out += [_row(c) for c in summary]
    out += _ratio_table(_ratios(summary))
    return "\n".join(out) + "\n"


def _row(c: dict) -> str:
    label = APPROACH_LABELS.get(c["approach"], c["approach"])
    head = f"| {_budget(c.get('budget'))} | {c['line']} | {c['profile']} | {label}"
    if "absent" in c:
        return f"{head} | – | {c['absent']} | | | | | | | |"
    if "first_p50_ms" not in c:
        return f"{head} | {c['trials']} | failed | | | | | | | |"
    failed = f" ({c['errors']} failed)" if c["errors"] else ""
    heard, device = _num(c.get("sink_underruns"), ".1f"), _num(c.get("underruns"), ".1f")
    underruns = f"{heard} ({device} / {_num(c.get('timeline_underruns'), '.1f')})" if device != "–" else heard
    gap = c.get("sink_gap_ms") if c.get("sink_gap_ms") is not None else c.get("gap_ms")
    return (
        f"{head} | {c['trials']}{failed} | {_ms(c['first_p50_ms'])} | {_ms(c['first_p95_ms'])} | "
        f"{_ms(c.get('after_first_byte_p50_ms'))} | {underruns} | {_num(gap, '.0f')} | {_length(c)} | "
        f"{_num(c.get('cpu_per_audio_s'), '.3f')} | {_num(c.get('peak_rss_mb'), '.0f')} |"
    )


def _length(c: dict) -> str:
    if c.get("sink_audio_s") is None:
        return "–"
    return f"{c['sink_audio_s']:.2f} ({c['line_s']:.2f})"


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _ratio_table(ratios: list[dict]) -> list[str]:
    if not ratios:
        return []
    out = ["", "kiosk's press→audio p50 as a share of each other approach's (below 1: kiosk is heard sooner):", ""]
    out += ["| CPU budget | line | network | vs | kiosk p50 ms | their p50 ms | ratio |"]
    out += ["|---|---|---|---|--:|--:|--:|"]
    out += [
        f"| {_budget(r['budget'])} | {r['line']} | {r['profile']} | {APPROACH_LABELS.get(r['vs'], r['vs'])} "
        f"| {r['ours']:.0f} | {r['theirs']:.0f} | {r['ratio']:.3f} |"
        for r in ratios
    ]
    return out


def _budget(pct: float | None) -> str:
    return "none" if pct is None else f"{pct:g} %"


def _budget_note(summary: list[dict], meta: dict) -> list[str]:
    if meta.get("cpu_budget_unavailable"):
        return ["", f"**No CPU budget was applied**: {meta['cpu_budget_unavailable']}. Every row ran unconfined."]
    if any(c.get("budget") is not None for c in summary):
        return [
            "",
            "CPU budget: each contender process was confined to that share of one core by a cgroup v1 cpu quota "
            "(10 ms period), like a slower CPU.",
        ]
    return []


def _steal(meta: dict, p: float) -> str:
    rounds = meta.get("steal_pct") or [0.0]
    return f"{percentile(rounds, p):.1f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value < 20 else f"{value:.0f}"


def _ratios(summary: list[dict]) -> list[dict]:
    by_key = {(c.get("budget"), c["line"], c["profile"], c["approach"]): c for c in summary if "first_p50_ms" in c}
    ratios = []
    for (budget, line, profile, approach), theirs in by_key.items():
        ours = by_key.get((budget, line, profile, "product"))
        if approach == "product" or not ours:
            continue
        ratios.append(
            {
                "budget": budget,
                "line": line,
                "profile": profile,
                "vs": approach,
                "ours": ours["first_p50_ms"],
                "theirs": theirs["first_p50_ms"],
                "ratio": ours["first_p50_ms"] / theirs["first_p50_ms"],
            }
        )
    return ratios


def chart(summary: list[dict], path: Path) -> None:
    """Press→audio p50 (p95 whisker, log scale) and underruns per line, by network and approach: one column per
    line of text, one pair of rows per CPU budget."""
    import matplotlib  # imported here: only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(c.get("budget") for c in summary))
    lines = list(dict.fromkeys(c["line"] for c in summary))
    approaches = list(dict.fromkeys(c["approach"] for c in summary))
    fig, axes = plt.subplots(
        2 * len(budgets), len(lines), figsize=(6.5 * len(lines), 3.75 * 2 * len(budgets)), squeeze=False
    )
    width = 0.8 / len(approaches)
    for b, budget in enumerate(budgets):
        for col, line in enumerate(lines):
            here = [c for c in summary if c["line"] == line and c.get("budget") == budget]
            profiles = list(dict.fromkeys(c["profile"] for c in here))
            top, bottom = axes[2 * b][col], axes[2 * b + 1][col]
            for i, approach in enumerate(approaches):
                found = {c["profile"]: c for c in here if c["approach"] == approach}
                xs = [p + (i - (len(approaches) - 1) / 2) * width for p in range(len(profiles))]
                cells_here = [found.get(p, {}) for p in profiles]
                # A cached start is under a millisecond (or a hair below zero within the monitor's ±10 ms): a log
                # scale needs something to draw.
                p50 = [max(1.0, c["first_p50_ms"]) if "first_p50_ms" in c else math.nan for c in cells_here]
                p95 = [c.get("first_p95_ms", math.nan) for c in cells_here]
                whisker = [[0] * len(p50), [max(0.0, b - a) if a == a else 0 for a, b in zip(p50, p95, strict=True)]]
                label = APPROACH_LABELS.get(approach, approach)
                top.bar(xs, p50, width, yerr=whisker, capsize=2, label=label)
                bottom.bar(xs, [_heard_underruns(c) for c in cells_here], width, label=label)
            cpu = "" if budget is None else f", {budget:g} % CPU"
            for ax, title in ((top, "press → first audio, ms (p50, whisker p95)"), (bottom, "underruns per line")):
                ax.set_xticks(range(len(profiles)), profiles)
                ax.set_title(f"{line} line{cpu}: {title}", fontsize=10)
                ax.grid(axis="y", alpha=0.3)
            top.set_yscale("log")
            bottom.set_ylim(bottom=0, top=max(1.0, bottom.get_ylim()[1]))
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = min(4 if len(lines) > 1 else 2, len(labels))  # as many as the figure's width holds
    legend_rows = math.ceil(len(labels) / columns)
    fig.legend(handles, labels, loc="upper center", ncol=columns, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.04 * legend_rows / len(budgets)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _heard_underruns(cell: dict) -> float:
    for key in ("sink_underruns", "underruns"):
        if cell.get(key) is not None:
            return cell[key]
    return math.nan


def write_report(out: Path, records: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = cells(records)
    (out / "results.json").write_text(json.dumps({"meta": meta, "cells": summary, "trials": records}, indent=1))
    (out / "results.md").write_text(markdown(summary, meta))
    chart(summary, out / "results.png")
