#!/usr/bin/env bash
# Memory per WebSocket connection of todo-realtime: starts it (with a local
# nisshi and a fresh database), opens N idle connections with todo-load
# --ws-idle (spread over 200 users) and reports its VmRSS before and after.
# JSON: target/bench/ws-memory.json.
# Usage: benches/ws_memory.sh [connections=10000] [hold seconds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
hold="${2:-5}"
out=target/bench
mkdir -p "$out"
cargo build -q --release --bin todo-realtime --bin todo-load
bin=target/release
nisshi="${NISSHI_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/nisshi-0.8.1/bin/nisshi}"
pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
db=todo_ws_memory
export JWT_SECRET=bench-bench-bench-bench-bench-bench!
export DATABASE_URL="$pg/$db"
export RUST_LOG=warn
broker_port=19292
port=18284
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$broker_port"
export KAFKA_TOPIC_PARTITIONS=6

declare -A pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT

[ -x "$nisshi" ] || { echo "no nisshi at $nisshi (scripts/install-broker.sh installs it)" >&2; exit 1; }
psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"$nisshi" broker --listener-url "tcp://127.0.0.1:$broker_port" \
  --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
  --storage-engine memory://nisshi/ --group-initial-rebalance-delay 0ms \
  >"$out/ws-memory-nisshi.log" 2>&1 &
pids[nisshi]=$!
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$broker_port) 2>/dev/null && break; sleep 0.1; done

# Each connection is a file descriptor on both sides.
ulimit -n "$(ulimit -Hn)"
PORT=$port "$bin/todo-realtime" &
pids[todo-realtime]=$!
for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$port/ready" >/dev/null || { echo "todo-realtime is not ready" >&2; exit 1; }
sleep 2
"$bin/todo-load" --ws-idle "$n" --ws-pid "${pids[todo-realtime]}" \
  --ws-url "ws://127.0.0.1:$port/ws" --seconds "$hold" --report "$out/ws-memory.json"
