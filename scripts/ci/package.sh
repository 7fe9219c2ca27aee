#!/usr/bin/env bash
# The Python package as PyPI users get it, proven in fresh virtual environments:
#
#   lowest   the wheel with the binary driver, every runtime dependency at the lowest version
#            pyproject.toml allows (its `>=` bounds turned into `==`), then core tests
#   beside   an application's own psycopg2, built from source, then the wheel without the
#            driver extra: no psycopg2-binary beside it (both install the module `psycopg2`),
#            `pip check` clean, and the same core tests on the application's driver
#   psycopg  the wheel with the psycopg extra alone (psycopg 3, the newest SQLAlchemy): no
#            psycopg2 at all, and the same core tests on postgresql:// and DB_*
#   bare     the wheel without any driver: --version, --help, upgrade --sql and manifest on
#            `alembic init`'s project work; a command that connects is one line, exit 2,
#            naming the extra to install
#
# Core tests: PACKAGE_TESTS (default: upgrade, downgrade, plan, current, offline SQL, plain
# Alembic beside it, the JSON summary; against a real PostgreSQL). About two minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
core=tests/test_commands.py
tests=${PACKAGE_TESTS:-$core::test_upgrade_head_migrates_a_fresh_database \
$core::test_downgrade_reverses_every_revision $core::test_plan_lists_what_would_run_and_changes_nothing \
$core::test_current_reports_revision_and_head $core::test_offline_sql_needs_no_database \
$core::test_the_tutorial_workflow_works_with_plain_alembic $core::test_the_summary_file_says_what_ran_as_json}

scripts/setup.sh
scripts/start-docker.sh
# psycopg2 from source needs libpq's headers, pg_config and a compiler.
missing=()
command -v pg_config >/dev/null || missing+=(libpq-dev)
command -v gcc >/dev/null || missing+=(gcc)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "package: installing ${missing[*]}" >&2
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
images=$(scripts/pick-base-images.sh) || { echo "package: no base images (the cause is above)" >&2; exit 1; }
eval "$images"
export TESTCONTAINERS_RYUK_DISABLED=true

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
.venv/bin/python -m pip wheel -q --no-deps --wheel-dir "$work/dist" .
wheel=$(ls "$work"/dist/migrator_job-*.whl)
echo "package: built $(basename "$wheel")"

# The lowest versions pyproject.toml allows, from its own bounds (the driver's from its extra).
.venv/bin/python - "$work/lowest.txt" <<'PY'
import re
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["binary"]
pins = []
for requirement in wanted:
    name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
    pins.append(f"{name}=={version}")
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
PY
echo "package: lowest allowed: $(tr '\n' ' ' < "$work/lowest.txt")"

# pytest and testcontainers drive the tests; neither pulls a runtime dependency in.
test_tools=(pytest "testcontainers>=4.15")

echo "== package: lowest versions"
export MIGRATOR_TEST_DRIVERS=psycopg2  # SQLAlchemy 2.0 runs postgresql:// on psycopg2
python3 -m venv "$work/lowest"
"$work/lowest/bin/pip" install -q --disable-pip-version-check -c "$work/lowest.txt" \
  "${wheel}[binary]" "${test_tools[@]}"
"$work/lowest/bin/pip" check
"$work/lowest/bin/python" - "$work/lowest.txt" <<'PY'
import importlib.metadata
import sys

from packaging.version import Version

for line in open(sys.argv[1]).read().split():
    name, version = line.split("==")
    installed = importlib.metadata.version(name)
    assert Version(installed) == Version(version), f"{name}: {installed}, not {version}"
print("package: installed exactly the lowest versions")
PY
# shellcheck disable=SC2086  # one test id per word
(cd "$work" && "$work/lowest/bin/python" -m pytest -q -p no:cacheprovider \
  --rootdir "$OLDPWD" -c "$OLDPWD/pyproject.toml" $(printf "$OLDPWD/%s " $tests))

echo "== package: beside an application's psycopg2 (built from source)"
export MIGRATOR_TEST_DRIVERS=psycopg2  # SQLAlchemy 2.1 runs postgresql:// on psycopg 3: the URL names psycopg2
python3 -m venv "$work/beside"
"$work/beside/bin/pip" install -q --disable-pip-version-check --no-binary psycopg2 \
  "psycopg2>=2.9.5"
"$work/beside/bin/pip" install -q --disable-pip-version-check "$wheel" "${test_tools[@]}"
"$work/beside/bin/pip" check
if "$work/beside/bin/pip" show psycopg2-binary >/dev/null 2>&1; then
  echo "package: psycopg2-binary was installed beside the application's psycopg2" >&2
  exit 1
fi
"$work/beside/bin/python" -c 'import psycopg2; print("package: the driver is", psycopg2.__file__)'
# shellcheck disable=SC2086
(cd "$work" && "$work/beside/bin/python" -m pytest -q -p no:cacheprovider \
  --rootdir "$OLDPWD" -c "$OLDPWD/pyproject.toml" $(printf "$OLDPWD/%s " $tests))
echo "== package: psycopg 3 alone"
python3 -m venv "$work/only-psycopg"
"$work/only-psycopg/bin/pip" install -q --disable-pip-version-check "${wheel}[psycopg]" "${test_tools[@]}"
"$work/only-psycopg/bin/pip" check
if "$work/only-psycopg/bin/python" -c 'import psycopg2' 2>/dev/null; then
  echo "package: psycopg2 is installed beside the psycopg extra" >&2
  exit 1
fi
# shellcheck disable=SC2086
(cd "$work" && MIGRATOR_TEST_DRIVERS=psycopg "$work/only-psycopg/bin/python" -m pytest -q \
  -p no:cacheprovider --rootdir "$OLDPWD" -c "$OLDPWD/pyproject.toml" $(printf "$OLDPWD/%s " $tests))

echo "== package: without a driver"
python3 -m venv "$work/bare"
"$work/bare/bin/pip" install -q --disable-pip-version-check "$wheel"
(
  cd "$work" && export PATH="$work/bare/bin:$PATH"
  fail() { echo "package: without a driver: $*" >&2; exit 1; }
  python -c 'import psycopg' 2>/dev/null && fail "psycopg is installed"
  python -c 'import psycopg2' 2>/dev/null && fail "psycopg2 is installed"
  migrator --version >out && grep -q '^migrator ' out || fail "--version"
  migrator --help >out && grep -q 'upgrade' out || fail "--help"
  mkdir project && (cd project && alembic init alembic >/dev/null && alembic revision -m first >/dev/null)
  export MIGRATOR_CONFIG="$work/project/alembic.ini"
  migrator upgrade head --sql >sql 2>/dev/null || fail "upgrade --sql failed"
  grep -q 'CREATE TABLE alembic_version' sql || fail "upgrade --sql printed no SQL"
  migrator manifest 2>/dev/null && [ -f project/migrator-manifest.json ] || fail "manifest"
  status=0
  DB_HOST=127.0.0.1 DB_NAME=app DB_USER=app migrator upgrade head 2>errors || status=$?
  [ "$status" = 2 ] || fail "a connecting command exited $status, not 2"
  [ "$(grep -c ERROR errors)" = 1 ] && grep -q "pip install 'migrator-job\[psycopg\]'" errors \
    || fail "the error does not name the extra: $(cat errors)"
  grep -q Traceback errors && fail "a traceback"
  echo "package: without a driver: --version, --help, upgrade --sql, manifest; upgrade exits 2"
)
echo "package: lowest versions, beside psycopg2, psycopg 3 alone and without a driver passed in $((SECONDS - started)) s"
