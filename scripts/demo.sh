#!/usr/bin/env bash
# The main job on a throwaway PostgreSQL: start one (a container when Docker is there,
# else the local server binaries), run `migrator upgrade head`, print `migrator current`,
# then throw the server away.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export DB_HOST=127.0.0.1 DB_PORT=${DEMO_PORT:-55432} DB_NAME=app DB_USER=app
export DB_PASSWORD="demo-$RANDOM$RANDOM"

if docker info >/dev/null 2>&1; then
  [ -n "${MIGRATOR_TEST_POSTGRES_IMAGE:-}" ] || eval "$(scripts/pick-base-images.sh)"
  image=$MIGRATOR_TEST_POSTGRES_IMAGE
  container=$(docker run -d --rm -p "127.0.0.1:$DB_PORT:5432" -e POSTGRES_USER=app \
    -e POSTGRES_PASSWORD="$DB_PASSWORD" -e POSTGRES_DB=app "$image")
  trap 'docker stop "$container" >/dev/null' EXIT
  echo "demo: PostgreSQL in container ${container:0:12} ($image) on port $DB_PORT" >&2
else
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ]; then
    echo "demo: neither Docker nor PostgreSQL server binaries: apt-get install postgresql" >&2
    exit 1
  fi
  data=$(mktemp -d)
  run_as=()
  if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
    chown postgres "$data"
    run_as=(runuser -u postgres --)
  fi
  printf '%s\n' "$DB_PASSWORD" > "$data/pw" && chmod 600 "$data/pw"
  [ "${#run_as[@]}" = 0 ] || chown postgres "$data/pw"
  "${run_as[@]}" "$bin/initdb" -D "$data/db" -U app --pwfile="$data/pw" \
    --auth=scram-sha-256 >/dev/null
  "${run_as[@]}" "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w \
    -o "-p $DB_PORT -k $data -c listen_addresses=127.0.0.1" start >/dev/null
  trap '"${run_as[@]}" "$bin/pg_ctl" -D "$data/db" -m fast stop >/dev/null; rm -rf "$data"' EXIT
  PGPASSWORD=$DB_PASSWORD "$bin/psql" -h 127.0.0.1 -p "$DB_PORT" -U app -d postgres -qc \
    "CREATE DATABASE app" 2>/dev/null || true
  echo "demo: PostgreSQL from $bin on port $DB_PORT" >&2
fi

.venv/bin/migrator upgrade head
.venv/bin/migrator current
