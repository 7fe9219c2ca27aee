#!/usr/bin/env bash
# Prints `export` lines naming the base images this machine can use for the tests and the
# demo: the official python and postgres images when a registry answers, else stand-ins
# built from Debian packages (scripts/build-base-images.sh). Use: eval "$(scripts/pick-base-images.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."

official_python=python:3.12-slim
official_postgres=postgres:16
available() {
  docker image inspect "$1" >/dev/null 2>&1 && return
  echo "pick-base-images: pulling $1 (under a minute where a registry answers; up to 2 min before giving up)" >&2
  timeout 120 docker pull -q "$1" >/dev/null 2>&1
}
if available "$official_python" && available "$official_postgres"; then
  python=$official_python postgres=$official_postgres
else
  echo "pick-base-images: no registry answered: using base images built from Debian packages" >&2
  scripts/build-base-images.sh >&2
  python=${MIGRATOR_BASE_PYTHON_IMAGE:-local/python:3.11-slim}
  postgres=${MIGRATOR_BASE_POSTGRES_IMAGE:-local/postgres:15}
fi
echo "export MIGRATOR_TEST_PYTHON_IMAGE=${MIGRATOR_TEST_PYTHON_IMAGE:-$python}"
echo "export MIGRATOR_TEST_POSTGRES_IMAGE=${MIGRATOR_TEST_POSTGRES_IMAGE:-$postgres}"
