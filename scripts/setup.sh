#!/usr/bin/env bash
# Makes .venv: the migrator (editable) with its test and lint tools. Skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.installed-from
wanted=$(sha256sum pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [ -x .venv/bin/migrator ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
  exit 0
fi
echo "setup: making .venv: the migrator, its locked dependencies, the test and lint tools (about 30 s the first time)" >&2
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
  echo "setup: installing python3-venv (about 10 s)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The locked runtime dependencies first, so tests run on what the image ships.
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q -e '.[test]'
echo "$wanted" > "$stamp"
echo "setup: .venv ready" >&2
