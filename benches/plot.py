#!/usr/bin/env python3
"""Bar chart of ston-fs ÷ baseline ratios with the target as a marker.

Usage: plot.py results/latest.json results/latest.png
Reads the JSON written by helpers.py render; needs matplotlib (Debian:
python3-matplotlib). Uses the Agg backend so it works without a display.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    meta = data["meta"]
    # Figures with a target, plus context ratios (grey, no target); not the RSS figures.
    rows = [r for r in data["figures"]
            if r.get("target_op") or r.get("target_text") == "context"]
    labels = [f"{r['id']}. {r['workload']}" for r in rows]
    ratios = [r["ratio"] if r["ratio"] is not None else 0.0 for r in rows]
    targets = [r["target"] for r in rows]
    colors = ["#3a923a" if r["met"] else ("#c83c3c" if r["met"] is False else "#999999")
              for r in rows]

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    xs = range(len(rows))
    ax.bar(xs, ratios, color=colors, width=0.6, label="ston-fs ÷ baseline")
    ax.scatter(xs, targets, marker="_", s=900, linewidths=3, color="black", zorder=3,
               label="target")
    for x, r in zip(xs, rows):
        txt = "error" if r["ratio"] is None else f"{r['ratio']:.2f}"
        arrow = {">=": "≥", "<=": "≤", "==": "="}.get(r["target_op"], "")
        goal = f"({arrow}{r['target']:g})" if r["target"] is not None else "(context)"
        # Above both the bar and the target marker, so neither hides the text.
        ax.annotate(f"{txt}\n{goal}", (x, max(ratios[x], r["target"] or 0)),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    top = max([1.2] + [v * 1.25 for v in ratios if v] + [t * 1.25 for t in targets if t])
    if top > 8:
        ax.set_yscale("symlog", linthresh=1.0)
    else:
        ax.set_ylim(0, top)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("ratio (ston-fs ÷ baseline)")
    ax.set_title(f"ston-fs benchmark — {meta.get('date', '')} — {meta.get('commit', '')} — "
                 f"{meta.get('mode', '')} ({meta.get('big_size_h', '')} file)", fontsize=10)
    ax.axhline(1.0, color="#888888", linewidth=0.8, linestyle=":")
    ax.legend(loc="upper right", fontsize=8)
    ax.text(0.01, 0.98, "green: target met   red: missed   grey: context, no target\n"
            "≥ rows: higher is better; ≤/= rows (origin traffic): 1.00 is ideal",
            transform=ax.transAxes, fontsize=7, va="top")
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main()
