#!/usr/bin/env bash
# The whole write path on this machine, against a local nisshi broker:
#   1. POST /tasks at full speed (closed loop): the throughput ceiling;
#   2. POST /tasks at a fixed rate (open loop): latency without coordinated
#      omission;
#   3. outbox -> broker: a backlog written with the relay off, then drained;
#   4. broker -> todo-audit: every event so far, consumed from the start;
#   5. end to end: the API at a fixed rate with the audit running, and the
#      delay from each event's time (its outbox write) to its audit row;
#   6. todo-recurring: completions of recurring tasks, and the delay from a
#      completion to its next instance's task.created.
# Reports land in target/bench/.
# Usage: [STEPS="5 6"] [KEEP_DB=1] benches/pipeline.sh [rate] [seconds]
# (later steps run on what earlier ones left: nisshi's memory log slows down
# as it grows, so run a step alone for figures on a fresh broker.)
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-1000}"
seconds="${2:-20}"
steps=" ${STEPS:-1 2 3 4 5 6} "
out=target/bench
mkdir -p "$out"
cargo build -q --release --bin todo-api --bin todo-audit --bin todo-recurring --bin todo-load
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

declare -A running=()
cleanup() {
  for p in "${running[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "${KEEP_DB:-}" ]; then
    psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  fi
}
trap cleanup EXIT
want() { [[ "$steps" == *" $1 "* ]]; }
sql() { psql -qtA "$DATABASE_URL" -c "$1"; }
now() { date +%s.%N; }
wait_http() {
  for _ in $(seq 1 200); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; exit 1
}
# start NAME PORT [VAR=value ...]: runs target/release/NAME on PORT until stop.
start() {
  local name=$1 port=$2; shift 2
  env PORT="$port" "$@" "$bin/$name" &
  running[$name]=$!
  wait_http "http://127.0.0.1:$port/ready"
}
stop() {
  local pid=${running[$1]:-}
  if [ -n "$pid" ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; unset "running[$1]"; fi
}
# Waits until a consumer has partitions and no known lag (its /metrics; lag is
# reported every second, and not at all for partitions with nothing to read).
caught_up() {
  for _ in $(seq 1 600); do
    if curl -fs "$1/metrics" | python3 -c '
import sys
lines = [l for l in sys.stdin if l.startswith(("todo_consumer_lag{", "todo_consumer_assigned_partitions{"))]
lag = [float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith("todo_consumer_lag{")]
assigned = [float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith("todo_consumer_assigned")]
sys.exit(0 if sum(assigned) > 0 and sum(lag) == 0 else 1)'; then return 0; fi
    sleep 0.5
  done
  echo "$1 did not catch up" >&2; exit 1
}

psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
"$nisshi" broker --listener-url "tcp://127.0.0.1:$broker_port" \
  --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
  --storage-engine memory://nisshi/ --group-initial-rebalance-delay 0ms \
  >"$out/nisshi.log" 2>&1 &
running[nisshi]=$!
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/$broker_port) 2>/dev/null && break; sleep 0.1; done

api=http://127.0.0.1:18080
if want 1 || want 2; then
  start todo-api 18080
  if want 1; then
    echo "== 1. POST /tasks, closed loop (32 workers, ${seconds}s)"
    "$bin/todo-load" --url $api --concurrency 32 --seconds "$seconds" \
      --report "$out/closed-loop.json"
  fi
  if want 2; then
    echo "== 2. POST /tasks, open loop at ${rate}/s (${seconds}s)"
    "$bin/todo-load" --url $api --rate "$rate" --concurrency 512 \
      --seconds "$seconds" --report "$out/open-loop.json"
    benches/quantiles.py $api/metrics todo_outbox_publish_latency_seconds
  fi
  stop todo-api
fi

