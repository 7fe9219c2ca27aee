#!/usr/bin/env bash
# The benchmarks (bench/run.py): the migrator beside plain Alembic and dbmate on a throwaway
# PostgreSQL. Sets up .venv and PostgreSQL's server binaries when missing; dbmate comes from
# npm into bench/.cache. Arguments go to bench/run.py (--help lists them), e.g.
#   scripts/bench.sh --output bench/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo "bench: installing postgresql" >&2
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
exec .venv/bin/python bench/run.py "$@"
