#!/usr/bin/env bash
# Makes sure a Docker engine answers on a bare Debian 12 machine: installs Debian's docker.io
# when dockerd is missing and starts dockerd when it is not running (as root).
# Does nothing when `docker info` already works.
set -euo pipefail

docker info >/dev/null 2>&1 && exit 0
if ! command -v dockerd >/dev/null; then
  echo "start-docker: installing docker.io (about 30 s)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
echo "start-docker: starting dockerd (a few seconds)" >&2
setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "start-docker: dockerd did not answer within 60 s; the end of /var/log/dockerd.log:" >&2
tail -n 20 /var/log/dockerd.log >&2
exit 1
