#!/usr/bin/env bash
# Proves the image's migrations round-trip: `docker run` upgrade head, downgrade base (as a
# Job would: environment only), upgrade head again; the schema after must equal the schema
# before. The database comes from DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD (in CI a
# `services: postgres` container); the image from MIGRATOR_IMAGE: the example application's
# (`docker build --target example`; default migrator-example:ci).
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${MIGRATOR_IMAGE:-migrator-example:ci}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

migrator() {
  docker run --rm --network host -e DB_HOST -e DB_PORT -e DB_NAME -e DB_USER -e DB_PASSWORD \
    "$@"
}
dump() { .venv/bin/python scripts/ci/schema_dump.py > "$work/$1"; }

echo "== upgrade head"
migrator "$image" upgrade head
dump first
echo "== downgrade base"
migrator -e MIGRATOR_COMMAND=downgrade -e MIGRATOR_TARGET=base -e MIGRATOR_ALLOW_DOWNGRADE=true \
  --entrypoint migrator "$image"
dump base
if [ -s "$work/base" ]; then
  echo "roundtrip: objects left at base:" >&2
  cat "$work/base" >&2
  exit 1
fi
echo "== upgrade head again"
migrator "$image" upgrade head
dump second
if ! diff -u "$work/first" "$work/second"; then
  echo "roundtrip: the schema after downgrade base and upgrade head differs (above)" >&2
  exit 1
fi
echo "roundtrip: $(wc -l < "$work/first") schema objects identical after upgrade, downgrade base, upgrade"
