#!/usr/bin/env bash
# Proves a project's expand/contract phases (revisions labelled `pre` and `post`) in the order
# a deploy runs them, against a real database: `migrator upgrade --phase pre`, then the
# deploy (DEPLOY_COMMAND: a shell command standing for the rollout, e.g. the new release's
# smoke tests against the expanded schema; empty for none), then `migrator upgrade --phase
# post`. After pre, the pre phase has nothing left and what is still pending is exactly the
# post phase's plan; after post, nothing is pending. A failed deploy stops the script before
# post: the contraction never runs under a release that did not roll out.
#
# Runs in the project's checkout with `migrator` on PATH; the database and the project come
# from the migrator's own variables (DATABASE_URL or DB_*, MIGRATOR_CONFIG). The reusable
# workflow .github/workflows/roundtrip.yml runs it with `phases: true`.
set -euo pipefail
deploy=${DEPLOY_COMMAND:-}

fail() {
  echo "phases: $*" >&2
  exit 1
}
# The revisions an upgrade would still run (in PHASE, when one is given), one line of ids in
# the plan's order. A phase with no revision at all (post, in a project without the label)
# plans nothing and prints nothing.
pending() {
  migrator plan upgrade heads ${1:+--phase "$1"} --json | python3 -c '
import json, sys
text = sys.stdin.read().strip()
print(" ".join(r["revision"] for r in json.loads(text)["revisions"]) if text else "")'
}

echo "== pre: migrator upgrade --phase pre"
migrator upgrade --phase pre
left=$(pending pre)
[ -z "$left" ] || fail "the pre phase left pre revisions pending: $left"
post=$(pending post)
rest=$(pending "")
[ "$rest" = "$post" ] || fail "after pre, pending: ${rest:-nothing}; the post phase plans: ${post:-nothing}"
echo "phases: pre reached its heads; the post phase will run: ${post:-nothing}"

echo "== deploy"
if [ -n "$deploy" ]; then
  status=0
  bash -c "$deploy" || status=$?
  [ "$status" -eq 0 ] || fail "the deploy command failed (exit $status); the post phase did not run"
else
  echo "phases: no deploy command given: post follows pre at once"
fi

echo "== post: migrator upgrade --phase post"
migrator upgrade --phase post
left=$(pending "")
[ -z "$left" ] || fail "after post, still pending: $left"
echo "phases: pre, deploy, post done; the database is at its heads"
