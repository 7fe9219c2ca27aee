#!/usr/bin/env bash
# Prints the name of a PostgreSQL image this machine can run: the official one when a
# registry answers, else a stand-in built from Debian packages (scripts/build-base-images.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

official=${MIGRATOR_OFFICIAL_POSTGRES_IMAGE:-postgres:16}
if docker image inspect "$official" >/dev/null 2>&1 \
  || timeout 60 docker pull -q "$official" >/dev/null 2>&1; then
  echo "$official"
  exit 0
fi
echo "no registry answered for $official: using stand-ins built from Debian packages" >&2
scripts/build-base-images.sh >&2
echo "${MIGRATOR_TEST_POSTGRES_IMAGE:-local/postgres:15}"
