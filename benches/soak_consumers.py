#!/usr/bin/env python3
"""Summarises benches/soak.sh's consumers.csv: per service and period, the
mean age of the events handled in it (from their commit to the effect or,
for the relay, to the broker's acknowledgement), the rate, and the largest
lag sampled (messages behind; for the relay, outbox rows not yet
acknowledged).

Usage: soak_consumers.py consumers.csv [period_seconds]
"""
import csv
import sys
from collections import defaultdict


def main() -> None:
    path = sys.argv[1]
    period = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    samples = defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f):
            samples[r["service"]].append(
                (
                    int(r["elapsed_s"]),
                    int(r["lag"]) if r["lag"] else None,
                    float(r["age_sum_s"]),
                    float(r["age_count"]),
                )
            )
    print(f"{'service':16} {'period':>11} {'events/s':>9} {'mean age s':>11} {'max lag':>8}")
    for service, rows in samples.items():
        start = rows[0]
        max_lag = None
        for row in rows[1:]:
            if row[1] is not None:
                max_lag = max(max_lag or 0, row[1])
            if row[0] - start[0] >= period or row is rows[-1]:
                n = row[3] - start[3]
                seconds = max(row[0] - start[0], 1)
                age = (row[2] - start[2]) / n if n > 0 else float("nan")
                print(f"{service:16} {start[0]:>5}-{row[0]:<5} {n / seconds:>9.0f} {age:>11.3f} {'n/a' if max_lag is None else max_lag:>8}")
                start, max_lag = row, None


if __name__ == "__main__":
    main()
