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
}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cells(records: list[dict]) -> list[dict]:
    """One summary per (CPU budget, line, profile, approach), in the order first seen."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record.get("budget"), record["line"], record["profile"], record["approach"])
        groups.setdefault(key, []).append(record)
    return [_summarize(key, group) for key, group in groups.items()]


def _summarize(key: tuple, group: list[dict]) -> dict:
    budget, line, profile, approach = key
    good = [r for r in group if "error" not in r]
    cell = {
        "budget": budget,
        "line": line,
        "profile": profile,
        "approach": approach,
        "trials": len(group),
        "errors": len(group) - len(good),
    }
    if not good:
        return cell
    firsts = [r["first_audio_ms"] for r in good]
    after_byte = [r["first_audio_ms"] - r["first_byte_ms"] for r in good if r["first_byte_ms"] is not None]
    audio = sum(r["audio_s"] for r in good)
    return {
        **cell,
        "first_p50_ms": percentile(firsts, 50),
        "first_p95_ms": percentile(firsts, 95),
        "after_first_byte_p50_ms": percentile(after_byte, 50) if after_byte else None,
        "underruns": sum(r["epipe"] for r in good) / len(good),
        "timeline_underruns": sum(r["timeline_underruns"] for r in good) / len(good),
        "gap_ms": sum(r["gap_ms"] for r in good) / len(good),
        "cpu_per_audio_s": sum(r["cpu_s"] for r in good) / audio if audio else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in good),
    }


def markdown(summary: list[dict], meta: dict) -> str:
    m = meta["machine"]
    out = [
        f"Command: `{meta['command']}` ({meta['wall_s']} s). Machine: {m['cpu']}, {m['cpus']} CPUs, Linux "
        f"{m['kernel']}, Python {m['python']}; {m['date']}.",
        f"Host CPU steal (time the hypervisor gave to other machines) per round: median {_steal(meta, 50)} %, "
        f"worst {_steal(meta, 100)} %.",
        *_budget_note(summary, meta),
        "",
        "Absolute times on a shared virtual machine are noisy; the ratios between approaches, measured side by side "
        "in the same rounds, are the claim. Underruns are per line: the device's EPIPE count and, in brackets, the "
        "count reconstructed from the write timeline. Gap is the total time the device ran dry per line. CPU is "
        "process CPU seconds per second of audio; RSS is the peak resident memory of the process that spoke.",
        "",
        "| CPU budget | line | network | approach | trials | press→audio p50 ms | p95 ms | after 1st byte p50 ms "
        "| underruns/line | gap ms/line | CPU s/s | peak RSS MB |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in summary:
        label = APPROACH_LABELS.get(c["approach"], c["approach"])
        budget = _budget(c.get("budget"))
        if "first_p50_ms" not in c:
            out.append(f"| {budget} | {c['line']} | {c['profile']} | {label} | {c['trials']} | failed | | | | | | |")
            continue
        failed = f" ({c['errors']} failed)" if c["errors"] else ""
        out.append(
            f"| {budget} | {c['line']} | {c['profile']} | {label} | {c['trials']}{failed} | "
            f"{_ms(c['first_p50_ms'])} | {_ms(c['first_p95_ms'])} | {_ms(c['after_first_byte_p50_ms'])} | "
            f"{c['underruns']:.1f} ({c['timeline_underruns']:.1f}) | {c['gap_ms']:.0f} | "
            f"{c['cpu_per_audio_s']:.3f} | {c['peak_rss_mb']:.0f} |"
        )
    ratios = _ratios(summary)
    if ratios:
        out += ["", "kiosk's press→audio p50 as a share of download-then-play's:", ""]
        out += ["| CPU budget | line | network | kiosk p50 ms | download p50 ms | ratio |", "|---|---|---|--:|--:|--:|"]
        out += [
            f"| {_budget(r['budget'])} | {r['line']} | {r['profile']} | {r['ours']:.0f} | {r['theirs']:.0f} "
            f"| {r['ratio']:.3f} |"
            for r in ratios
        ]
    return "\n".join(out) + "\n"


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
    for (budget, line, profile, approach), ours in by_key.items():
        theirs = by_key.get((budget, line, profile, "download"))
        if approach == "product" and theirs:
            ratio = ours["first_p50_ms"] / theirs["first_p50_ms"]
            ratios.append(
                {
                    "budget": budget,
                    "line": line,
                    "profile": profile,
                    "ours": ours["first_p50_ms"],
                    "theirs": theirs["first_p50_ms"],
                    "ratio": ratio,
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
                p50 = [c.get("first_p50_ms", math.nan) for c in cells_here]
                p95 = [c.get("first_p95_ms", math.nan) for c in cells_here]
                whisker = [[0] * len(p50), [max(0.0, b - a) if a == a else 0 for a, b in zip(p50, p95, strict=True)]]
                label = APPROACH_LABELS.get(approach, approach)
                top.bar(xs, p50, width, yerr=whisker, capsize=2, label=label)
                bottom.bar(xs, [c.get("underruns", math.nan) for c in cells_here], width, label=label)
            cpu = "" if budget is None else f", {budget:g} % CPU"
            for ax, title in ((top, "press → first audio, ms (p50, whisker p95)"), (bottom, "underruns per line")):
                ax.set_xticks(range(len(profiles)), profiles)
                ax.set_title(f"{line} line{cpu}: {title}", fontsize=10)
                ax.grid(axis="y", alpha=0.3)
            top.set_yscale("log")
            bottom.set_ylim(bottom=0, top=max(1.0, bottom.get_ylim()[1]))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.04 / len(budgets)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, records: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = cells(records)
    (out / "results.json").write_text(json.dumps({"meta": meta, "cells": summary, "trials": records}, indent=1))
    (out / "results.md").write_text(markdown(summary, meta))
    chart(summary, out / "results.png")
