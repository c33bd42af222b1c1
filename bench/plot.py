#!/usr/bin/env python3
"""Draws docs/benchmark.png from the data walarch_bench.py collected.

usage: plot.py DATA.json OUT.png
Left: backlog-drain throughput per method (median, bars from min to max).
Right: backlog (.ready segments) over time under sustained load, per method.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

def colors(methods):
    """One colour per method, the same in both panels; the dd floors in greys."""
    out, i = {}, 0
    for m in methods:
        if m["kind"] == "dd":
            out[m["key"]] = "#333333" if m["key"] == "dd1" else "#666666"
        else:
            out[m["key"]] = plt.cm.tab10(i % 10)
            i += 1
    return out


def main():
    data = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    methods = data["methods"]
    summary = data["summary"]
    color = colors(methods)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 7.5), gridspec_kw={"width_ratios": [1, 1.1]})

    shown = [m for m in methods if m["key"] in summary]
    labels = [m["label"] for m in shown]
    med = [summary[m["key"]]["mib_s"] for m in shown]
    lo = [summary[m["key"]]["mib_s"] - summary[m["key"]]["tput_min"] for m in shown]
    hi = [summary[m["key"]]["tput_max"] - summary[m["key"]]["mib_s"] for m in shown]
    y = list(range(len(shown)))[::-1]
    bars = ax1.barh(y, med, xerr=[lo, hi], capsize=4, color=[color[m["key"]] for m in shown],
                    error_kw={"elinewidth": 1.2, "ecolor": "black"})
    for bar, m in zip(bars, shown):
        if m["kind"] == "dd":  # the floors: no PostgreSQL involved
            bar.set_hatch("//")
            bar.set_edgecolor("white")
    ax1.set_yticks(y)
    ax1.set_yticklabels(labels, fontsize=8.5)
    for yi, v, h in zip(y, med, hi):
        ax1.text(v + h + max(med) * 0.01, yi, f"{v:.0f}", va="center", fontsize=8)
    ax1.set_xlabel("MiB/s (median; bars: min–max)")
    ax1.set_xlim(0, max(med) * 1.18 if med else 1)
    n = data["segments"]
    ax1.set_title(f"Backlog drain: {n} segments, {data['reps']} run(s) each", fontsize=11)
    ax1.grid(axis="x", alpha=0.3)

    styles = ["-", "--", "-.", ":"]
    load_end = None
    for i, m in enumerate([m for m in methods if m["key"] in data["load"]]):
        d = data["load"][m["key"]]
        t = [s[0] for s in d["samples"]]
        b = [s[1] for s in d["samples"]]
        ax2.plot(t, b, styles[i % len(styles)], label=m["label"], linewidth=1.6,
                 color=color[m["key"]])
        load_end = d["load_end"] if load_end is None else max(load_end, d["load_end"])
    if load_end is not None:
        ax2.axvline(load_end, color="black", linewidth=0.8, linestyle=":")
        ax2.text(load_end, ax2.get_ylim()[1] * 0.97, " load stops", fontsize=8, va="top")
    ax2.set_xlabel("seconds since pgbench started")
    ax2.set_ylabel(".ready segments waiting (sampled every 1 s)")
    ax2.set_title("Backlog under sustained insert-heavy pgbench load", fontsize=11)
    ax2.set_ylim(bottom=0)
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.grid(alpha=0.3)
    if data["load"]:
        ax2.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2,
                   frameon=False)
    else:
        ax2.text(0.5, 0.5, "no sustained-load data", ha="center", transform=ax2.transAxes)

    fig.suptitle(f"walarch_ext benchmark — {(data.get('pg') or '').split(' on ')[0]}", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
