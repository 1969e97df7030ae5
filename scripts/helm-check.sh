#!/usr/bin/env bash
# Lints and renders the Helm chart with the default and the full values file.
# helm is built from the Go module proxy (helm.sh/helm/v3) into target/tools when not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=v3.22.0
helm_bin="$(command -v helm || true)"
if [ -z "$helm_bin" ]; then
  helm_bin="$PWD/target/tools/helm"
  if [ ! -x "$helm_bin" ]; then
    command -v go >/dev/null || { echo "helm-check: neither helm nor go found: install Go (helm is built from the Go module proxy)" >&2; exit 1; }
    echo "== building helm $HELM_VERSION with go install (first run only, a few minutes)"
    mkdir -p target/tools
    GOBIN="$PWD/target/tools" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
fi
chart=helm/fleetgate
echo "== helm lint (default values + token)"
"$helm_bin" lint "$chart" --set admin.token=ci-token
echo "== helm lint (full values)"
"$helm_bin" lint "$chart" -f "$chart/ci/full-values.yaml"
out="$(mktemp -d)"
"$helm_bin" template ci "$chart" --set admin.token=ci-token >"$out/default.yaml"
"$helm_bin" template ci "$chart" -f "$chart/ci/full-values.yaml" >"$out/full.yaml"
grep -q '^kind: Deployment' "$out/default.yaml" || { echo "helm-check: default values must render a Deployment" >&2; exit 1; }
grep -q '^kind: StatefulSet' "$out/full.yaml" || { echo "helm-check: persistence must render a StatefulSet" >&2; exit 1; }
grep -q '^kind: ServiceMonitor' "$out/full.yaml" || { echo "helm-check: serviceMonitor.enabled must render a ServiceMonitor" >&2; exit 1; }
grep -q 'name: proxy-mtls' "$out/full.yaml" && grep -q '"trusted_proxies"' "$out/full.yaml" || { echo "helm-check: proxyMtls.enabled must render the listener, its port and its config" >&2; exit 1; }
if "$helm_bin" template ci "$chart" --set admin.token=ci-token --set proxyMtls.enabled=true >/dev/null 2>&1; then
  echo "helm-check: proxyMtls without trustedProxies must fail" >&2; exit 1
fi
if "$helm_bin" template ci "$chart" >/dev/null 2>&1; then
  echo "helm-check: rendering without an admin token must fail" >&2; exit 1
fi
echo "helm-check: ok ($(grep -c '^kind:' "$out/default.yaml") objects default, $(grep -c '^kind:' "$out/full.yaml") with full values)"
