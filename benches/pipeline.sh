#!/usr/bin/env bash
# The whole write path on this machine, against a local nisshi broker:
#   1. POST /tasks at full speed (closed loop): the throughput ceiling;
#   2. POST /tasks at a fixed rate (open loop): latency without coordinated
#      omission;
#   3. outbox -> broker: a backlog written with the relay off, then drained;
#   4. broker -> todo-audit: every event so far, consumed from the start;
#   5. end to end: the API at a fixed rate with the audit running, and the
#      delay from each event's time (its outbox write) to its audit row.
# Reports land in target/bench/. Usage: benches/pipeline.sh [rate] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-1000}"
seconds="${2:-20}"
out=target/bench
mkdir -p "$out"
cargo build -q --release --bin todo-api --bin todo-audit --bin todo-load
bin=target/release
nisshi="${NISSHI_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/nisshi-0.8.1/bin/nisshi}"
pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
db=todo_bench
export JWT_SECRET=bench-bench-bench-bench-bench-bench!
export DATABASE_URL="$pg/$db"
export RUST_LOG=warn
broker_port=19092
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$broker_port"
export KAFKA_TOPIC_PARTITIONS=6

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "${KEEP_DB:-}" ]; then
    psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  fi
}
trap cleanup EXIT
sql() { psql -qtA "$DATABASE_URL" -c "$1"; }
wait_http() {
  for _ in $(seq 1 200); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; exit 1
}
now() { date +%s.%N; }

psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"$nisshi" broker --listener-url "tcp://127.0.0.1:$broker_port" \
  --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
  --storage-engine memory://nisshi/ --group-initial-rebalance-delay 0ms \
  >"$out/nisshi.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$broker_port) 2>/dev/null && break; sleep 0.1; done

echo "== 1. POST /tasks, closed loop (32 workers, ${seconds}s)"
PORT=18080 "$bin/todo-api" & api=$!; pids+=($api)
wait_http http://127.0.0.1:18080/ready
"$bin/todo-load" --url http://127.0.0.1:18080 --concurrency 32 --seconds "$seconds" \
  --report "$out/closed-loop.json"

echo "== 2. POST /tasks, open loop at ${rate}/s (${seconds}s)"
"$bin/todo-load" --url http://127.0.0.1:18080 --rate "$rate" --concurrency 512 \
  --seconds "$seconds" --report "$out/open-loop.json"
curl -fs http://127.0.0.1:18080/metrics | grep -E '^todo_outbox_publish_latency_seconds_(sum|count)' || true
kill "$api"; wait "$api" 2>/dev/null || true

echo "== 3. outbox -> broker: a backlog written with the relay off, then drained"
OUTBOX_RELAY_ENABLED=false PORT=18081 "$bin/todo-api" & api=$!; pids+=($api)
wait_http http://127.0.0.1:18081/ready
"$bin/todo-load" --url http://127.0.0.1:18081 --concurrency 32 --seconds 15 --warmup 0 \
  --report "$out/backlog.json" >/dev/null
kill "$api"; wait "$api" 2>/dev/null || true
backlog=$(sql "SELECT count(*) FROM outbox")
PORT=18082 "$bin/todo-api" & api=$!; pids+=($api)
t0=$(now)
while [ "$(sql 'SELECT count(*) FROM outbox')" != 0 ]; do sleep 0.05; done
t1=$(now)
kill "$api"; wait "$api" 2>/dev/null || true
python3 -c "b=$backlog; d=$t1-$t0; print(f'relay drained {b} events in {d:.2f} s (start-up included): {b/d:,.0f} events/s')"

echo "== 4. broker -> todo-audit: every event so far, from the beginning"
total=$(sql "SELECT sum(last_sequence) FROM event_sequences")
PORT=18083 "$bin/todo-audit" & audit=$!; pids+=($audit)
t0=$(now)
while [ "$(sql 'SELECT count(*) FROM audit_events')" != "$total" ]; do sleep 0.1; done
t1=$(now)
rate_store=$(sql "SELECT round(count(*) / extract(epoch FROM max(recorded_at) - min(recorded_at)))
                    FROM audit_events")
python3 -c "n=$total; d=$t1-$t0; print(f'todo-audit stored {n} events in {d:.2f} s (group join included): {n/d:,.0f} events/s; first to last row: $rate_store events/s')"

echo "== 5. API commit -> audit row, at ${rate} creates/s (${seconds}s after 3 s of warm-up), everything running"
PORT=18084 "$bin/todo-api" & api=$!; pids+=($api)
wait_http http://127.0.0.1:18084/ready
since=$(sql "SELECT now()")
"$bin/todo-load" --url http://127.0.0.1:18084 --rate "$rate" --concurrency 512 \
  --seconds "$seconds" --report "$out/end-to-end.json"
total=$(sql "SELECT sum(last_sequence) FROM event_sequences")
while [ "$(sql 'SELECT count(*) FROM audit_events')" != "$total" ]; do sleep 0.1; done
sql "SELECT format('event time -> audit row: p50 %s ms, p99 %s ms, max %s ms over %s events',
            round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 2),
            round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 2),
            round(max(d)::numeric, 2), count(*))
       FROM (SELECT extract(epoch FROM recorded_at - time) * 1000 AS d
               FROM audit_events WHERE time > timestamptz '$since' + interval '3 s') x"
benches/quantiles.py http://127.0.0.1:18084/metrics todo_outbox_publish_latency_seconds
benches/quantiles.py http://127.0.0.1:18083/metrics todo_event_end_to_end_seconds consumer=todo-audit
kill "$api" "$audit"; wait "$api" "$audit" 2>/dev/null || true
