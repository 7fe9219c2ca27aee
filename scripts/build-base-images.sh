#!/usr/bin/env bash
# Builds stand-in base images from Debian bookworm packages, with no container registry:
#   local/debian:bookworm   debootstrap's minimal Debian (docs and apt caches removed), imported
#   local/python:3.11-slim  Debian's python3 + venv: a base for the migrator's image
#   local/postgres:15       Debian's PostgreSQL 15, started like the official image
#                           (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD)
# For regulated, air-gapped sites (point MIGRATOR_DEBIAN_MIRROR and
# MIGRATOR_DEBIAN_SECURITY_MIRROR at your own mirror) and for the tests on machines with no
# registry. Elsewhere the official python:3.12-slim and postgres images are the defaults.
#
#   scripts/build-base-images.sh            build the images that are missing
#   scripts/build-base-images.sh --force    build all of them again
#
# Names: MIGRATOR_BASE_DEBIAN_IMAGE, MIGRATOR_BASE_PYTHON_IMAGE, MIGRATOR_BASE_POSTGRES_IMAGE.
# Runs as root on Debian: debootstrap needs root, and is installed with apt-get when missing.
# Builds use `docker build --network host` to reach the Debian mirror.
set -euo pipefail

debian=${MIGRATOR_BASE_DEBIAN_IMAGE:-local/debian:bookworm}
python=${MIGRATOR_BASE_PYTHON_IMAGE:-local/python:3.11-slim}
postgres=${MIGRATOR_BASE_POSTGRES_IMAGE:-local/postgres:15}
mirror=${MIGRATOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${MIGRATOR_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
case "${1:-}" in
  "" | --force) force=${1:-} ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

needed() {  # true when image $1 must be built
  if [ "$force" != --force ] && docker image inspect "$1" >/dev/null 2>&1; then
    echo "$1: already present"
    return 1
  fi
}
quietly() {  # runs "$@", showing its output only when it fails
  "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; return 1; }
}
say() { echo "build-base-images: $*" >&2; }
build() {  # build <image> <context dir>
  quietly docker build --network host -t "$1" "$2"
  echo "$1: built"
}

if needed "$debian"; then
  say "$debian: debootstrap's minimal bookworm from $mirror (about 30 s)"
  command -v debootstrap >/dev/null || {
    quietly apt-get update
    quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
  }
  root=$work/rootfs
  quietly debootstrap --variant=minbase bookworm "$root" "$mirror"
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
  # Slim like Debian's own slim images: no docs but the copyright files, no man pages or translations.
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
    'path-exclude /usr/share/locale/*' >"$root/etc/dpkg/dpkg.cfg.d/slim"
  find "$root/usr/share/doc" -type f ! -name copyright -delete
  rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$debian" >/dev/null
  rm -rf "$root"
  echo "$debian: built"
fi

if needed "$python"; then
  mkdir "$work/python"
  # pip inside later builds needs this machine's CA bundle (set in the stand-in only).
  cp /etc/ssl/certs/ca-certificates.crt "$work/python/"
  cat >"$work/python/Dockerfile" <<EOF
FROM $debian
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get upgrade -y \\
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/build-ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/build-ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
EOF
  say "$python: building, Debian's python3 (about 15 s)"
  build "$python" "$work/python"
fi

if needed "$postgres"; then
  mkdir "$work/postgres"
  cat >"$work/postgres/Dockerfile" <<EOF
FROM $debian
ARG DEBIAN_FRONTEND=noninteractive
# No packaged "main" cluster: the entrypoint makes one in PGDATA, as the official image does.
RUN mkdir -p /etc/postgresql-common/createcluster.d \\
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main.conf \\
    && apt-get update && apt-get upgrade -y \\
    && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:\$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
COPY docker-entrypoint.sh /usr/local/bin/
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
EOF
  cat >"$work/postgres/docker-entrypoint.sh" <<'EOF'
#!/bin/bash
# Like the official image: initialise an empty PGDATA from POSTGRES_* once, create the
# database before TCP opens (remote clients are refused until then), then exec postgres.
set -euo pipefail
case "${1:-}" in
  postgres) shift ;;   # `postgres -c x=y` and `-c x=y` both mean server options
  -* | "") ;;
  *) exec "$@" ;;      # any other command, e.g. bash
esac
as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups)
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password=()
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/pwfile
    chown postgres /tmp/pwfile
    password=(--pwfile=/tmp/pwfile)
  elif [ "$auth" != trust ]; then
    echo "error: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi
  "${as_postgres[@]}" initdb -D "$PGDATA" --username="$user" "${password[@]}" \
    --auth-local=trust --auth-host="$auth" >/dev/null
  rm -f /tmp/pwfile
  printf 'host all all 0.0.0.0/0 %s\nhost all all ::/0 %s\n' "$auth" "$auth" >>"$PGDATA/pg_hba.conf"
  # A temporary server on the unix socket only: no TCP until the database exists.
  "${as_postgres[@]}" pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -l /tmp/init.log -w start >/dev/null \
    || { cat /tmp/init.log >&2; exit 1; }
  if [ "$db" != postgres ]; then
    "${as_postgres[@]}" createdb -U "$user" -- "$db"
  fi
  "${as_postgres[@]}" pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "PostgreSQL init process complete; ready for start up."
fi
exec "${as_postgres[@]}" postgres -c listen_addresses='*' "$@"
EOF
  chmod +x "$work/postgres/docker-entrypoint.sh"
  say "$postgres: building, Debian's PostgreSQL 15 (about 15 s)"
  build "$postgres" "$work/postgres"
fi