if want 3; then
  echo "== 3. outbox -> broker: a backlog written with the relay off, then drained"
  start todo-api 18080 OUTBOX_RELAY_ENABLED=false
  "$bin/todo-load" --url $api --concurrency 32 --seconds 15 --warmup 0 \
    --report "$out/backlog.json" >/dev/null
  stop todo-api
  backlog=$(sql "SELECT count(*) FROM outbox")
  t0=$(now)
  start todo-api 18080
  while [ "$(sql 'SELECT count(*) FROM outbox')" != 0 ]; do sleep 0.05; done
  t1=$(now)
  stop todo-api
  python3 -c "b=$backlog; d=$t1-$t0; print(f'relay drained {b} events in {d:.2f} s (start-up included): {b/d:,.0f} events/s')"
fi

if want 4; then
  echo "== 4. broker -> todo-audit: every event so far, from the beginning"
  total=$(sql "SELECT coalesce(sum(last_sequence), 0) FROM event_sequences")
  t0=$(now)
  start todo-audit 18083
  while [ "$(sql 'SELECT count(*) FROM audit_events')" != "$total" ]; do sleep 0.1; done
  t1=$(now)
  per_s=$(sql "SELECT round(count(*) / extract(epoch FROM max(recorded_at) - min(recorded_at)))
                 FROM audit_events")
  python3 -c "n=$total; d=$t1-$t0; print(f'todo-audit stored {n} events in {d:.2f} s (start-up and group join included): {n/d:,.0f} events/s; first to last row: $per_s events/s')"
fi

if want 5 || want 6; then
  [ -n "${running[todo-api]:-}" ] || start todo-api 18080
  [ -n "${running[todo-audit]:-}" ] || start todo-audit 18083
  caught_up http://127.0.0.1:18083
fi

if want 5; then
  echo "== 5. API commit -> audit row, at ${rate} creates/s (${seconds}s after 3 s of warm-up), everything running"
  since=$(sql "SELECT now()")
  "$bin/todo-load" --url $api --rate "$rate" --concurrency 512 \
    --seconds "$seconds" --report "$out/end-to-end.json"
  total=$(sql "SELECT sum(last_sequence) FROM event_sequences")
  while [ "$(sql 'SELECT count(*) FROM audit_events')" != "$total" ]; do sleep 0.1; done
  sql "SELECT format('event time -> audit row: p50 %s ms, p99 %s ms, max %s ms over %s events',
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 2),
              round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 2),
              round(max(d)::numeric, 2), count(*))
         FROM (SELECT extract(epoch FROM recorded_at - time) * 1000 AS d
                 FROM audit_events WHERE time > timestamptz '$since' + interval '3 s') x"
fi

if want 6; then
  echo "== 6. completion -> next instance (todo-recurring), 200 changes/s, half of them completions"
  start todo-recurring 18081
  caught_up http://127.0.0.1:18081
  since=$(sql "SELECT now()")
  "$bin/todo-load" --url $api --rate 200 --concurrency 256 --recurring \
    --mix create=1,complete=1 --seconds "$seconds" --report "$out/recurring.json"
  total=$(sql "SELECT sum(last_sequence) FROM event_sequences")
  while [ "$(sql 'SELECT count(*) FROM audit_events')" != "$total" ]; do sleep 0.1; done
  sql "SELECT format('completion -> next task.created: p50 %s ms, p99 %s ms, max %s ms over %s instances; -> its audit row: p50 %s ms, p99 %s ms',
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 1),
              round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1),
              round(max(d)::numeric, 1), count(*),
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY r)::numeric, 1),
              round(percentile_cont(0.99) WITHIN GROUP (ORDER BY r)::numeric, 1))
         FROM (SELECT extract(epoch FROM n.time - c.time) * 1000 AS d,
                      extract(epoch FROM n.recorded_at - c.time) * 1000 AS r
                 FROM audit_events n
                 JOIN audit_events c ON c.event_id = (n.envelope->>'causationid')::uuid
                WHERE n.event_type = 'task.created' AND n.envelope->>'source' = 'todo-recurring'
                  AND c.time > timestamptz '$since' + interval '3 s') x"
fi
