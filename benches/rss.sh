#!/usr/bin/env bash
# Idle memory of each service: starts every release binary (todo-api,
# todo-recurring, todo-notifier, todo-audit, and todo-realtime unless it
# fails to build) against a local nisshi broker and a
# fresh database, waits until each answers /ready, lets them idle, and
# prints VmRSS (and the peak, VmHWM) from /proc/<pid>/status. Target: at
# most 30 MiB each. JSON: target/bench/rss.json.
# Usage: [IDLE=5] benches/rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
idle="${IDLE:-5}"
cargo build -q --release --bin todo-api --bin todo-recurring --bin todo-notifier --bin todo-audit
db=todo_rss broker_port=19192
# shellcheck source=benches/common.sh
source benches/common.sh

services=(todo-api:18180 todo-recurring:18181 todo-notifier:18182 todo-audit:18183)
if cargo build -q --release --bin todo-realtime; then
  services+=(todo-realtime:18184)
else
  echo "warning: todo-realtime does not build; measuring the others" >&2
fi

fresh_db
start_nisshi "$out/rss-nisshi.log"

for s in "${services[@]}"; do
  name=${s%:*} port=${s#*:}
  start "$name" "$port"
done
echo "all ready; idling ${idle} s"
sleep "$idle"

rows=()
for s in "${services[@]}"; do
  name=${s%:*}
  status=/proc/${running[$name]}/status
  rss=$(awk '/^VmRSS:/ {print $2}' "$status")
  hwm=$(awk '/^VmHWM:/ {print $2}' "$status")
  threads=$(awk '/^Threads:/ {print $2}' "$status")
  rows+=("$name $rss $hwm $threads")
done
printf '%s\n' "${rows[@]}" | python3 -c "
import json, sys
rows = [l.split() for l in sys.stdin if l.strip()]
print(f\"{'service':<16} {'VmRSS MiB':>10} {'VmHWM MiB':>10} {'threads':>8}  <= 30 MiB\")
report = {}
for name, rss, hwm, threads in rows:
    rss, hwm, threads = int(rss), int(hwm), int(threads)
    ok = rss <= 30 * 1024
    print(f'{name:<16} {rss/1024:>10.1f} {hwm/1024:>10.1f} {threads:>8}  {\"yes\" if ok else \"NO\"}')
    report[name] = {'vm_rss_kib': rss, 'vm_hwm_kib': hwm, 'threads': threads, 'within_30_mib': ok}
json.dump({'idle_seconds': $idle, 'services': report}, open('$out/rss.json', 'w'), indent=2)
print('report: $out/rss.json')"
