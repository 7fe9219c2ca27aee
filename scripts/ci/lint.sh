#!/usr/bin/env bash
# Every linter CI runs: Python (ruff, mypy --strict, import-linter's module layers),
# Dockerfiles (hadolint), GitHub Actions and Dependabot (actionlint, zizmor, the GitHub JSON
# schemas), and the Helm chart (Helm's lint).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=.venv/bin

# One command per line: under `set -e`, a failure inside `a && b` does not stop the script.
echo "== ruff"
$bin/ruff check .
$bin/ruff format --check migrator bench
echo "== mypy --strict"
$bin/mypy --strict migrator
echo "== import-linter (the modules' layers: pyproject.toml)"
$bin/lint-imports
echo "== hadolint"
$bin/hadolint Dockerfile action.Dockerfile
echo "== actionlint"
$bin/actionlint .github/workflows/*.yml
echo "== zizmor"
$bin/zizmor --offline --min-severity low .github/workflows action.yml .github/dependabot.yml
echo "== GitHub schemas"
$bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
$bin/check-jsonschema --builtin-schema vendor.github-actions action.yml
$bin/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
echo "== helm lint"
$bin/python - <<'PY'
import sys

import helm_python

values = {"database": {"host": "db", "name": "app", "user": "app", "password": "lint"}}
report = helm_python.lint("helm/migrator", values, strict=True)
problems = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] >= 2]
print("\n".join(problems) or "helm/migrator: no problems")
sys.exit(1 if problems else 0)
PY
