#!/usr/bin/env python3
"""Grouped bar chart: every system's ratio against the same-run baseline, per workload.

Usage: plot.py results/latest.json results/latest.png
Reads the JSON written by helpers.py render; needs matplotlib (Debian:
python3-matplotlib). Uses the Agg backend so it works without a display.

Top panel: throughput (higher is better). Bottom panel: origin traffic and
latency (lower is better). One bar per system per workload: the median of the
per-run ratios, with a whisker from the lowest to the highest run. ston-fs's
targets against the baseline are drawn as black ticks over its bar.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"ston-fs": "#2f7d32", "httpdirfs": "#e08a1e", "httpdirfs-1.2.5": "#b5651d", "rclone": "#6a4fb0"}
EXTRA_COLORS = ["#1f77b4", "#d62728", "#8c564b", "#17becf"]
FLOOR = 1e-3   # log axes: a ratio of 0 (no traffic) is drawn at the floor


def short(fig):
    w = fig["workload"]
    w = w.replace("cold sequential read, ", "cold seq., ").replace(", after a memory-heavy workload", ", after heavy")
    w = w.replace("sequential read after the random reads (cold-after-random)", "cold-after-random")
    w = w.replace("(page cache dropped)", "").replace("random 4 KiB reads of the cold file", "random 4K")
    return f"{fig['id']}. {w.strip()}\n(÷ {fig['baseline']['what']})"


def target_levels(f):
    """ston-fs's targets as levels on the ratio axis: (y, linestyle).

    Solid: a target against the baseline (or an absolute one, divided by the
    baseline). Dashed: a target against the best peer, drawn at k x that peer's
    median ratio, so the bar has to reach it.
    """
    out = []
    base = (f.get("baseline") or {}).get("median")
    for t in f.get("targets", []):
        k = t["target"]
        if t["kind"] == "ratio" and k:
            out.append((k, "solid"))
        elif t["kind"] == "abs" and k and base:
            out.append((k / base, "solid"))
        elif t["kind"] == "peer" and f.get("best_peer"):
            pr = (f["systems"].get(f["best_peer"]["name"]) or {}).get("ratio")
            if pr:
                out.append((k * pr["median"], "dashed"))
    return out


def panel(ax, figs, systems, title, better):
    n = len(systems)
    width = 0.8 / max(n, 1)
    ymax, ymin = 1.0, 1.0
    for gi, f in enumerate(figs):
        for si, s in enumerate(systems):
            e = f["systems"].get(s) or {}
            r = e.get("ratio")
            x = gi - 0.4 + width * (si + 0.5)
            color = COLORS.get(s, EXTRA_COLORS[si % len(EXTRA_COLORS)])
            if r is None:
                ax.text(x, FLOOR * 1.5, "n/a", ha="center", va="bottom", fontsize=6, rotation=90,
                        color="#777777")
                continue
            med = max(r["median"], FLOOR)
            lo, hi = max(r["min"], FLOOR), max(r["max"], FLOOR)
            ax.bar(x, med, width=width * 0.92, color=color, label=s if gi == 0 else None)
            ax.errorbar(x, med, yerr=[[med - lo], [hi - med]], fmt="none", ecolor="#222222",
                        elinewidth=0.8, capsize=2)
            ymax, ymin = max(ymax, hi), min(ymin, lo)
            if s == "ston-fs":
                top = hi
                for y, style in target_levels(f):
                    ax.plot([x - width / 2, x + width / 2], [y, y], color="black", linewidth=2,
                            linestyle=style, zorder=4)
                    ymax, ymin = max(ymax, y), min(ymin, y)
                    top = max(top, y)
                # Above the whisker and every target tick, so nothing hides the text.
                ax.annotate(f"{r['median']:.2g}" if r["median"] < 0.1 else f"{r['median']:.2f}",
                            (x, top), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=6)
    ax.set_yscale("log")
    ax.set_ylim(max(FLOOR, ymin / 2), ymax * 3)
    ax.axhline(1.0, color="#888888", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(figs)))
    ax.set_xticklabels([short(f) for f in figs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"ratio to the same-run baseline\n({better} is better, log scale)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", which="both", linewidth=0.3, alpha=0.5)
    ax.set_xlim(-0.6, len(figs) - 0.4)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    meta = data["meta"]
    systems = [s["name"] for s in data["systems"]]
    unavailable = [f"{s['name']}: unavailable" for s in data["systems"] if s["status"] != "ok"]
    figs = [f for f in data["figures"] if f.get("measured") and f.get("baseline")
            and "median" in f["baseline"]]
    up = [f for f in figs if f["better"] == "higher"]
    down = [f for f in figs if f["better"] == "lower"]

    fig, axes = plt.subplots(2, 1, figsize=(max(11, 0.9 * len(up) * max(1, len(systems)) / 2), 10),
                             dpi=110, gridspec_kw={"height_ratios": [3, 2]})
    panel(axes[0], up, systems, "throughput against the same-run baseline "
          "(curl, or a local copy written in the same run)", "higher")
    panel(axes[1], down, systems, "origin traffic and latency against the ideal / the local copy",
          "lower")
    axes[0].legend(loc="upper right", fontsize=8, ncol=len(systems))
    subtitle = ("bars: median of per-run ratios; whiskers: min–max over runs; black tick: ston-fs target "
                "(solid: against the baseline; dashed: k × the best peer)")
    if unavailable:
        subtitle += "; " + ", ".join(unavailable)
    fig.suptitle(f"ston-fs and peers — {meta.get('date', '')} — {meta.get('commit', '')} — "
                 f"{meta.get('mode', '')} ({meta.get('big_size_h', '')} file, {meta.get('reps', '?')} runs)\n"
                 f"{subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main()
