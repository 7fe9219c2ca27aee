#!/usr/bin/env bash
# Runs the test suite on this machine, bare or not: sets up .venv and a Docker engine,
# picks base images (official, or built from Debian packages), then pytest (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/start-docker.sh
# Debian packages some tests drive: the compose client, and PostgreSQL's server binaries
# (a standby held in recovery is the one way to see "not accepting connections" for real).
missing=()
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
  || missing+=(docker-compose)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
# PgBouncer in front of the server, and iptables to stall a proxy's port (tests/conditions.py).
command -v pgbouncer >/dev/null || missing+=(pgbouncer)
command -v iptables >/dev/null || missing+=(iptables)
# npm installs dbmate, the peer tests/test_bench.py measures beside the migrator.
command -v npm >/dev/null || missing+=(npm)
# Servers that speak German and Japanese (tests/test_languages.py) need those locales.
command -v locale-gen >/dev/null || missing+=(locales)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test: installing ${missing[*]} (about 1 min for all of them)" >&2
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for language in de_DE.UTF-8 ja_JP.UTF-8; do
  if ! locale -a 2>/dev/null | grep -qix "${language/UTF-8/utf8}"; then
    grep -qx "$language UTF-8" /etc/locale.gen 2>/dev/null || echo "$language UTF-8" >> /etc/locale.gen
    locale-gen >/dev/null
  fi
done
# A failure inside $(...) would be lost in `eval`: keep its status (the cause is on stderr).
images=$(scripts/pick-base-images.sh) || { echo "test: no base images (the cause is above)" >&2; exit 1; }
eval "$images"
export TESTCONTAINERS_RYUK_DISABLED=true  # its reaper image needs a registry
echo "test: images $MIGRATOR_TEST_PYTHON_IMAGE, $MIGRATOR_TEST_POSTGRES_IMAGE" >&2
# -v: a line per test with its outcome; the bench's smoke test streams its own lines.
pytest=(.venv/bin/pytest -v --durations=10)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" "$@"  # what was asked for, in one run
fi
# Two stages, as CI runs them side by side: every test runs, none is skipped.
echo "test: stage 1 of 2, the main suite: pytest, one line per test (about 16 min on 2 cores)," \
  "the 10 slowest at the end" >&2
"${pytest[@]}" -m "not slow"
echo "test: stage 2 of 2, the slow end-to-end tests: stalls, timeouts, the bench" \
  "(about 5 min on 2 cores; the bench's smoke test alone about 2 min)" >&2
"${pytest[@]}" -m slow
