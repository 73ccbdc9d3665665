#!/usr/bin/env bash
# PostgreSQL's own commit rate for what one `POST /tasks` commits (task +
# event sequence + outbox row in one transaction): the ceiling todo-api is
# measured against. Three shapes of the same commit: the statements one by
# one (create_task.sql), one statement between BEGIN and COMMIT
# (create_task_one_statement.sql, as todo-api sends a create with an
# Idempotency-Key), and that statement alone (create_task_statement_alone.sql,
# as todo-api sends one without); the fastest is the ceiling.
# Usage: benches/pgbench.sh [clients] [seconds] [script...]
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-16}"
seconds="${2:-20}"
shift $(( $# < 2 ? $# : 2 ))
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=(benches/pgbench/create_task.sql benches/pgbench/create_task_one_statement.sql
  benches/pgbench/create_task_statement_alone.sql)
pg="${PGBENCH_URL:-postgres://postgres@127.0.0.1:5432}"
db="todo_pgbench"
psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
DATABASE_URL="$pg/$db" JWT_SECRET=pgbench-pgbench-pgbench-pgbench! \
  cargo run -q --release --bin todo-api -- migrate >/dev/null
mkdir -p target/bench
rows=()
for script in "${scripts[@]}"; do
  echo "== pgbench $script ($clients clients, ${seconds}s)"
  result=$(pgbench "$pg/$db" -n -M prepared -c "$clients" -j 2 -T "$seconds" \
    -D users=200 -f "$script" 2>&1) || { echo "$result" >&2; exit 1; }
  grep -E "latency average|^tps" <<<"$result"
  rows+=("$script $(awk '/^tps/ {print $3}' <<<"$result")")
done
# target/bench/pgbench.json: tps per script and the best, the ceiling.
printf '%s\n' "${rows[@]}" | python3 -c "
import json, sys
tps = {s: float(t) for s, t in (l.split() for l in sys.stdin if l.strip())}
json.dump({'clients': $clients, 'seconds': $seconds, 'tps': tps, 'best_tps': max(tps.values())},
          open('target/bench/pgbench.json', 'w'), indent=2)"
psql -q "$pg/postgres" -c "DROP DATABASE $db"
