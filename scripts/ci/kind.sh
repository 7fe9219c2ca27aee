#!/usr/bin/env bash
# The chart installed for real, in a kind cluster (GitHub Actions creates the cluster; this
# machine-independent part is here). Loads the image, starts PostgreSQL from
# ci/kind/postgres.yaml, installs the chart with an existing Secret and waits for the hook
# Job; prints its logs and termination message; then upgrades the release, whose hook
# Job runs again and finds nothing to do.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${MIGRATOR_IMAGE:-migrator-example:ci}
cluster=${KIND_CLUSTER_NAME:-chart-testing}
password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
echo "::add-mask::$password"

kind load docker-image "$image" --name "$cluster"
kubectl create secret generic shop-db --from-literal=password="$password"
kubectl apply -f ci/kind/postgres.yaml
kubectl rollout status deployment/postgres --timeout=180s

install() {
  helm "$1" shop helm/migrator --wait --timeout 5m \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
    --set image.pullPolicy=Never --set migrator.logFormat=text \
    --set database.host=postgres --set database.name=shop --set database.user=shop \
    --set database.existingSecret.name=shop-db
}
report() {
  kubectl logs job/shop-migrator
  kubectl get pods -l job-name=shop-migrator \
    -o jsonpath='{range .items[*]}{.status.containerStatuses[0].state.terminated.message}{end}'
}
trap 'report || true' ERR

install install
report | tee "${RUNNER_TEMP:-/tmp}/install.log"
grep -q "applied=4" "${RUNNER_TEMP:-/tmp}/install.log"
install upgrade
report | tee "${RUNNER_TEMP:-/tmp}/upgrade.log"
grep -q "nothing to do" "${RUNNER_TEMP:-/tmp}/upgrade.log"
echo "kind: installed (4 revisions applied), upgraded (nothing to do)"
