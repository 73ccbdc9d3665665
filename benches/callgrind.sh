#!/usr/bin/env bash
# Instructions per `POST /tasks` in todo-api (issue 19's target: ≤ 200 k),
# counted by callgrind, which counts instructions, not seconds: repeatable
# for the same binary and inputs whatever else the machine does. todo-api
# runs under valgrind twice, for SMALL and LARGE creates (relay on, so its
# reads and produces count too); the slope between the two totals is the
# cost of one create, free of start-up and shutdown.
# Usage: [SMALL=500] [LARGE=2500] [API_BIN=path] benches/callgrind.sh
set -euo pipefail
cd "$(dirname "$0")/.."
small="${SMALL:-500}"
large="${LARGE:-2500}"
cargo build -q --release --bin todo-api --bin todo-load
db=todo_callgrind broker_port=19094
# shellcheck source=benches/common.sh
source benches/common.sh
port=18095
start_nisshi "$out/callgrind-nisshi.log"

# total N: todo-api's instructions over its whole life with N creates.
total() {
  fresh_db
  local file="$out/callgrind.$1.out"
  PORT=$port valgrind --tool=callgrind --callgrind-out-file="$file" "$(binary todo-api)" \
    >"$out/callgrind.$1.log" 2>&1 &
  local pid=$!
  # Under valgrind the start takes far longer.
  wait_http "http://127.0.0.1:$port/ready" 120
  "$bin/todo-load" --url "http://127.0.0.1:$port" --concurrency 4 --warmup 0 \
    --seconds 600 --requests "$1" >/dev/null
  # Every event published before the count ends.
  for _ in $(seq 1 600); do
    [ "$(psql -Atq "$DATABASE_URL" -c 'SELECT count(*) FROM outbox')" = 0 ] && break; sleep 0.2
  done
  kill -TERM "$pid"; wait "$pid" || true
  awk '/^summary:/ {print $2}' "$file"
}
a=$(total "$small")
b=$(total "$large")
python3 -c "
a, b, n = $a, $b, $large - $small
print(f'todo-api: {a:,} instructions with $small creates, {b:,} with $large: {(b - a) / n:,.0f} per create')"
