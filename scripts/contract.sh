#!/usr/bin/env bash
# The contract as documents, checked by the tools of the field: the
# AsyncAPI parser (npm @asyncapi/parser) over shared/contract/asyncapi.json, then the
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
NODE_PATH="$parser_dir/node_modules" timeout 120 node scripts/validate-asyncapi.mjs shared/contract/asyncapi.json

venv="$cache/contract-venv-$SCHEMATHESIS_VERSION"
scripts/venv.sh "$venv" "schemathesis, openapi_spec_validator" \
  "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION"
if [ -z "${TEST_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  scripts/install-broker.sh
fi
CONTRACT_PYTHON="$venv/bin/python" timeout 900 \
  cargo test --workspace --all-features --test it -- --ignored --nocapture contract::schemathesis
