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
out=target/bench
mkdir -p "$out"
cargo build -q --release --bin todo-api --bin todo-recurring --bin todo-notifier --bin todo-audit
bin=target/release
nisshi="${NISSHI_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/nisshi-0.8.1/bin/nisshi}"
pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
db=todo_rss
export JWT_SECRET=bench-bench-bench-bench-bench-bench!
export DATABASE_URL="$pg/$db"
export RUST_LOG=warn
broker_port=19192
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$broker_port"
export KAFKA_TOPIC_PARTITIONS=6

services=(todo-api:18180 todo-recurring:18181 todo-notifier:18182 todo-audit:18183)
if cargo build -q --release --bin todo-realtime; then
  services+=(todo-realtime:18184)
else
  echo "warning: todo-realtime does not build; measuring the others" >&2
fi

declare -A pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT
wait_http() {
  for _ in $(seq 1 300); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; exit 1
}

[ -x "$nisshi" ] || { echo "no nisshi at $nisshi (scripts/install-broker.sh installs it)" >&2; exit 1; }
psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"$nisshi" broker --listener-url "tcp://127.0.0.1:$broker_port" \
  --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
  --storage-engine memory://nisshi/ --group-initial-rebalance-delay 0ms \
  >"$out/rss-nisshi.log" 2>&1 &
pids[nisshi]=$!
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$broker_port) 2>/dev/null && break; sleep 0.1; done

for s in "${services[@]}"; do
  name=${s%:*} port=${s#*:}
  PORT=$port "$bin/$name" &
  pids[$name]=$!
  wait_http "http://127.0.0.1:$port/ready"
done
echo "all ready; idling ${idle} s"
sleep "$idle"

rows=()
for s in "${services[@]}"; do
  name=${s%:*}
  status=/proc/${pids[$name]}/status
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
