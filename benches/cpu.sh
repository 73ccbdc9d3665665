#!/usr/bin/env bash
# CPU per create, by process: where a `POST /tasks` spends the machine, in
# variants that each take one suspect away (issue 19: PostgreSQL spent
# 0.47 ms per create against 0.33 ms for pgbench's commit of the same rows).
#   api          todo-api as deployed (relay on, TLS to PostgreSQL as
#                sqlx's default `prefer` gets it from a server with ssl on);
#   api-norelay  the relay off: what its reads, deletes and vacuum cost;
#   api-notls    `sslmode=disable`: what TLS on loopback costs;
#   pgbench      PostgreSQL alone, the same commit in one statement, sent
#                as todo-api sends a create without an Idempotency-Key (no
#                BEGIN/COMMIT; PGBENCH_SCRIPT picks another; TLS as libpq's
#                `prefer` gets it), and pgbench-notls without TLS.
# Each variant: a closed loop (32 workers, or 16 pgbench clients) for
# SECONDS after a warm-up; CPU from /proc/<pid>/stat (user + system) of
# every process by name over the measured seconds, divided by the creates
# committed meanwhile (the users' event sequences). On 2 shared cores the
# processes compete: compare variants of one run.
# Usage: [VARIANTS="api api-norelay"] [API_BIN=path] benches/cpu.sh [seconds]
# Report: target/bench/cpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
variants="${VARIANTS:-api api-norelay api-notls pgbench pgbench-notls}"
cargo build -q --release --bin todo-api --bin todo-load
db=todo_cpu broker_port=19093
# shellcheck source=benches/common.sh
source benches/common.sh
api=http://127.0.0.1:18090
report="$out/cpu.json"
: >"$out/cpu.lines"

# Clock ticks used so far by every process, summed by command name.
# todo-api is counted under its own name also when API_BIN runs another
# build (the kernel keeps the first 15 bytes of a program's name).
api_comm=$(basename "$(binary todo-api)" | cut -c1-15)
ticks() {
  API_COMM="$api_comm" python3 - <<'EOF'
import json, os
by = {}
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        stat = open(f'/proc/{pid}/stat').read()
    except OSError:
        continue
    name = stat[stat.index('(') + 1:stat.rindex(')')]
    if name == os.environ['API_COMM']:
        name = 'todo-api'
    fields = stat[stat.rindex(')') + 2:].split()
    by[name] = by.get(name, 0) + int(fields[11]) + int(fields[12])
print(json.dumps(by))
EOF
}
creates() { psql -Atq "$DATABASE_URL" -c "SELECT coalesce(sum(last_sequence), 0) FROM event_sequences"; }

# measure LABEL: samples around `seconds` of whatever load is running.
measure() {
  local before after n0 n1
  before=$(ticks); n0=$(creates)
  sleep "$seconds"
  after=$(ticks); n1=$(creates)
  python3 - "$1" "$n0" "$n1" "$before" "$after" "$(getconf CLK_TCK)" "$seconds" <<'EOF' | tee -a "$out/cpu.lines"
import json, sys
label, n0, n1, before, after, hz, seconds = sys.argv[1:]
n = int(n1) - int(n0)
before, after = json.loads(before), json.loads(after)
hz, seconds = int(hz), float(seconds)
ms = {}
for proc in ('postgres', 'todo-api', 'todo-load', 'nisshi', 'pgbench'):
    used = (after.get(proc, 0) - before.get(proc, 0)) / hz
    if used > 0:
        ms[proc] = {'cores': round(used / seconds, 2), 'ms_per_create': round(used * 1000 / n, 3)}
print(json.dumps({'variant': label, 'creates_per_s': round(n / seconds), 'cpu': ms}))
EOF
}

start_nisshi "$out/cpu-nisshi.log"
for variant in $variants; do
  fresh_db
  url=$DATABASE_URL
  case $variant in
    *-notls) url="$DATABASE_URL?sslmode=disable" ;;
  esac
  case $variant in
    api*)
      relay=true
      [ "$variant" = api-norelay ] && relay=false
      start todo-api 18090 DATABASE_URL="$url" OUTBOX_RELAY_ENABLED=$relay
      "$bin/todo-load" --url $api --concurrency 32 --warmup 0 --seconds $((seconds + 5)) \
        --report "$out/cpu-$variant-load.json" >/dev/null &
      load=$!
      sleep 3
      measure "$variant"
      wait "$load"
      stop todo-api
      ;;
    pgbench*)
      pgbench "$url" -n -M prepared -c 16 -j 2 -T $((seconds + 5)) -D users=200 \
        -f "${PGBENCH_SCRIPT:-benches/pgbench/create_task_statement_alone.sql}" >/dev/null 2>&1 &
      load=$!
      sleep 3
      measure "$variant"
      wait "$load"
      ;;
  esac
done
python3 -c "
import json
rows = [json.loads(l) for l in open('$out/cpu.lines')]
json.dump(rows, open('$report', 'w'), indent=2)"
echo "report: $report"
