#!/usr/bin/env bash
# Installs nisshi 0.8.1, the Kafka-compatible broker the tests start, into a
# cache outside the repo (built once, ~15-35 min on 2 cores; reused after).
set -euo pipefail
root="${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/nisshi-0.8.1"
if [ -x "$root/bin/nisshi" ]; then
  echo "nisshi already installed at $root/bin/nisshi"
  exit 0
fi
mkdir -p "$root"
cargo install nisshi --version 0.8.1 --locked --ignore-rust-version --root "$root"
