#!/usr/bin/env bash
# The soak: every service running (todo-api with its relay, todo-audit,
# todo-recurring, todo-notifier, todo-realtime), todo-load at RATE changes/s
# for SECONDS, with every retention set to minutes, and every table's row
# count and size sampled every SAMPLE_SECS. Answers: does anything grow
# that should not?
#
# Usage: [SAMPLE_SECS=30] [RETENTION_MINUTES=3] [WS_GRACE=300] [BROKER_RETENTION_S=30]
#        benches/soak.sh [rate] [seconds]
# BROKER_RETENTION_S: how long the broker keeps what every consumer group
# has committed (benches/common.sh; 0 keeps everything).
# WS_GRACE: seconds the WebSocket clients wait after the load for events
# still on their way (the consumers may be minutes behind by then), before
# what has not come counts as missing.
# Needs the broker (scripts/install-broker.sh) and aiosmtpd's virtualenv
# (scripts/test.sh prepares it; TEST_SMTP_PYTHON points elsewhere).
# Writes target/bench/soak/: tables.csv (elapsed s, table, rows, bytes),
# load.json + load.svg (todo-load's report and latency plot, p99 per
# second), tables.svg (rows and size over time, from benches/soak_plot.py),
# vacuum.csv (dead rows and vacuums per table), consumers.csv (each
# consumer's lag and event ages) and the services' logs.
#
# The load: creates, renames, completions, deletes (a delete takes a
# completed task first) and lists (which hand the instances todo-recurring
# creates to the generator), every task recurring daily on completion and
# with a reminder due 30-90 s after it is created, delivered by e-mail,
# webhook and Web Push; 200 users, 50 of them watching on a WebSocket.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-300}"
seconds="${2:-3600}"
sample="${SAMPLE_SECS:-30}"
minutes="${RETENTION_MINUTES:-3}"
out=target/bench/soak
cargo build -q --release --bin todo-api --bin todo-audit --bin todo-recurring \
  --bin todo-notifier --bin todo-realtime --bin todo-load --bin todo-sink --bin todo-broker-retention
db=todo_soak broker_port=19093
# shellcheck source=benches/common.sh
source benches/common.sh
fresh_db

# A production server runs autovacuum (PostgreSQL's default; the compose
# image's and Render's too); without it no table but the outbox (which the
# relay vacuums) reuses the space of deleted rows, and every churned table
# grows on disk at level row counts. This machine's server has it off
# (conf.d/90-ci.conf), so the soak turns it on for its run, as ALTER SYSTEM
# (that is, the whole server), and resets it as it ends.
if [ "$(psql -qtA "$pg/postgres" -c 'SHOW autovacuum')" = off ]; then
  echo "== autovacuum is off on this server: on for the soak, reset after it"
  psql -qtA "$pg/postgres" -c "ALTER SYSTEM SET autovacuum = on" -c "SELECT pg_reload_conf()" >/dev/null
  trap 'cleanup; psql -qtA "$pg/postgres" -c "ALTER SYSTEM RESET autovacuum" -c "SELECT pg_reload_conf()" >/dev/null' EXIT
fi
: >"$out/nisshi.log"
start_nisshi "$out/nisshi.log"

# Where reminders go: e-mail to aiosmtpd, webhooks and Web Push to todo-sink.
start_receivers
export WEBHOOK_SECRET_KEY=soak-webhook-key-soak-webhook-key-00001

# Retention in minutes: the settings take fractions of their unit.
hours=$(python3 -c "print($minutes / 60)")
days=$(python3 -c "print($minutes / 1440)")
export CONSUMER_DEDUP_RETENTION_HOURS="$hours"
start todo-api 18080 VAPID_PUBLIC_KEY="$vapid_public" >"$out/todo-api.log" 2>&1
start todo-audit 18083 AUDIT_RETENTION_MONTHS=1 >"$out/todo-audit.log" 2>&1
start todo-recurring 18081 RECURRING_RETENTION_DAYS="$days" >"$out/todo-recurring.log" 2>&1
start todo-notifier 18082 REMINDER_RETENTION_DAYS="$days" SMTP_URL="smtp://127.0.0.1:$smtp_port" \
  VAPID_PRIVATE_KEY="$vapid_private" WEBHOOK_ALLOW_PRIVATE_NETWORKS=true >"$out/todo-notifier.log" 2>&1
