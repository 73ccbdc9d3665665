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
cargo build -q --release --bin todo-api --bin todo-realtime --bin todo-load
db=todo_ws_memory broker_port=19292
port=18284
# shellcheck source=benches/common.sh
source benches/common.sh

fresh_db
start_nisshi "$out/ws-memory-nisshi.log"

# Each connection is a file descriptor on both sides.
ulimit -n "$(ulimit -Hn)"
start todo-realtime "$port"
sleep 2
"$bin/todo-load" --ws-idle "$n" --ws-pid "${running[todo-realtime]}" \
  --ws-url "ws://127.0.0.1:$port/ws" --seconds "$hold" --report "$out/ws-memory.json"
