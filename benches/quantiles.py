#!/usr/bin/env python3
"""Prints p50/p99 of a Prometheus histogram read from a /metrics URL,
interpolated within buckets (as histogram_quantile does).
Usage: quantiles.py URL METRIC [label=value ...]"""
import sys
import urllib.request

url, metric, *labels = sys.argv[1:]
text = urllib.request.urlopen(url, timeout=5).read().decode()
buckets = []
for line in text.splitlines():
    if not line.startswith(metric + "_bucket{"):
        continue
    if not all(label.replace("=", '="') + '"' in line for label in labels):
        continue
    le = line.split('le="')[1].split('"')[0]
    buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
buckets.sort()
total = buckets[-1][1] if buckets else 0
if not total:
    sys.exit(f"{metric}: no observations")


def quantile(q):
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1)
        lower, below = upper, count
    return lower


print(f"{metric}: p50 {quantile(0.5) * 1000:.1f} ms, p99 {quantile(0.99) * 1000:.1f} ms ({int(total)} observations)")
