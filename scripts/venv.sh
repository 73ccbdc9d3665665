#!/usr/bin/env bash
# scripts/venv.sh DIR MODULES PACKAGE...: a Python virtualenv at DIR in
# which `import MODULES` works (comma-separated), made with PACKAGE... from
# PyPI if it is missing or broken. Installs Debian's python3-venv first
# where ensurepip is absent and apt-get can run. The install is bounded.
set -euo pipefail
dir="$1" modules="$2"
shift 2
if "$dir/bin/python" -c "import $modules" 2>/dev/null; then
  exit 0
fi
if ! python3 -c "import ensurepip" 2>/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
rm -rf "$dir"
python3 -m venv "$dir"
timeout 600 "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
