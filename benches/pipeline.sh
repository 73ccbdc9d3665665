#!/usr/bin/env bash
# The whole write path on this machine, against a local nisshi broker:
#   0. the broker alone (todo-kafka-baseline: librdkafka with the platform's
#      settings, ~1 KB envelopes): what steps 3 and 4 are ratios to; the
#      broker is restarted empty after it;
#   1. POST /tasks at full speed (closed loop), right after pgbench of the
#      same commit (benches/pgbench.sh): throughput as a ratio to PostgreSQL's;
#   2. POST /tasks at a fixed rate (open loop): latency without coordinated
#      omission;
#   3. outbox -> broker: a backlog written with the relay off, then drained;
#   4. broker -> todo-audit: every event so far, consumed from the start;
#   5. end to end: the API at a fixed rate with the audit running, and the
#      delay from each event's time (its outbox write) to its audit row;
#   6. todo-recurring: completions of recurring tasks, and the delay from a
#      completion to its next instance's task.created;
#   7. todo-notifier: 10,000 reminders due within one minute, and how late
#      each fires (reminder.triggered committed, and the notifier's fired_at,
#      minus remind_at);
#   8. (not in the default steps) todo-realtime: create sent -> its event on
#      a WebSocket, 200 clients, `rate` creates/s;
#   9. (not in the default steps) MCP add_task vs POST /tasks: both at
#      `rate`/2 per second, interleaved, in one open-loop run; p50/p99 of
#      each and their ratio;
#  10. (not in the default steps) reminder channels: 10,000 reminders due
#      within one minute, each to e-mail (aiosmtpd), a webhook that takes
#      HOOK_DELAY_MS (200) and Web Push (todo-sink); lateness of the first
#      attempt and of the delivery, per channel;
#  11. (not in the default steps) API latency for users whose backlog of
#      events todo-notifier is applying (BURST, 40,000), at BURST_RATE (200)/s,
#      against the same users with no consumer running.
# Reports (JSON, and SVG plots of todo-load's latencies) land in target/bench/.
# Usage: [STEPS="5 6"] [KEEP_DB=1] benches/pipeline.sh [rate] [seconds]
#   BASELINE_MESSAGES (100000), REMINDERS (10000), REMINDERS_IN (60 s),
#   REMINDERS_WINDOW (60 s); API_BIN, AUDIT_BIN (benches/common.sh: another
#   build, for a before/after in turns); BROKER_RETENTION_S (step 8's broker
#   retention, 2 s; 0 keeps everything, as nisshi does on its own)
# (later steps run on what earlier ones left: nisshi's memory log slows down
# as it grows, so run a step alone for figures on a fresh broker.)
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-1000}"
seconds="${2:-20}"
steps=" ${STEPS:-0 1 2 3 4 5 6 7} "
cargo build -q --release --bin todo-api --bin todo-audit --bin todo-recurring \
  --bin todo-notifier --bin todo-load --bin todo-kafka-baseline
want() { [[ "$steps" == *" $1 "* ]]; }
if want 8; then cargo build -q --release --bin todo-realtime --bin todo-broker-retention; fi
db=todo_bench broker_port=19092
# shellcheck source=benches/common.sh
source benches/common.sh
sql() { psql -qtA "$DATABASE_URL" -c "$1"; }
now() { date +%s.%N; }
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

# ratio FIGURE FIELD: FIGURE as a multiple of the broker baseline's FIELD
# (when step 0 ran in this run).
ratio() {
  [ -f "$out/.baseline-this-run" ] || return 0
  python3 -c "import json,sys; b=json.load(open('$out/kafka-baseline.json'))['$2']; print(f'  = {$1/b:.2f} x the broker baseline ($2 {b:,.0f}/s)')"
}
fresh_db
: >"$out/nisshi.log"
rm -f "$out/.baseline-this-run"
start_nisshi "$out/nisshi.log"

