#!/usr/bin/env bash
# Builds stand-in base images from Debian bookworm packages, with no container registry:
#   local/debian:bookworm   debootstrap's minimal Debian, imported
#   local/python:3.11-slim  Debian's python3 + venv: a base for the migrator's image
#   local/postgres:15       Debian's PostgreSQL 15, started like the official image
#                           (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB)
# For regulated, registry-less sites, and for the tests on machines with no registry.
# Elsewhere the official python:3.12-slim and postgres images are the defaults.
#
#   scripts/build-base-images.sh            build what is missing
#   scripts/build-base-images.sh --force    build everything again
#
# Runs as root on Debian (debootstrap needs it, and is installed when missing). Builds use
# `--network host` to reach the Debian mirror.
set -euo pipefail

debian=${MIGRATOR_BASE_DEBIAN_IMAGE:-local/debian:bookworm}
python=${MIGRATOR_BASE_PYTHON_IMAGE:-local/python:3.11-slim}
postgres=${MIGRATOR_TEST_POSTGRES_IMAGE:-local/postgres:15}
force=${1:-}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

needed() {
  if [ "$force" != "--force" ] && docker image inspect "$1" >/dev/null 2>&1; then
    echo "$1: already present"
    return 1
  fi
}

if needed "$debian"; then
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  debootstrap --variant=minbase bookworm "$work/rootfs" >/dev/null
  tar -C "$work/rootfs" -c . | docker import - "$debian" >/dev/null
  rm -rf "$work/rootfs"
  echo "$debian: built"
fi

if needed "$python"; then
  mkdir -p "$work/python"
  # pip inside later builds needs this machine's CA bundle (only in the stand-in).
  cp /etc/ssl/certs/ca-certificates.crt "$work/python/ca-certificates.crt"
  cat > "$work/python/Dockerfile" <<EOF
FROM $debian
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/build-ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/build-ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
EOF
  docker build -q --network host -t "$python" "$work/python" >/dev/null
  echo "$python: built"
fi

if needed "$postgres"; then
  mkdir -p "$work/postgres"
  cat > "$work/postgres/Dockerfile" <<EOF
FROM $debian
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      postgresql-15 postgresql-client-15 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:\$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
EOF
  cat > "$work/postgres/entrypoint.sh" <<'EOF'
#!/bin/bash
# Like the official image: initialise an empty PGDATA from POSTGRES_* once, create the
# database before TCP opens (clients are refused until then), then exec postgres.
set -euo pipefail
[ "${1:-}" = "postgres" ] && shift
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
as_postgres() { runuser -u postgres -- "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
    echo "error: POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  printf '%s\n' "${POSTGRES_PASSWORD:-}" > /tmp/pwfile
  chown postgres /tmp/pwfile
  as_postgres initdb -D "$PGDATA" --username="$user" --pwfile=/tmp/pwfile \
    --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >/dev/null
  rm -f /tmp/pwfile
  printf 'host all all 0.0.0.0/0 %s\nhost all all ::/0 %s\n' \
    "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" \
    >> "$PGDATA/pg_hba.conf"
  as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$db" != postgres ]; then
    as_postgres psql -q -U "$user" -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
  fi
  as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "PostgreSQL init process complete; ready for start up."
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -c listen_addresses='*' "$@"
EOF
  chmod +x "$work/postgres/entrypoint.sh"
  docker build -q --network host -t "$postgres" "$work/postgres" >/dev/null
  echo "$postgres: built"
fi
