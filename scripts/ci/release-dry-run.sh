#!/usr/bin/env bash
# The release without GitHub: every step of .github/workflows/release.yml that needs no
# token or registry, on this checkout, in the workflow's order. Nothing is pushed or
# published; the images get tags of their own.
#
#   scripts/ci/release-dry-run.sh v0.1.0
#
#   version  the tag against migrator/__init__.py's __version__ (scripts/ci/tag_version.py)
#   dist     sdist and wheel, twine check (scripts/ci/dist.sh)
#   notes    the CHANGELOG.md section the GitHub release is created with
#            (scripts/ci/changelog_section.py)
#   image    the released image (the root Dockerfile, VERSION as the release passes it) and
#            the GitHub action's (action.Dockerfile), each run once
#
# PYTHON (default .venv/bin/python), PYTHON_IMAGE (the images' base, default the
# Dockerfile's), RELEASE_IMAGE (default migrator-release-test: tags RELEASE_IMAGE:VERSION and
# RELEASE_IMAGE:action-VERSION).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:?usage: release-dry-run.sh TAG (e.g. v0.1.0)}
export PYTHON=${PYTHON:-.venv/bin/python}
image=${RELEASE_IMAGE:-migrator-release-test}
base=()
[ -z "${PYTHON_IMAGE:-}" ] || base=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== version"
version=$("$PYTHON" scripts/ci/tag_version.py "$tag")
echo "version: tag $tag is migrator $version"

echo "== dist"
scripts/ci/dist.sh "$version" "$work/dist"

echo "== notes"
"$PYTHON" scripts/ci/changelog_section.py "$version" >"$work/notes.md"
echo "notes: CHANGELOG.md [$version], $(wc -l <"$work/notes.md") lines"

echo "== image"
docker build -q "${base[@]}" --build-arg "VERSION=$version" -t "$image:$version" . >/dev/null
labelled=$(docker image inspect -f '{{ index .Config.Labels "org.opencontainers.image.version" }}' \
  "$image:$version")
says=$(docker run --rm "$image:$version" --version | head -n 1)
[ "$labelled" = "$version" ] && [[ "$says" == *" $version"* ]] \
  || { echo "image: labelled '$labelled', says '$says', not $version" >&2; exit 1; }
echo "image: $image:$version labelled $labelled; --version says: $says"
docker build -q "${base[@]}" -f action.Dockerfile -t "$image:action-$version" . >/dev/null
# The action's entrypoint with no input at all: a usage error it reports itself (exit 2).
status=0
docker run --rm "$image:action-$version" >"$work/action.log" 2>&1 || status=$?
[ "$status" = 2 ] || { cat "$work/action.log" >&2; echo "action: exit $status, not 2" >&2; exit 1; }
echo "action: $image:action-$version built from this checkout; without inputs it exits 2"

echo "release dry run: $tag ok (nothing pushed or published)"
