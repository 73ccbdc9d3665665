#!/usr/bin/env bash
# Interoperability with the official Python MCP SDK: a virtualenv with `mcp`
# (cached under ~/.cache/todo-platform), then the ignored Rust test that
# starts todo-api on a fresh database and broker and runs
# scripts/mcp_interop.py against it. Bounded: 15 minutes at most.
set -euo pipefail
cd "$(dirname "$0")/.."
MCP_SDK_VERSION="${MCP_SDK_VERSION:-2.3.0}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/mcp-venv-$MCP_SDK_VERSION"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import mcp" 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  timeout 300 "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_SDK_VERSION"
fi
if [ -z "${TEST_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  scripts/install-broker.sh
fi
MCP_INTEROP_PYTHON="$venv/bin/python" timeout 900 \
  cargo test -p producer-api --all-features --test mcp_interop -- --ignored --nocapture