# ms_quantiles COL: SQL for COL's p50, p99 and max (milliseconds, one
# decimal) as a JSON object.
ms_quantiles() {
  local q="round(percentile_cont(%s) WITHIN GROUP (ORDER BY $1)::numeric, 1)"
  # shellcheck disable=SC2059
  printf "json_build_object('p50', $q, 'p99', $q, 'max', round(max($1)::numeric, 1))" 0.5 0.99
}
# load_reminders NAME [todo-load options]: $n creates, each with a reminder
# due from $lead s on, spread over REMINDERS_WINDOW s; reported in
# $out/NAME-load.json. Sets first (the first reminder's time), window and
# created.
load_reminders() {
  local name=$1
  shift
  "$bin/todo-load" --url $api --concurrency 32 --requests "$n" --warmup 0 --seconds 600 \
    --reminders-in "$lead" --reminders-window "${REMINDERS_WINDOW:-60}" \
    "$@" --report "$out/$name-load.json"
  read -r first window created < <(python3 -c "
import json; r = json.load(open('$out/$name-load.json'))
print(r['reminders']['first_at'], r['reminders']['window_s'], r['latency']['count'])")
}
# wait_count WHAT TARGET SLACK QUERY: polls QUERY (a count) until it reaches
# TARGET, or SLACK s after the last reminder was due; then says how far it got.
wait_count() {
  local what=$1 target=$2 slack=$3 query=$4 got
  local deadline=$(( $(date +%s) + ${lead%.*} + ${window%.*} + slack ))
  while :; do
    got=$(sql "$query")
    [ "$got" -ge "$target" ] && return 0
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "only $got of $target $what in time" >&2; return 0
    fi
    sleep 1
  done
}

if want 0; then
  echo "== 0. the broker alone: librdkafka with the platform's settings, ${BASELINE_MESSAGES:-100000} messages of ~1 KB"
  "$bin/todo-kafka-baseline" --messages "${BASELINE_MESSAGES:-100000}" \
    --report "$out/kafka-baseline.json"
  touch "$out/.baseline-this-run"
  # The later steps start on an empty broker (nisshi slows as its log grows).
  stop nisshi
  start_nisshi "$out/nisshi.log"
fi

api=http://127.0.0.1:18080
if want 1 || want 2; then
  start todo-api 18080
  if want 1; then
    echo "== 1. POST /tasks, closed loop (32 workers, ${seconds}s), after PostgreSQL alone (pgbench, its own database)"
    benches/pgbench.sh 16 "$seconds"
    "$bin/todo-load" --url $api --concurrency 32 --seconds "$seconds" \
      --report "$out/closed-loop.json"
    python3 -c "
import json
api = json.load(open('$out/closed-loop.json'))['throughput_per_s']
pg = json.load(open('$out/pgbench.json'))['best_tps']
print(f'  = {api / pg:.2f} x PostgreSQL alone ({pg:,.0f} tx/s; target 0.6 x)')"
  fi
  if want 2; then
    echo "== 2. POST /tasks, open loop at ${rate}/s (${seconds}s)"
    "$bin/todo-load" --url $api --rate "$rate" --concurrency 512 \
      --seconds "$seconds" --report "$out/open-loop.json"
    benches/quantiles.py $api/metrics todo_outbox_publish_latency_seconds
  fi
  stop todo-api
fi

if want 9; then
  "$bin/todo-api" migrate >/dev/null
  start todo-api 18080
  echo "== 9. MCP add_task vs POST /tasks, open loop at ${rate}/s in all, half each (${seconds}s)"
  "$bin/todo-load" --url $api --rate "$rate" --concurrency 512 --mix create=1,mcp_create=1 \
    --seconds "$seconds" --report "$out/mcp-vs-rest.json"
  python3 -c "
import json
ops = json.load(open('$out/mcp-vs-rest.json'))['by_op']
rest, mcp = ops['create'], ops['mcp_create']
for q in ('p50_ms', 'p99_ms'):
    print(f'  {q[:3]}: MCP {mcp[q]:.2f} ms / REST {rest[q]:.2f} ms = {mcp[q] / rest[q]:.2f} x')"
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
  ratio "$backlog/($t1-$t0)" produce_per_s
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
  ratio "$total/($t1-$t0)" consume_from_start_per_s
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

if want 7; then
  n="${REMINDERS:-10000}"
  lead="${REMINDERS_IN:-60}"
  echo "== 7. reminder lateness: $n reminders due within ${REMINDERS_WINDOW:-60} s, starting ${lead} s from now (todo-api and todo-notifier only)"
  stop todo-audit
  stop todo-recurring
  [ -n "${running[todo-api]:-}" ] || start todo-api 18080
  # Bench-only: each reminder.triggered row, as its transaction commits (a
  # deferred constraint trigger runs at commit), with the notifier's fired_at.
  psql -q "$DATABASE_URL" <<'SQL'
CREATE TABLE IF NOT EXISTS bench_reminder_fired (
    event_id     uuid PRIMARY KEY,
    reminder_id  uuid NOT NULL,
    remind_at    timestamptz NOT NULL,
    fired_at     timestamptz,
    late_ms      bigint,
    committed_at timestamptz NOT NULL
);
TRUNCATE bench_reminder_fired;
CREATE OR REPLACE FUNCTION bench_reminder_fired() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d jsonb := convert_from(NEW.payload, 'UTF8')::jsonb -> 'data';
BEGIN
    INSERT INTO bench_reminder_fired
    VALUES (NEW.event_id, (d->>'reminder_id')::uuid, (d->>'remind_at')::timestamptz,
            (d->>'fired_at')::timestamptz, (d->>'late_ms')::bigint, clock_timestamp())
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_reminder_fired ON outbox;
CREATE CONSTRAINT TRIGGER bench_reminder_fired AFTER INSERT ON outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.event_type = 'reminder.triggered') EXECUTE FUNCTION bench_reminder_fired();
SQL
  # The delivery is a log line: keep it (RUST_LOG as in production for it).
  env PORT=18082 RUST_LOG=warn,reminder=info "$bin/todo-notifier" >"$out/notifier.log" 2>&1 &
  running[todo-notifier]=$!
  wait_http http://127.0.0.1:18082/ready
  caught_up http://127.0.0.1:18082
  load_reminders reminders
  echo "waiting for $created reminders (due from $first, over ${window} s) to fire"
  wait_count "reminders fired" "$created" 180 \
    "SELECT count(*) FROM bench_reminder_fired WHERE remind_at >= timestamptz '$first'"
  sql "SELECT json_build_object(
              'reminders', count(*),
              'created', $created,
              'window_s', $window,
              'committed_minus_remind_at_ms', $(ms_quantiles c),
              'fired_at_minus_remind_at_ms', $(ms_quantiles f))
         FROM (SELECT extract(epoch FROM committed_at - remind_at) * 1000 AS c,
                      extract(epoch FROM fired_at - remind_at) * 1000 AS f
                 FROM bench_reminder_fired WHERE remind_at >= timestamptz '$first') x" \
    >"$out/reminders.json"
  python3 -c "
