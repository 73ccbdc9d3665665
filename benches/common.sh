# Sourced by the benchmark scripts: a local nisshi broker, a fresh database
# and the release binaries, started and stopped the same way. Set `db` and
# `broker_port` before sourcing, and `out` where the reports should not go
# to target/bench.
# shellcheck shell=bash
out="${out:-target/bench}"
mkdir -p "$out"
bin=target/release
nisshi="${NISSHI_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/nisshi-0.8.1/bin/nisshi}"
pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
export JWT_SECRET=bench-bench-bench-bench-bench-bench!
export DATABASE_URL="$pg/$db"
export RUST_LOG=warn
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$broker_port"
export KAFKA_TOPIC_PARTITIONS=6

# name -> pid of everything started here; all killed on exit, and the
# database dropped (unless KEEP_DB is set).
declare -A running=()
cleanup() {
  for p in "${running[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "${KEEP_DB:-}" ]; then
    psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  fi
}
trap cleanup EXIT

# wait_http URL [seconds]: until URL answers (30 s unless told).
wait_http() {
  for _ in $(seq 1 $(( ${2:-30} * 10 ))); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; exit 1
}
# The build of a service a script runs: target/release/NAME, or for a
# before/after in turns another build (an earlier commit's) named by
# API_BIN or AUDIT_BIN.
binary() {
  case $1 in
    todo-api) echo "${API_BIN:-$bin/$1}" ;;
    todo-audit) echo "${AUDIT_BIN:-$bin/$1}" ;;
    *) echo "$bin/$1" ;;
  esac
}
# start NAME PORT [VAR=value ...]: runs `binary NAME` on PORT, waits for its
# /ready.
start() {
  local name=$1 port=$2; shift 2
  env PORT="$port" "$@" "$(binary "$name")" &
  running[$name]=$!
  wait_http "http://127.0.0.1:$port/ready"
}
stop() {
  local pid=${running[$1]:-}
  if [ -n "$pid" ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; unset "running[$1]"; fi
}
# An empty in-memory nisshi on broker_port, its log appended to LOG.
start_nisshi() {
  "$nisshi" broker --listener-url "tcp://127.0.0.1:$broker_port" \
    --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
    --storage-engine memory://nisshi/ --group-initial-rebalance-delay 0ms \
    >>"$1" 2>&1 &
  running[nisshi]=$!
  for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$broker_port") 2>/dev/null && break; sleep 0.1; done
}
# nisshi keeps every batch, and a fetch lists all of its partition's batches:
# past a few seconds at hundreds of events/s, the broker's history is what a
# benchmark measures (src/broker_retention.rs). start_broker_retention KEEP
# [GROUP ...] gives it a time-based retention of KEEP seconds (0: none),
# never past what the named consumer groups have committed.
start_broker_retention() {
  local keep=$1 args=(); shift
  # "0.0" is off too, not a retention of nothing at all; anything else
  # goes to the tool, which refuses what is not a number.
  [[ ! "$keep" =~ ^0*\.?0*$ ]] || return 0
  for g in "$@"; do args+=(--group "$g"); done
  "$bin/todo-broker-retention" --keep "$keep" "${args[@]}" >>"$out/broker-retention.log" 2>&1 &
  running[todo-broker-retention]=$!
}
fresh_db() {
  [ -x "$nisshi" ] || { echo "no nisshi at $nisshi (scripts/install-broker.sh installs it)" >&2; exit 1; }
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  # Services no longer migrate on start: todo-api migrate is the one migrator.
  "$bin/todo-api" migrate >/dev/null
}
# Where reminders go, for the scripts that deliver them: aiosmtpd (its port
# in smtp_port; it prints one line per message into $out/smtp.log) and
# todo-sink on 18099 for webhooks and Web Push, answering after
# HOOK_DELAY_MS (default 0); and a VAPID key pair in vapid_private and
# vapid_public.
start_receivers() {
  local smtp_python="${TEST_SMTP_PYTHON:-${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/smtp-venv/bin/python}"
  [ -x "$smtp_python" ] || { echo "no aiosmtpd at $smtp_python (scripts/test.sh prepares it)" >&2; exit 1; }
  mkfifo "$out/smtp.fifo" 2>/dev/null || true
  sleep 100000 >"$out/smtp.fifo" &
  running[smtp-stdin]=$!
  "$smtp_python" consumers/notification/tests/support/smtp_receiver.py <"$out/smtp.fifo" >"$out/smtp.log" 2>&1 &
  running[smtp]=$!
  for _ in $(seq 1 100); do grep -q '^PORT ' "$out/smtp.log" 2>/dev/null && break; sleep 0.1; done
  smtp_port=$(sed -n 's/^PORT //p' "$out/smtp.log")
  "$bin/todo-sink" --port 18099 --delay-ms "${HOOK_DELAY_MS:-0}" >"$out/sink.log" 2>&1 &
  running[todo-sink]=$!
  wait_http http://127.0.0.1:18099/stats
  read -r vapid_private vapid_public < <("$bin/todo-notifier" vapid-keys | sed 's/^[A-Z_]*=//' | paste -sd' ')
}