start todo-realtime 18084 >"$out/todo-realtime.log" 2>&1
# The broker keeps BROKER_RETENTION_S (30) seconds (benches/common.sh),
# never past what a consumer group has committed; todo-realtime, which has
# no group, must stay within it.
start_broker_retention "${BROKER_RETENTION_S:-30}" todo-audit todo-recurring todo-notifier

# Every table (a partitioned one as the sum of its partitions), exactly.
sample_tables() {
  local elapsed=$1
  psql -qtA -F, "$DATABASE_URL" <<SQL | sed "s/^/$elapsed,/" >>"$out/tables.csv"
SELECT c.relname,
       (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM %I', c.relname), false, true, '')))[1]::text::bigint,
       CASE c.relkind WHEN 'p' THEN (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(c.oid))
                      ELSE pg_total_relation_size(c.oid) END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND c.relname <> '_sqlx_migrations'
 ORDER BY c.relname;
SQL
}
# Why a table's size moves: its dead rows and how often it was vacuumed.
sample_vacuum() {
  psql -qtA -F, "$DATABASE_URL" -c "SELECT relname, n_live_tup, n_dead_tup,
      autovacuum_count + vacuum_count FROM pg_stat_user_tables ORDER BY relname" \
    | sed "s/^/$1,/" >>"$out/vacuum.csv"
}
# Whether each consumer keeps up: its lag (messages behind, summed over
# partitions; empty for todo-realtime, which commits nothing, so librdkafka
# reports none) and the sum
# and count of its commit-to-effect ages (their deltas give the mean age of
# each interval's events).
sample_consumers() {
  local name port
  for name in todo-recurring:18081 todo-notifier:18082 todo-audit:18083 todo-realtime:18084; do
    port=${name#*:}
    curl -fs "http://127.0.0.1:$port/metrics" | awk -v t="$1" -v svc="${name%:*}" '
      /^todo_consumer_lag\{/ { lag += $NF; seen = 1 }
      /^todo_event_end_to_end_seconds_sum\{/ { sum = $NF }
      /^todo_event_end_to_end_seconds_count\{/ { count = $NF }
      END { printf "%s,%s,%s,%s,%s\n", t, svc, (seen ? lag : ""), sum + 0, count + 0 }' >>"$out/consumers.csv" || true
  done
  # The relay (whichever of the three leads): its backlog as the lag, and
  # commit-to-acknowledgement as the age.
  for port in 18080 18081 18082; do curl -fs "http://127.0.0.1:$port/metrics" || true; done | awk -v t="$1" '
    /^todo_outbox_backlog / { lag += $NF }
    /^todo_outbox_publish_latency_seconds_sum / { sum += $NF }
    /^todo_outbox_publish_latency_seconds_count / { count += $NF }
    END { printf "%s,relay,%d,%s,%s\n", t, lag, sum + 0, count + 0 }' >>"$out/consumers.csv"
}
sample() {
  sample_tables "$1"
  sample_vacuum "$1"
  sample_consumers "$1"
}
echo "elapsed_s,table,rows,bytes" >"$out/tables.csv"
echo "elapsed_s,table,live,dead,vacuums" >"$out/vacuum.csv"
echo "elapsed_s,service,lag,age_sum_s,age_count" >"$out/consumers.csv"
sample 0
(
  start_s=$(date +%s)
  while sleep "$sample"; do
    sample $(( $(date +%s) - start_s ))
  done
) &
running[sampler]=$!

echo "== soak: $rate changes/s for $seconds s, retention $minutes min (dedup, reminders, series)"
"$bin/todo-load" --url http://127.0.0.1:18080 --rate "$rate" --seconds "$seconds" \
  --warmup 0 --users 200 --recurring --reminders-after 30 --reminders-window 60 \
  --mix create=2,update=3,complete=2,delete=5,list=1 \
  --channels http://127.0.0.1:18099 --ws-clients 50 --ws-url ws://127.0.0.1:18084/ws \
  --ws-grace "${WS_GRACE:-300}" \
  --report "$out/load.json" --plot "$out/load.svg"
stop sampler
sample "$seconds"
python3 benches/soak_plot.py "$out/tables.csv" "$out/load.json" "$out/tables.svg"
python3 benches/soak_consumers.py "$out/consumers.csv" 300
