#!/usr/bin/env bash
# PostgreSQL's own commit rate for what one `POST /tasks` commits (task +
# event sequence + outbox row in one transaction): the ceiling todo-api is
# measured against. Usage: benches/pgbench.sh [clients] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-16}"
seconds="${2:-20}"
pg="${PGBENCH_URL:-postgres://postgres@127.0.0.1:5432}"
db="todo_pgbench"
psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
DATABASE_URL="$pg/$db" JWT_SECRET=pgbench-pgbench-pgbench-pgbench! \
  cargo run -q --release --bin todo-api -- migrate >/dev/null
pgbench "$pg/$db" -n -M prepared -c "$clients" -j 2 -T "$seconds" \
  -D users=200 -f benches/pgbench/create_task.sql
psql -q "$pg/postgres" -c "DROP DATABASE $db"
