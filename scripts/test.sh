#!/usr/bin/env bash
# The test command: installs the test broker if needed, then runs every test
# (unit and integration) against real PostgreSQL and a real broker.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TEST_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  scripts/install-broker.sh
fi
cargo test --workspace --all-features "$@"
