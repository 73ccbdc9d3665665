#!/usr/bin/env bash
# The contract as documents, checked by the tools of the field: the
# AsyncAPI parser (npm @asyncapi/parser) over shared/asyncapi.json, then the
# ignored Rust test that starts todo-api and todo-audit on a fresh database
# and broker and runs scripts/contract.py (openapi-spec-validator and
# schemathesis, in a virtualenv). Each install and run is bounded; about
# 4 minutes warm. CONTRACT=0 in scripts/test.sh skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform"
SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
PARSER_VERSION=3.6.0

parser_dir="$cache/asyncapi-parser-$PARSER_VERSION"
if [ ! -d "$parser_dir/node_modules/@asyncapi/parser" ]; then
  rm -rf "$parser_dir"
  mkdir -p "$parser_dir"
  (cd "$parser_dir" && timeout 300 npm install --silent --no-audit --no-fund "@asyncapi/parser@$PARSER_VERSION")
fi
NODE_PATH="$parser_dir/node_modules" timeout 120 node scripts/validate-asyncapi.mjs shared/asyncapi.json

venv="$cache/contract-venv-$SCHEMATHESIS_VERSION"
if ! "$venv/bin/python" -c "import schemathesis, openapi_spec_validator" 2>/dev/null; then
  if ! python3 -c "import ensurepip" 2>/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION"
fi
if [ -z "${TEST_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  scripts/install-broker.sh
fi
CONTRACT_PYTHON="$venv/bin/python" timeout 900 \
  cargo test --workspace --all-features --test contract -- --ignored --nocapture schemathesis
