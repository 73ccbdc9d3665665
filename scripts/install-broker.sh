#!/usr/bin/env bash
# Installs nisshi 0.8.1, the Kafka-compatible broker the tests start, into a
# cache outside the repo (built once; reused after). Only the storage engine
# the tests use (memory://, in the `dynostore` feature): the default features
# add libSQL, Turso, SlateDB and PostgreSQL engines the tests never start
# (this build: 15 min on 2 cores, measured 2026-12-02).
set -euo pipefail
root="${XDG_CACHE_HOME:-$HOME/.cache}/todo-platform/nisshi-0.8.1"
mkdir -p "$(dirname "$root")"
# CI starts this in the background and the test script calls it again: the
# second caller waits for the first build instead of starting its own.
exec 9>"$root.lock"
flock 9
if [ -x "$root/bin/nisshi" ]; then
  echo "nisshi already installed at $root/bin/nisshi"
  exit 0
fi
mkdir -p "$root"
cargo install nisshi --version 0.8.1 --locked --ignore-rust-version \
  --no-default-features --features dynostore --root "$root"
