#!/usr/bin/env bash
# todo-audit replay over a large log: fills a fresh database with EVENTS
# task events (EVENTS/5 tasks of 1,000 users, each created and changed four
# times, as the audit stores them) and the tasks table they lead to, then
# runs `todo-audit replay` and reports its wall time and peak RSS (from
# wait4's rusage, via /usr/bin/time). The replay must come out clean.
#
# Usage: [EVENTS=1000000] [BIN_DIR=target/release] benches/replay.sh [label]
# OTHER_AUDIT_BIN=path runs a second binary over the same data (e.g. an
# older build) and reports it beside. JSON: target/bench/replay.json.
set -euo pipefail
cd "$(dirname "$0")/.."
events="${EVENTS:-1000000}"
label="${1:-replay}"
db=todo_replay broker_port=19193
# shellcheck source=benches/common.sh
source benches/common.sh
# BIN_DIR: where todo-api and todo-audit are (default: build them here).
if [ -n "${BIN_DIR:-}" ]; then
  bin=$BIN_DIR
else
  cargo build -q --release --bin todo-api --bin todo-audit
fi
audit="$bin/todo-audit"
fresh_db

tasks=$((events / 5))
echo "filling $events events of $tasks tasks"
start_fill=$(date +%s.%N)
psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" <<SQL
-- Version v of task t, as the events carry it.
CREATE FUNCTION bench_state(t bigint, v int) RETURNS jsonb LANGUAGE sql IMMUTABLE AS \$\$
  SELECT jsonb_build_object(
    'id', md5('task' || t)::uuid, 'title', 'task ' || t || ' version ' || v,
    'description', 'what task ' || t || ' is about', 'priority', 'medium',
    'tags', jsonb_build_array('bench'), 'completed', false, 'completed_at', null,
    'due_at', null, 'recurrence', null, 'reminders', '[]'::jsonb, 'series_id', null,
    'series_start', null, 'next_occurrence', null, 'version', v,
    'created_at', '2026-12-01T00:00:00Z', 'updated_at', '2026-12-01T00:00:00Z')
\$\$;
INSERT INTO audit_events (event_id, user_id, sequence, event_type, task_id, time, envelope,
                          topic, partition, kafka_offset)
SELECT gen_random_uuid(), 'user' || (t % 1000), (t / 1000) * 5 + v,
       CASE WHEN v = 1 THEN 'task.created' ELSE 'task.updated' END,
       md5('task' || t)::uuid, now(),
       jsonb_build_object(
         'specversion', '1.0', 'id', gen_random_uuid(),
         'type', CASE WHEN v = 1 THEN 'task.created' ELSE 'task.updated' END,
         'source', 'todo-api', 'time', now(), 'subject', md5('task' || t)::uuid,
         'datacontenttype', 'application/json', 'dataschema', 'task-event/v1',
         'userid', 'user' || (t % 1000), 'correlationid', gen_random_uuid(),
         'sequence', (t / 1000) * 5 + v,
         'data', CASE WHEN v = 1 THEN jsonb_build_object('task', bench_state(t, v))
                      ELSE jsonb_build_object('task', bench_state(t, v),
                                              'previous', bench_state(t, v - 1),
                                              'changed', jsonb_build_array('title')) END),
       'task-events', 0, t * 5 + v
  FROM generate_series(0, $tasks - 1) AS t, generate_series(1, 5) AS v;
INSERT INTO tasks (id, user_id, title, description, priority, tags, version, created_at, updated_at)
SELECT md5('task' || t)::uuid, 'user' || (t % 1000), 'task ' || t || ' version 5',
       'what task ' || t || ' is about', 'medium', ARRAY['bench'], 5,
       '2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z'
  FROM generate_series(0, $tasks - 1) AS t;
VACUUM ANALYZE audit_events;
VACUUM ANALYZE tasks;
SQL
fill=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start_fill }")
size=$(psql -tA "$DATABASE_URL" -c "SELECT pg_size_pretty(pg_total_relation_size('audit_events'))")
echo "filled in ${fill} s; audit_events is $size"

# run NAME BINARY ARGS...: wall seconds and peak RSS of one replay.
results=()
run() {
  local name=$1 binary=$2; shift 2
  local report="$out/replay-$name.txt"
  /usr/bin/time -f "%e %M" -o "$out/replay-$name.time" "$binary" replay "$@" >"$report"
  read -r wall rss <"$out/replay-$name.time"
  tail -1 "$report"
  grep -q " 0 difference(s)" "$report" || { echo "$name: the replay was not clean" >&2; exit 1; }
  echo "$name: ${wall} s, peak RSS $((rss / 1024)) MiB"
  results+=("{\"run\":\"$name\",\"wall_s\":$wall,\"peak_rss_kib\":$rss}")
}
if [ -n "${OTHER_AUDIT_BIN:-}" ]; then
  run other "$OTHER_AUDIT_BIN"
fi
run "$label" "$audit"
if "$audit" --help | grep -q snapshot; then
  /usr/bin/time -f "%e %M" -o "$out/replay-snapshot.time" "$audit" snapshot >"$out/replay-snapshot.txt"
  read -r wall rss <"$out/replay-snapshot.time"
  echo "snapshot: ${wall} s, peak RSS $((rss / 1024)) MiB ($(tail -1 "$out/replay-snapshot.txt"))"
  results+=("{\"run\":\"snapshot\",\"wall_s\":$wall,\"peak_rss_kib\":$rss}")
  run "$label-from-snapshot" "$audit" --from-snapshot
  # Then AFTER more changes (a sixth version of the first AFTER tasks), as
  # a log goes on after its snapshot: from the snapshot only they are folded.
  after="${AFTER:-$((events / 10))}"
  psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" <<SQL
INSERT INTO audit_events (event_id, user_id, sequence, event_type, task_id, time, envelope,
                          topic, partition, kafka_offset)
SELECT gen_random_uuid(), 'user' || (t % 1000), ($tasks / 1000) * 5 + (t / 1000) + 1,
       'task.updated', md5('task' || t)::uuid, now(),
       jsonb_build_object('type', 'task.updated', 'userid', 'user' || (t % 1000),
         'data', jsonb_build_object('task', bench_state(t, 6), 'previous', bench_state(t, 5),
                                    'changed', jsonb_build_array('title'))),
       'task-events', 0, $events + t
  FROM generate_series(0, $after - 1) AS t;
UPDATE tasks SET title = 'task ' || t || ' version 6', version = 6
  FROM generate_series(0, $after - 1) AS t
 WHERE id = md5('task' || t)::uuid;
SQL
  run "$label-whole-log-later" "$audit"
  run "$label-from-snapshot-later" "$audit" --from-snapshot
fi
printf '{"events":%s,"tasks":%s,"fill_s":%s,"runs":[%s]}\n' "$events" "$tasks" "$fill" \
  "$(IFS=,; echo "${results[*]}")" >"$out/replay.json"
echo "wrote $out/replay.json"
