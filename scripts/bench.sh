#!/usr/bin/env bash
# The benchmarks (bench/run.py): the migrator beside plain Alembic and dbmate on a throwaway
# PostgreSQL. Sets up .venv, and installs the Debian packages it drives when missing
# (PostgreSQL's server binaries, GNU time, npm); dbmate comes from npm into bench/.cache.
# Arguments go to bench/run.py (--help lists them), e.g.
#   scripts/bench.sh --output bench/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/bin/time ] || missing+=(time)
command -v iptables >/dev/null || missing+=(iptables)  # part 8 stalls a connection
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bench: installing ${missing[*]}" >&2
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec .venv/bin/python bench/run.py "$@"
