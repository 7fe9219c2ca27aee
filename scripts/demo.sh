#!/usr/bin/env bash
# The README's first command, on a bare Debian 12 machine or any other: a throwaway
# PostgreSQL, the example application's migrations applied (`migrator upgrade head`), where
# the database is then (`migrator current`), and the server thrown away. It sets up what it
# needs itself, skipping what is there:
#
#   Docker (the default): a Docker engine (scripts/start-docker.sh installs Debian's
#   docker.io and starts dockerd when missing, as root), base images (the official ones, or
#   stand-ins built from Debian packages where no registry answers), the images `migrator`
#   and `migrator-example` (the example application, FROM the migrator) built from this
#   checkout, and PostgreSQL in a container on a private Docker network: no host port is
#   used, so none can be taken.
#
#   Local (DEMO_MODE=local, or when no Docker engine can start): .venv and PostgreSQL's
#   server binaries (Debian's postgresql, installed when missing) on a free loopback port;
#   DEMO_PORT=N picks the port instead.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "demo: $*" >&2; exit 1; }
quietly() {  # runs "$@", showing its output only when it fails
  local log
  log=$(mktemp)
  "$@" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; return 1; }
  rm -f "$log"
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

mode=${DEMO_MODE:-docker}
case "$mode" in
  docker | local) ;;
  *) echo "demo: DEMO_MODE=$mode: use docker or local" >&2; exit 2 ;;
esac
if [ "$mode" = docker ] && ! scripts/start-docker.sh; then
  echo "demo: no Docker engine (above); running locally instead (DEMO_MODE=local)" >&2
  mode=local
fi

password="demo-$RANDOM$RANDOM"

if [ "$mode" = docker ]; then
  # A failure inside $(...) would be lost in `eval`: keep the status, the cause is on stderr.
  images=$(scripts/pick-base-images.sh) || fail "no base images (the cause is above)"
  eval "$images"
  echo "demo: building migrator and migrator-example on $MIGRATOR_TEST_PYTHON_IMAGE" \
    "(about 15 s the first time, seconds once cached)" >&2
  build=(docker build --network host --build-arg "PYTHON_IMAGE=$MIGRATOR_TEST_PYTHON_IMAGE")
  quietly "${build[@]}" -t migrator . || fail "could not build the migrator image (above)"
  quietly "${build[@]}" --target example -t migrator-example . \
    || fail "could not build the example image (above)"

  name=migrator-demo-$RANDOM$RANDOM
  docker network create "$name" >/dev/null
  trap 'docker rm -f "$name-db" >/dev/null 2>&1; docker network rm "$name" >/dev/null' EXIT
  POSTGRES_PASSWORD=$password docker run -d --name "$name-db" --network "$name" \
    --network-alias postgres -e POSTGRES_USER=app -e POSTGRES_PASSWORD -e POSTGRES_DB=app \
    "$MIGRATOR_TEST_POSTGRES_IMAGE" >/dev/null
  echo "demo: PostgreSQL in container $name-db ($MIGRATOR_TEST_POSTGRES_IMAGE)" >&2
  migrator() {
    DB_HOST=postgres DB_NAME=app DB_USER=app DB_PASSWORD=$password \
      docker run --rm --network "$name" --read-only \
      -e DB_HOST -e DB_NAME -e DB_USER -e DB_PASSWORD migrator-example "$@"
  }
else
  scripts/setup.sh
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "demo: installing postgresql (about 15 s)" >&2
    quietly as_root apt-get update
    quietly as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql \
      || fail "could not install PostgreSQL's server binaries (above)"
  fi
  bin=$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -n 1)")
  port=${DEMO_PORT:-$(.venv/bin/python -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  data=$(mktemp -d)
  run_as=()
  if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
    chown postgres "$data"
    run_as=(runuser -u postgres --)
  fi
  printf '%s\n' "$password" >"$data/pw" && chmod 600 "$data/pw"
  [ "${#run_as[@]}" = 0 ] || chown postgres "$data/pw"
  "${run_as[@]}" "$bin/initdb" -D "$data/db" -U app --pwfile="$data/pw" \
    --auth=scram-sha-256 >/dev/null
  if ! "${run_as[@]}" "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1" start >/dev/null; then
    tail -n 5 "$data/log" >&2
    rm -rf "$data"
    fail "PostgreSQL did not start on port $port (above); set DEMO_PORT to a free port"
  fi
  trap '"${run_as[@]}" "$bin/pg_ctl" -D "$data/db" -m fast stop >/dev/null; rm -rf "$data"' EXIT
  PGPASSWORD=$password "$bin/psql" -h 127.0.0.1 -p "$port" -U app -d postgres -qc \
    "CREATE DATABASE app" >/dev/null
  echo "demo: PostgreSQL from $bin on port $port" >&2
  migrator() {
    DB_HOST=127.0.0.1 DB_PORT=$port DB_NAME=app DB_USER=app DB_PASSWORD=$password \
      .venv/bin/migrator "$@"
  }
fi

migrator upgrade head
migrator current
