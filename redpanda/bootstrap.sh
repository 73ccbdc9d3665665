#!/usr/bin/env bash
# Creates the platform's topics with their partitions and retention, or brings
# the retention of existing ones up to date. Safe to run any number of times.
#
# Runs as the one-shot `topics` service of docker-compose.yml (inside the
# Redpanda image, which ships rpk), and from a laptop against any cluster:
#
#   KAFKA_BOOTSTRAP_SERVERS=seed-xxxx.redpanda.com:9092 \
#   KAFKA_SECURITY_PROTOCOL=SASL_SSL KAFKA_SASL_MECHANISM=SCRAM-SHA-256 \
#   KAFKA_SASL_USERNAME=todo KAFKA_SASL_PASSWORD=... \
#   KAFKA_REPLICATION_FACTOR=3 redpanda/bootstrap.sh
#
# It reads the same variables as the services (DESIGN.md), so topic names get
# KAFKA_TOPIC_PREFIX exactly as the services expect.
#
# The services also create missing topics on start (with the broker's default
# retention); running this first gives the dead-letter topics their longer
# retention. Consumers remember processed event ids for
# CONSUMER_DEDUP_RETENTION_HOURS (14 days by default): keep the main topics'
# retention below that.
set -euo pipefail

brokers="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
prefix="${KAFKA_TOPIC_PREFIX:-}"
replicas="${KAFKA_REPLICATION_FACTOR:-1}"
protocol="$(printf '%s' "${KAFKA_SECURITY_PROTOCOL:-PLAINTEXT}" | tr '[:lower:]' '[:upper:]')"

# name partitions retention.ms (7 days for events, 30 days for dead letters)
# The same table is in deploy/civo/redpanda-demo/topics-job.yaml;
# scripts/check-deploy.sh checks that they agree.
# BEGIN TOPICS
TOPICS='
task-events      6 604800000
reminders        6 604800000
task-events.dlq  6 2592000000
reminders.dlq    6 2592000000
'
# END TOPICS

rpk_args=(-X "brokers=$brokers")
case "$protocol" in
  PLAINTEXT) ;;
  SSL) rpk_args+=(-X tls.enabled=true) ;;
  SASL_PLAINTEXT | SASL_SSL)
    : "${KAFKA_SASL_USERNAME:?KAFKA_SASL_USERNAME is required with $protocol}"
    : "${KAFKA_SASL_PASSWORD:?KAFKA_SASL_PASSWORD is required with $protocol}"
    # Credentials reach rpk through its environment, never its command line.
    export RPK_SASL_MECHANISM="${KAFKA_SASL_MECHANISM:-SCRAM-SHA-256}"
    export RPK_USER="$KAFKA_SASL_USERNAME" RPK_PASS="$KAFKA_SASL_PASSWORD"
    if [ "$protocol" = SASL_SSL ]; then rpk_args+=(-X tls.enabled=true); fi
    ;;
  *) echo "bootstrap: KAFKA_SECURITY_PROTOCOL=$protocol is not supported" >&2; exit 2 ;;
esac

# Wait for the cluster (compose also waits for Redpanda's health check).
for attempt in $(seq 1 30); do
  if rpk cluster info "${rpk_args[@]}" >/dev/null 2>&1; then break; fi
  if [ "$attempt" -eq 30 ]; then
    echo "bootstrap: no broker answers at $brokers" >&2
    exit 1
  fi
  sleep 2
done

while read -r name partitions retention; do
  [ -n "$name" ] || continue
  topic="$prefix$name"
  if rpk topic describe "$topic" "${rpk_args[@]}" >/dev/null 2>&1; then
    rpk topic alter-config "$topic" --set "retention.ms=$retention" "${rpk_args[@]}" >/dev/null
    echo "bootstrap: $topic exists; retention.ms=$retention"
  else
    rpk topic create "$topic" -p "$partitions" -r "$replicas" \
      -c "retention.ms=$retention" -c cleanup.policy=delete "${rpk_args[@]}" >/dev/null
    echo "bootstrap: $topic created ($partitions partitions, replication $replicas, retention.ms=$retention)"
  fi
done <<<"$TOPICS"
