#!/usr/bin/env bash
# Does the test broker slow down as its log grows? One in-memory nisshi,
# ROUNDS runs of todo-kafka-baseline, each MESSAGES ~1 KB envelopes, so
# that round n reads and writes with n-1 rounds' messages already in the
# broker: each in a fresh topic (kept), or with ONE_TOPIC=1 all appended to
# one topic, as the soak's task-events grows (the live reader then reads
# from the topic's end; the reader from the start reads all of it). Prints
# one line per round: the messages held before it, nisshi's resident
# memory, and the round's produce, produce → consume and consume-from-the-
# start rates.
#
# Usage: [MESSAGES=100000] [ONE_TOPIC=1] benches/broker_log.sh [rounds]
# Writes target/bench/broker-log/: round-N.json (todo-kafka-baseline's
# reports) and rounds.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-10}"
messages="${MESSAGES:-100000}"
out=target/bench/broker-log
cargo build -q --release --bin todo-kafka-baseline
db=todo_broker_log broker_port=19094
# shellcheck source=benches/common.sh
source benches/common.sh
[ -x "$nisshi" ] || { echo "no nisshi at $nisshi (scripts/install-broker.sh installs it)" >&2; exit 1; }
: >"$out/nisshi.log"
start_nisshi "$out/nisshi.log"
echo "round,messages_before,nisshi_rss_mib,produce_per_s,produce_to_consume_per_s,consume_from_start_per_s" >"$out/rounds.csv"
for n in $(seq 1 "$rounds"); do
  rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/${running[nisshi]}/status")
  where=(--keep-topic)
  [ -n "${ONE_TOPIC:-}" ] && where=(--topic bench-growing)
  "$bin/todo-kafka-baseline" --messages "$messages" "${where[@]}" \
    --report "$out/round-$n.json" >/dev/null
  python3 - "$out/round-$n.json" "$n" "$(( (n - 1) * messages ))" "$rss" >>"$out/rounds.csv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(",".join([sys.argv[2], sys.argv[3], sys.argv[4]] + [f"{r[k]:.0f}" for k in
      ("produce_per_s", "produce_to_consume_per_s", "consume_from_start_per_s")]))
PY
  tail -1 "$out/rounds.csv"
done
