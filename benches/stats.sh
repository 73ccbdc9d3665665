#!/usr/bin/env bash
# GET /stats's two statements for one user with 100,000 events (20,000
# tasks: created, two updates, completed; every tenth deleted; 5,000
# reminders sent) among 400,000 events of other users, over 90 days. Prints
# each statement's median time of 7 runs and its plan. The statements are
# consumers/audit/src/stats/*.sql, the files todo-audit runs.
#   benches/stats.sh            (needs PostgreSQL at 127.0.0.1:5432, user postgres)
set -euo pipefail
cd "$(dirname "$0")/.."
db="todo_stats_bench_$$"
psql=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt)
"${psql[@]}" -c "CREATE DATABASE $db"
trap '"${psql[@]}" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
cargo build -q --release --bin todo-api
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" JWT_SECRET=bench target/release/todo-api migrate >/dev/null
"${psql[@]}" -d "$db" <<'SQL'
-- users u0 (the one measured, 100k events) and u1..u4 (100k each).
-- The log's months for the last 90 days (todo-audit makes them as events
-- arrive; this fills the table directly).
SELECT audit_events_create_partition(now() - m * interval '1 month') FROM generate_series(0, 4) AS m;
INSERT INTO audit_events (event_id, user_id, sequence, event_type, task_id, time, envelope, topic, partition, kafka_offset)
SELECT gen_random_uuid(), 'u' || u, n, kind, task,
       now() - interval '90 days' + (n * interval '77 seconds'),
       jsonb_build_object('type', kind, 'data', jsonb_build_object('task', jsonb_build_object(
           'id', task, 'title', 'task ' || t, 'completed', kind = 'task.completed',
           'due_at', now() - interval '30 days' + (t * interval '5 minutes'),
           'created_at', now() - interval '90 days' + (t * 5 * interval '77 seconds')))),
       'task-events', 0, n
  FROM generate_series(0, 4) AS u,
       generate_series(1, 100000) AS n,
       LATERAL (SELECT (n - 1) / 5 AS t) AS i,
       LATERAL (SELECT md5(u || '-' || t)::uuid AS task,
                       CASE (n - 1) % 5
                         WHEN 0 THEN 'task.created'
                         WHEN 3 THEN 'task.completed'
                         WHEN 4 THEN CASE WHEN t % 10 = 0 THEN 'task.deleted' ELSE 'reminder.sent' END
                         ELSE 'task.updated' END AS kind) AS k;
ANALYZE audit_events;
SQL
# The statements themselves, with the parameters GET /stats binds for the
# last 30 days in Europe/Berlin.
days="PREPARE q(text, text, date, date) AS $(cat consumers/audit/src/stats/days.sql);"
days_args="('u0', 'Europe/Berlin', current_date - 29, current_date)"
state="PREPARE q(text, timestamptz, timestamptz) AS $(cat consumers/audit/src/stats/state.sql);"
state_args="('u0', now() - interval '30 days', now())"
for name in days state; do
  prepare="${!name}"
  args_name="${name}_args"
  execute="EXECUTE q${!args_name}"
  times=()
  for _ in 1 2 3 4 5 6 7; do
    times+=("$("${psql[@]}" -d "$db" -c "$prepare EXPLAIN (ANALYZE, FORMAT JSON) $execute" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])')")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 4p)
  echo "$name: median ${median} ms of 7 runs"
  "${psql[@]}" -d "$db" -c "$prepare EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $execute" | sed 's/^/    /'
done
