#!/usr/bin/env bash
# Runs the test suite on this machine, bare or not: sets up .venv and a Docker engine,
# finds a PostgreSQL image, then pytest (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/start-docker.sh
MIGRATOR_TEST_POSTGRES_IMAGE=${MIGRATOR_TEST_POSTGRES_IMAGE:-$(scripts/postgres-image.sh)}
export MIGRATOR_TEST_POSTGRES_IMAGE
export TESTCONTAINERS_RYUK_DISABLED=true  # its reaper image needs a registry
echo "test: PostgreSQL image $MIGRATOR_TEST_POSTGRES_IMAGE" >&2
exec .venv/bin/pytest "$@"
