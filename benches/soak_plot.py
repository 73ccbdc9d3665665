#!/usr/bin/env python3
"""The soak's plot and summary (benches/soak.sh): every table's rows and
size over time, and the API's p99 per minute, as one standalone SVG drawn
by hand (no plotting library), plus a text summary on stdout.

Usage: soak_plot.py tables.csv load.json out.svg
"""

import csv
import json
import math
import statistics
import sys
from collections import defaultdict

PALETTE = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939",
    "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
]
WIDTH, LEFT, RIGHT, PANEL, GAP, TOP = 1000, 80, 230, 260, 60, 40


def read_tables(path):
    series = defaultdict(list)  # table -> [(elapsed, rows, bytes)]
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            series[row["table"]].append(
                (int(row["elapsed_s"]), int(row["rows"]), int(row["bytes"] or 0))
            )
    return dict(sorted(series.items()))


def p99_per_minute(path):
    timeline = json.load(open(path)).get("timeline", [])
    minutes = defaultdict(list)
    for s in timeline:
        if s["requests"]:
            minutes[s["second"] // 60].append(s["p99_ms"])
    return [
        (m * 60 + 30, statistics.median(v), max(v)) for m, v in sorted(minutes.items())
    ]


def panel(out, index, title, lines, x_max, log, unit):
    """lines: [(label, colour, [(x, y)])]; y on a log10 scale when `log`."""
    top = TOP + index * (PANEL + GAP)
    plot_w = WIDTH - LEFT - RIGHT
    ys = [y for _, _, pts in lines for _, y in pts]
    if not ys:
        return
    if log:
        lo = 0
        hi = max(1, math.ceil(math.log10(max(max(ys), 1) + 1)))
        def fy(y):
            return top + PANEL - PANEL * math.log10(y + 1) / hi
        ticks = [(10 ** k, f"{10 ** k:,}") for k in range(lo, hi + 1)]
    else:
        hi = max(ys) * 1.1 or 1
        def fy(y):
            return top + PANEL - PANEL * y / hi
        step = 10 ** math.floor(math.log10(hi / 5)) if hi > 0 else 1
        ticks = [(k * step, f"{k * step:g}") for k in range(0, int(hi / step) + 1)]
    def fx(x):
        return LEFT + plot_w * x / max(x_max, 1)
    out.append(f'<text x="{LEFT}" y="{top - 10}" font-size="14" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>')
    for value, label in ticks:
        y = fy(value)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{label}</text>')
    for m in range(0, int(x_max / 60) + 1, 10):
        x = fx(m * 60)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + PANEL}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + PANEL + 15}" font-size="11" text-anchor="middle">{m} min</text>')
    out.append(f'<text x="14" y="{top + PANEL / 2}" font-size="11" transform="rotate(-90 14 {top + PANEL / 2})" text-anchor="middle">{unit}</text>')
    for i, (label, colour, pts) in enumerate(lines):
        if not pts:
            continue
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        ly = top + 12 + i * 14
        out.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{WIDTH - RIGHT + 25}" y="{ly}" font-size="11">{label}</text>')


def main():
    tables_csv, load_json, svg_path = sys.argv[1:4]
    tables = read_tables(tables_csv)
    shown = {t: pts for t, pts in tables.items() if max(r for _, r, _ in pts) > 0}
    colours = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(shown)}
    x_max = max(e for pts in tables.values() for e, _, _ in pts)
    latency = p99_per_minute(load_json)
    out = []
    panel(out, 0, "Rows per table", [
        (t, colours[t], [(e, r) for e, r, _ in pts]) for t, pts in shown.items()
    ], x_max, True, "rows (log)")
    panel(out, 1, "Size per table (table + indexes + TOAST)", [
        (t, colours[t], [(e, b / 1048576) for e, _, b in pts]) for t, pts in shown.items()
    ], x_max, True, "MiB (log, +1)")
    panel(out, 2, "API latency: p99 of each second, per minute", [
        ("median second", PALETTE[0], [(x, med) for x, med, _ in latency]),
        ("worst second", PALETTE[1], [(x, worst) for x, _, worst in latency]),
    ], x_max, False, "ms")
    height = TOP + 3 * (PANEL + GAP)
    with open(svg_path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
                f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>\n')
        f.write("\n".join(out))
        f.write("\n</svg>\n")

    # The summary: each table at the half-way sample and at the end, so
    # that growth in the second half stands out.
    half = x_max / 2
    print(f"{'table':<28} {'rows @half':>12} {'rows @end':>12} {'max rows':>12} {'MiB @half':>10} {'MiB @end':>10}")
    for t, pts in tables.items():
        mid = min(pts, key=lambda p: abs(p[0] - half))
        end = pts[-1]
        print(f"{t:<28} {mid[1]:>12,} {end[1]:>12,} {max(r for _, r, _ in pts):>12,} "
              f"{mid[2] / 1048576:>10.1f} {end[2] / 1048576:>10.1f}")
    if latency:
        meds = [m for _, m, _ in latency]
        print(f"API p99 per second: median over minutes {statistics.median(meds):.1f} ms, "
              f"worst minute's median {max(meds):.1f} ms, worst second {max(w for _, _, w in latency):.1f} ms")
    print(f"plot: {svg_path}")


if __name__ == "__main__":
    main()
