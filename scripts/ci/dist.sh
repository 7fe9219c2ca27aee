#!/usr/bin/env bash
# The distributions PyPI gets: `python -m build` (the sdist, and the wheel from it) into
# OUTDIR, `twine check --strict` on both, and both named with VERSION. The release workflow's
# PyPI job and scripts/ci/release-dry-run.sh run this same script.
#
#   scripts/ci/dist.sh 0.1.0 dist/        (PYTHON: the interpreter with build and twine)
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${1:?usage: dist.sh VERSION OUTDIR}
outdir=${2:?usage: dist.sh VERSION OUTDIR}
python=${PYTHON:-python3}

rm -rf "$outdir"
# The sdist first, then the wheel built from it (build's default): the wheel is what the
# sdist can make, and no stale build/ directory reaches it.
"$python" -m build --outdir "$outdir" . >"$outdir.log" 2>&1 \
  || { cat "$outdir.log" >&2; exit 1; }
rm -f "$outdir.log"
"$python" -m twine check --strict "$outdir"/*
for file in "migrator_job-$version.tar.gz" "migrator_job-$version-py3-none-any.whl"; do
  [ -f "$outdir/$file" ] || { echo "dist: $file was not built (found: $(ls "$outdir"))" >&2; exit 1; }
  echo "dist: $file $(wc -c <"$outdir/$file") bytes"
done
