#!/usr/bin/env bash
# Interoperability with the official Python MCP SDK: a virtualenv with `mcp`
# (cached under ~/.cache/todo-platform), then the ignored Rust test that
# starts todo-api on a fresh database and broker and runs
# scripts/mcp_interop.py against it. Bounded: 15 minutes at most.
set -euo pipefail
cd "$(dirname "$0")/.."
MCP_SDK_VERSION="${MCP_SDK_VERSION:-2.3.0}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/mcp-venv-$MCP_SDK_VERSION"
scripts/venv.sh "$venv" mcp "mcp==$MCP_SDK_VERSION"
if [ -z "${TEST_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  scripts/install-broker.sh
fi
MCP_INTEROP_PYTHON="$venv/bin/python" timeout 900 \
  cargo test --workspace --all-features --test it -- --ignored --nocapture mcp_interop::