import json; r = json.load(open('$out/reminders.json'))
c, f = r['committed_minus_remind_at_ms'], r['fired_at_minus_remind_at_ms']
print(f\"reminder lateness over {r['reminders']} of {r['created']} reminders due within {r['window_s']:.0f} s:\")
print(f\"  fired (reminder.triggered committed) - remind_at: p50 {c['p50']} ms, p99 {c['p99']} ms, max {c['max']} ms\")
print(f\"  the notifier's fired_at - remind_at (late_ms):   p50 {f['p50']} ms, p99 {f['p99']} ms, max {f['max']} ms\")
print('report: $out/reminders.json')"
  sql "DROP TRIGGER bench_reminder_fired ON outbox"
  stop todo-notifier
fi

if want 8; then
  echo "== 8. create sent -> its event on a WebSocket (todo-realtime), 200 clients, ${rate} creates/s (${seconds}s)"
  [ -n "${running[todo-api]:-}" ] || start todo-api 18080
  ulimit -n "$(ulimit -Hn)"
  start todo-realtime 18084
  # The broker keeps BROKER_RETENTION_S (2) seconds: todo-realtime reads
  # milliseconds behind, and has no group to wait for.
  start_broker_retention "${BROKER_RETENTION_S:-2}"
  "$bin/todo-load" --url $api --rate "$rate" --concurrency 256 --users 200 \
    --mix create=1 --seconds "$seconds" \
    --ws-clients 200 --ws-url ws://127.0.0.1:18084/ws --report "$out/websocket.json"
  stop todo-realtime
  stop todo-broker-retention
fi

if want 10; then
  n="${REMINDERS:-10000}"
  lead="${REMINDERS_IN:-60}"
  echo "== 10. reminder channels: $n reminders due within ${REMINDERS_WINDOW:-60} s, each to e-mail (aiosmtpd), a webhook (+${HOOK_DELAY_MS:-200} ms) and Web Push"
  cargo build -q --release --bin todo-sink
  stop todo-audit
  stop todo-recurring
  stop todo-api
  HOOK_DELAY_MS="${HOOK_DELAY_MS:-200}" start_receivers
  export WEBHOOK_SECRET_KEY=bench-webhook-key-bench-webhook-key-0001
  start todo-api 18080 VAPID_PUBLIC_KEY="$vapid_public"
  env PORT=18082 SMTP_URL="smtp://127.0.0.1:$smtp_port" VAPID_PRIVATE_KEY="$vapid_private" \
    WEBHOOK_ALLOW_PRIVATE_NETWORKS=true REMINDER_CHANNEL_CONCURRENCY="${CHANNEL_CONCURRENCY:-256}" \
    "$bin/todo-notifier" >"$out/notifier.log" 2>&1 &
  running[todo-notifier]=$!
  wait_http http://127.0.0.1:18082/ready
  caught_up http://127.0.0.1:18082
  load_reminders channels --channels http://127.0.0.1:18099
  echo "waiting for $created reminders x 3 channels (due from $first, over ${window} s) to be delivered"
  wait_count "deliveries done" $(( created * 3 )) 300 \
    "SELECT count(*) FROM reminder_deliveries WHERE state <> 'pending'"
  sql "SELECT json_object_agg(channel, j) FROM (
         SELECT channel, json_build_object(
                  'deliveries', count(*),
                  'sent', count(*) FILTER (WHERE state = 'sent'),
                  'attempts_max', max(attempts),
                  'first_attempt_minus_remind_at_ms', $(ms_quantiles f),
                  'delivered_minus_remind_at_ms', $(ms_quantiles d)) AS j
           FROM (SELECT channel, state, attempts,
                        extract(epoch FROM first_attempt_at - (reminder->>'remind_at')::timestamptz) * 1000 AS f,
                        extract(epoch FROM done_at - (reminder->>'remind_at')::timestamptz) * 1000 AS d
                   FROM reminder_deliveries) x
          GROUP BY channel) y" >"$out/channels.json"
  python3 -c "
import json; r = json.load(open('$out/channels.json'))
for ch, v in sorted(r.items()):
    f, d = v['first_attempt_minus_remind_at_ms'], v['delivered_minus_remind_at_ms']
    print(f\"{ch:8} {v['sent']}/{v['deliveries']} sent (max {v['attempts_max']} attempts); first attempt - remind_at: p50 {f['p50']} ms, p99 {f['p99']} ms, max {f['max']} ms; delivered - remind_at: p50 {d['p50']} ms, p99 {d['p99']} ms\")
print('report: $out/channels.json; the sink: ' + open('/dev/stdin').read().strip())" < <(curl -fs http://127.0.0.1:18099/stats)
  echo "e-mails accepted by aiosmtpd: $(grep -c '"to"' "$out/smtp.log" || true)"
  stop todo-notifier
  stop todo-sink
  stop smtp
  stop smtp-stdin
  rm -f "$out/smtp.fifo"
fi

if want 11; then
  burst="${BURST:-40000}"
  brate="${BURST_RATE:-200}"
  echo "== 11. API latency for users whose backlog of $burst events todo-notifier is applying, at ${brate} creates/s, against the same users with no consumer running"
  stop todo-audit
  stop todo-recurring
  stop todo-notifier
  [ -n "${running[todo-api]:-}" ] || start todo-api 18080
  prefix="burst-$$"
  # The backlog: creates with a reminder a day ahead (scheduled, never
  # fired), written while no notifier runs.
  "$bin/todo-load" --url $api --concurrency 32 --users 200 --user-prefix "$prefix" \
    --requests "$burst" --warmup 0 --seconds 600 --reminders-in 86400 \
    --report "$out/burst-backlog.json" >/dev/null
  "$bin/todo-load" --url $api --rate "$brate" --concurrency 64 --users 200 --user-prefix "$prefix" \
    --warmup 1 --seconds 10 --report "$out/burst-quiet.json"
  env PORT=18082 "$bin/todo-notifier" >"$out/notifier.log" 2>&1 &
  running[todo-notifier]=$!
  wait_http http://127.0.0.1:18082/ready
  "$bin/todo-load" --url $api --rate "$brate" --concurrency 64 --users 200 --user-prefix "$prefix" \
    --warmup 0 --seconds 10 --report "$out/burst-busy.json"
  # How much of the backlog the notifier applied while the creates were
  # measured: the backlog's reminders it has scheduled (its lag metric
  # cannot tell: it reads 0 before the first fetch; the measured creates
  # carry no reminder).
  applied=$(sql "SELECT count(*) FROM reminders WHERE user_id LIKE '$prefix-%'")
  python3 -c "
import json
q, b = (json.load(open(f'$out/burst-{n}.json'))['latency'] for n in ('quiet', 'busy'))
print(f\"same users, {$brate}/s: no consumer p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms; during the burst p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms ({b['p99_ms']/q['p99_ms']:.2f} x)\")
print(f'while they were measured the notifier applied $applied of the $burst backlog events')"
  stop todo-notifier
fi
