#!/usr/bin/env bash
# The test command: installs what the tests need if it is missing (the test
# broker; Chromium for the live page's browser test; Prometheus for the
# system test), then runs every test
# (unit and integration) against real PostgreSQL, a real broker and a real
# SMTP server (aiosmtpd), then
# the official Python MCP SDK against todo-api's /mcp (in a virtualenv;
# MCP_INTEROP=0 skips it), then the contract checks: the AsyncAPI parser,
# the OpenAPI validator and schemathesis (scripts/contract.sh; CONTRACT=0
# skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
# Chromium for the live page's browser test; Prometheus for the system
# test that evaluates the dashboard and the alert rules against real metrics.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
   || ! command -v prometheus >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver prometheus
  else
    echo "scripts/test.sh: the tests need chromium, chromedriver and prometheus on PATH (Debian: apt-get install chromium chromium-driver prometheus)" >&2
    exit 1
  fi
fi
if [ -z "${TEST_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  # On a fresh machine the broker's build is the longest step: the tests
  # compile beside it.
  scripts/install-broker.sh &
  broker=$!
  cargo test --workspace --all-features --no-run
  wait "$broker"
fi
# A real SMTP server for the e-mail channel's tests (aiosmtpd, in a
# virtualenv cached beside the broker).
AIOSMTPD_VERSION=1.4.6
smtp_venv="${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/smtp-venv"
scripts/venv.sh "$smtp_venv" aiosmtpd "aiosmtpd==$AIOSMTPD_VERSION"
export TEST_SMTP_PYTHON="$smtp_venv/bin/python"
cargo test --workspace --all-features "$@"
if [ "${MCP_INTEROP:-1}" != 0 ]; then
  scripts/mcp-interop.sh
fi
if [ "${CONTRACT:-1}" != 0 ]; then
  scripts/contract.sh
fi
