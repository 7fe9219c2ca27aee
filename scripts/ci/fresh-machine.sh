#!/usr/bin/env bash
# The README's two commands on a bare Debian 12 machine: a fresh container made from the
# project's own Debian base (local/debian:bookworm, debootstrap's minbase: no Python, no
# Docker, no PostgreSQL, no npm), this checkout copied in, then inside it
#
#   scripts/demo.sh                      in full, and again with DEMO_MODE=local
#   scripts/test.sh <FRESH_TESTS>        the tests that need what test.sh installs: Docker and
#                                        testcontainers, the compose client, PostgreSQL's
#                                        server binaries, PgBouncer, iptables, npm
#
# Each command sets up what it needs itself; nothing from this machine is used but its
# Docker engine (which runs a nested one) and its CA bundle, which the container trusts for
# TLS to the package registries (an intercepting proxy may sit in between; a harness
# matter, never in the project's images). It takes about 10 minutes on 2 CPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."
debian=${MIGRATOR_BASE_DEBIAN_IMAGE:-local/debian:bookworm}
tests=${FRESH_TESTS:-tests/test_image.py::test_compose_up_migrates_a_fresh_database \
tests/test_server_states.py tests/test_production_conditions.py tests/test_bench.py}

scripts/build-base-images.sh >/dev/null
name=migrator-fresh-$RANDOM$RANDOM
# What Docker needs to run nested without --privileged (refused here): every capability
# but SYS_RESOURCE, no seccomp/AppArmor filter, all devices, its own cgroup namespace, and
# a tmpfs for its storage (overlayfs cannot sit on the outer overlayfs).
docker run -d --name "$name" --cap-add ALL --cap-drop SYS_RESOURCE \
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
  --device-cgroup-rule 'a *:* rwm' --cgroupns private --tmpfs /var/lib/docker \
  -e CI=true "$debian" sleep infinity >/dev/null
trap 'docker rm -f "$name" >/dev/null' EXIT

# The checkout as a clone would have it: tracked files and new ones, nothing ignored.
git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - -c --ignore-failed-read | docker exec -i "$name" sh -c 'mkdir /src && tar -C /src -x'
docker exec "$name" mkdir -p /usr/local/share/ca-certificates
docker cp /etc/ssl/certs/ca-certificates.crt "$name:/usr/local/share/ca-certificates/harness.crt"
docker exec "$name" sh -c '
  mkdir -p /etc/ssl/certs && cp /usr/local/share/ca-certificates/harness.crt /etc/ssl/certs/ca-certificates.crt
  # cgroup v1 hierarchies come read-only; dockerd needs them writable.
  for d in $(mount -t cgroup | cut -d" " -f3); do
    mount -o remount,rw "$d" 2>/dev/null && continue
    o=$(basename "$d"); [ "$o" = systemd ] && o=none,name=systemd
    umount "$d" && mount -t cgroup -o "$o" cgroup "$d"
  done'
ca=/usr/local/share/ca-certificates/harness.crt
inside() {
  docker exec -w /src -e PIP_CERT=$ca -e NODE_EXTRA_CA_CERTS=$ca -e SSL_CERT_FILE=$ca \
    -e REQUESTS_CA_BUNDLE=$ca "$name" "$@"
}

started=$SECONDS
echo "== fresh machine: scripts/demo.sh (about 1.5 min: Docker, base images, the images)"
inside scripts/demo.sh
echo "== fresh machine: DEMO_MODE=local scripts/demo.sh (about 40 s: .venv, PostgreSQL)"
inside env DEMO_MODE=local scripts/demo.sh
echo "== fresh machine: scripts/test.sh (about 6 min: packages, then the tests)" $tests
# shellcheck disable=SC2086  # one test id per word
inside scripts/test.sh -p no:cacheprovider $tests
echo "fresh machine: the README's commands passed in $((SECONDS - started)) s"
